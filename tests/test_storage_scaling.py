"""The storage-scaling benchmark (benchmarks/storage_scaling.py) runs end to end in its smoke
mode on the PostgreSQL server on 127.0.0.1:5432 (trust auth, user postgres); it creates and
drops its own databases. Skips with the reason where no PostgreSQL answers, but never under
CI=true."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, postgres_admin


@pytest.mark.postgres
@pytest.mark.slow
def test_tiny_run_measures_every_worker_count(tmp_path):
    postgres_admin().close()  # (skips, or fails under CI=true, where no PostgreSQL answers)
    out = tmp_path / "scaling.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "storage_scaling.py"), "--tiny", "--out", str(out)],
        env=cli_env(), capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    counts = result["settings"]["argv"]["workers"]
    assert counts == [2]  # --tiny: one count, 2 workers
    assert [r["workers"] for r in result["rows"]] == counts  # a row per worker count
    for row in result["rows"]:
        assert row["trials_per_min"] > 0
        assert 0 < row["storage_s_median"] <= row["storage_s_p95"]
        assert row["postgres_cpu_s_per_trial"] > 0
        assert row["errors"] == 0, row["error_lines"]
    assert result["study_size"][0]["sampler_s_median"] is not None
    assert "| variant | workers | trials/min |" in done.stdout

"""`make bench` in its tiny mode, so that the benchmark cannot rot (its figures are not
asserted: speed targets live in the benchmark's own output, never in timed tests)."""

from __future__ import annotations

import json

import pytest
import torch

from charlstm.config import load_config
from charlstm.device import bfloat16_runs
from charlstm.schedule import auto_lr
from tests.conftest import run_make


@pytest.mark.slow
def test_make_bench_tiny_writes_every_section(tmp_path):
    out, live = tmp_path / "bench.json", tmp_path / "live.json"
    done = run_make("bench", BENCH_ARGS=f"--tiny --out {out}", LIVE_ARGS=f"--tiny --out {live}")
    check_live_view(json.loads(live.read_text()), done.stdout)
    result = json.loads(out.read_text())
    assert set(result) >= {"machine", "gemm_peak_flops", "training", "validation", "generation",
                           "corpus_default", "sweep", "quality"}
    assert len(result["training"]) == 2
    bf16 = bfloat16_runs(torch.device("cpu"))  # measured where torch's LSTM runs in it, else None
    for row in result["training"].values():
        for key in ("plain_float32_chars_per_sec", "off_chars_per_sec", "on_chars_per_sec"):
            assert row[key] > 0
        assert (row["plain_bfloat16_chars_per_sec"] > 0) if bf16 else (row["plain_bfloat16_chars_per_sec"] is None)
        assert row["tracked_gemm_fraction"] > 0 and row["trainer_vs_plain"] > 0
        assert 0 <= row["tracking_share_of_steps"] < 1 and 0 < row["tracking_share_end_to_end"] < 1
    assert result["generation"]["one_stream_chars_per_sec"] > 0
    sweeps = [v for v in result["sweep"].values() if isinstance(v, dict)]
    assert len(sweeps) == 2 and all(s["trials"] == 2 for s in sweeps)
    assert set(result["gemm_peak_flops"]) == {"float32", "bfloat16"}
    assert "trials/hour" in done.stdout and "GEMM peak" in done.stdout
    quality = result["quality"]  # the defaults and the one-hour study's best, each at two budgets
    for name in ("defaults", "best"):
        row = quality[name]
        assert row["chars_per_sec"] > 0 and all(0 < row[f"val_after_{b:g}s"] < 5 for b in quality["budgets"])
        # (the evaluation that hits it can come after the step that crossed its run's budget)
        assert row["time_to_target"] is None or 0 < row["time_to_target"] <= row["time_to_target_run_compute"]
    assert "quality per time on tinyshakespeare" in done.stdout


def test_lr_budget_tiny_finds_a_best_lr_and_runs_the_default(corpus, tmp_path):
    """benchmarks/lr_budget.py in its smoke mode: a grid of two lrs plus the auto lr's run."""
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    out = tmp_path / "lr.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lr_budget.py"), "--tiny",
                           "--set", f"data.corpus={corpus}", "--set", "train.eval_every_chars=2000",
                           "--out", str(out)], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert len(runs) == 3 and sum(r["default"] for r in runs) == 1
    assert sorted(r["lr"] for r in runs if not r["default"]) == [2e-3, 8e-3]
    (row,) = result["summary"]
    # the default run is train.lr: auto, resolved for the 1-s budget it had
    assert row["default_lr"] == pytest.approx(auto_lr(load_config(None, {"train.max_seconds": 1.0}).train))
    assert "best lr per budget" in done.stdout



def check_live_view(result: dict, stdout: str) -> None:
    """benchmarks/live_view.py's smoke mode: the same trials swept with the view on a
    pseudo-terminal and with --quiet, and the ratios of the two."""
    (view,), (quiet,) = result["raw"]["view"], result["raw"]["quiet"]
    assert view["trials"] == quiet["trials"] == 2  # the same trials on both sides
    assert result["trials_per_hour_view_vs_quiet"] == pytest.approx(view["trials_per_hour"] / quiet["trials_per_hour"])
    assert view["sweep_process_cpu_s"] > 0 and quiet["sweep_process_cpu_s"] > 0
    assert "live view / --quiet: trials/hour" in stdout


def test_travel_tiny_times_a_send_and_prices_it_per_trial(tmp_path):
    """benchmarks/travel.py in its smoke mode: the seed size's checkpoint sent twice to a local
    store, priced for each trial length (a trial shorter than travel_seconds sends none)."""
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    out = tmp_path / "travel.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "travel.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=cli_env(), timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["bytes"] > 0 and row["seconds_per_send"] > 0 and row["sends"] == 2
    every = json.loads(out.read_text())["travel_seconds"]
    for name, cost in row["per_trial"].items():
        assert cost["sends"] == int(float(name.removesuffix("s")) // every)
        assert cost["seconds"] == pytest.approx(cost["sends"] * row["seconds_per_send"])
    assert "ms a send" in done.stdout

"""charlstm report: the study report (HTML + Markdown), with every trial state present."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from charlstm.cli import main
from tests.conftest import study_with_every_state

IMG = re.compile(r"<img src='([^']*)'")


def test_report_shows_every_state_and_stands_alone(corpus, tmp_path, capsys):
    study, uri = study_with_every_state(corpus, tmp_path)
    assert main(["report", "tiny", "--length", "30", "--prime", "ROMEO:", "--prime", "\u00e9"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "analysis" / "reports" / "tiny"
    assert (folder / "report.html").as_uri() in out and study.user_attrs["mlflow_parent_run_id"] in out
    page = (folder / "report.html").read_text()

    # self-contained: no script, no stylesheet or image from anywhere else
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", page)
    images = IMG.findall(page)
    # 5 charlstm plots + 5 Optuna views; two complete trials are no ground for a scaling fit
    assert len(images) == 10
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"

    # the leaderboard names every state; the summary counts them
    board = page.split("<h2>Leaderboard</h2>")[1].split("</table>")[0]
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        assert f"<tr class='{state}'>" in board
    assert "2 complete, 1 pruned, 1 running, 1 fail" in page
    assert "Seed baseline against the best trial" in page
    assert "Scaling: no fit of val bits/char against parameters is shown: 2 complete trial(s)" in page
    # samples from the two complete trials, side by side, for each prime and temperature
    samples = page.split("Samples from the top trials")[1]
    assert "<th>trial 0</th>" in samples and "<th>trial 3</th>" in samples
    assert samples.count("<pre>ROMEO:") == 4
    assert "outside the model&#x27;s vocab" in samples  # the prime "é" is not in this corpus

    md = (folder / "report.md").read_text()
    linked = re.findall(r"!\[[^]]*\]\((plots/[^)]+)\)", md)
    assert len(linked) == 10 and all((folder / p).is_file() for p in linked)
    assert "| 4 | RUNNING |" in md

    client = MlflowClient(uri)
    logged = {f.path for f in client.list_artifacts(study.user_attrs["mlflow_parent_run_id"], "report")}
    assert {"report/report.html", "report/report.md", "report/plots"} <= logged


def test_report_without_samples_and_from_a_study_file(corpus, tmp_path, capsys):
    study_with_every_state(corpus, tmp_path)
    assert main(["report", str(tmp_path / "study.yaml"), "--no-samples", "--no-log", "--out", "r"]) == 0
    page = (tmp_path / "r" / "tiny" / "report.html").read_text()
    assert "Samples from the top trials" not in page and "also on MLflow" not in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["report", "nope"], "no study 'nope'"),
    (["report", "missing.yaml"], "missing.yaml"),
])
def test_report_bad_input_is_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("charlstm: error:")
    assert not Path("analysis").exists()  # nothing written for a study that is not there


def test_report_of_a_study_that_has_not_run_a_trial_yet(corpus, tmp_path):
    import yaml

    from charlstm.sweep.spec import load_sweep
    from charlstm.sweep.study import setup_study
    from tests.conftest import tiny_study_dict

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tiny_study_dict(corpus)))
    setup_study(load_sweep(tmp_path / "s.yaml"), None, None, 0, None)  # trial 0 waits in the queue
    assert main(["report", "tiny", "--no-log"]) == 0
    page = (tmp_path / "analysis" / "reports" / "tiny" / "report.html").read_text()
    assert "No trial has completed yet." in page and "<tr class='WAITING'>" in page
    assert "not drawn: no trial has been evaluated yet" in page and "<img" not in page

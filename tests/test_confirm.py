"""charlstm confirm: the top trials and the seed baseline re-trained over fresh seeds as child
runs of the study's parent, a confirm.csv whose numbers a recomputation matches, verdicts in
words, and a confirmation that resumes without re-running what finished."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from scipy import stats

from charlstm.cli import main
from tests.conftest import cli_env, tiny_study_dict


def four_trial_study(corpus, tmp_path, **extra):
    from charlstm.analysis import load_study

    d = tiny_study_dict(corpus, n_trials=4, **extra)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    assert main(["sweep", str(path)]) == 0
    return load_study("tiny")


def expected_configs(study, top: int) -> list[int]:
    done = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    base = [t.number for t in done[top:] if t.user_attrs.get("baseline")]
    return [t.number for t in done[:top]] + base


def test_confirm_writes_child_runs_and_a_table_that_recomputes(corpus, tmp_path, capsys):
    from charlstm.analysis import load_study

    study = four_trial_study(corpus, tmp_path)
    configs = expected_configs(study, 2)
    capsys.readouterr()
    assert main(["confirm", "tiny", "--top", "2", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "confirmed over seeds 1000, 1001, 1002 - Welch's t-test" in out

    client = MlflowClient()
    parent = study.user_attrs["mlflow_parent_run_id"]
    exp = client.get_experiment_by_name("charlstm").experiment_id
    runs = client.search_runs([exp], filter_string="tags.`charlstm.study` = 'tiny.confirm'")
    assert len(runs) == 3 * len(configs)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    pairs = {(int(r.data.tags["charlstm.confirms"]), int(r.data.tags["charlstm.seed"])) for r in runs}
    assert pairs == {(n, s) for n in configs for s in (1000, 1001, 1002)}
    assert all(r.info.status == "FINISHED" and r.data.params["train.seed"] == r.data.tags["charlstm.seed"]
               for r in runs)

    # confirm.csv on the parent run, recomputed from the companion study's values
    table = pd.read_csv(client.download_artifacts(parent, "confirm.csv", str(tmp_path)))
    companion = load_study("tiny.confirm")
    for row in table.itertuples():
        v = np.array([t.value for t in companion.trials if t.user_attrs["confirms"] == row.trial])
        assert len(v) == 3 and row.mean == pytest.approx(v.mean(), rel=1e-9)
        assert row.std == pytest.approx(v.std(ddof=1), rel=1e-9)
        assert row.ci95 == pytest.approx(stats.t.ppf(0.975, 2) * v.std(ddof=1) / math.sqrt(3), rel=1e-9)
        assert row.original == pytest.approx(study.trials[row.trial].value)
    assert list(table["mean"]) == sorted(table["mean"])

    summary = load_study("tiny").user_attrs["confirm"]
    assert summary["seeds"] == [1000, 1001, 1002] and summary["complete"]
    assert any(v.startswith(f"trial {table.iloc[0].trial} ") for v in summary["verdicts"])
    metrics = client.get_run(parent).data.metrics
    assert metrics[f"confirm.trial_{table.iloc[0].trial}.mean"] == pytest.approx(table.iloc[0]["mean"])
    version = client.get_model_version_by_alias("charlstm-tiny", "best")
    assert version.tags["trial"] == str(table.iloc[0].trial)  # the confirmed winner holds @best
    if table.iloc[0].trial != study.best_trial.number:
        assert version.tags["why"].startswith("confirmed over 3 seeds")

    # run again: nothing left to do, nothing re-run; Optuna, MLflow and the folders agree
    assert main(["confirm", "tiny", "--top", "2", "--seeds", "3"]) == 0
    assert len(load_study("tiny.confirm").trials) == 3 * len(configs)
    capsys.readouterr()
    assert main(["doctor"]) == 0, capsys.readouterr().out


def test_an_interrupted_confirmation_resumes_without_rerunning_what_finished(corpus, tmp_path):
    from charlstm.analysis import load_study

    study = four_trial_study(corpus, tmp_path)
    configs = expected_configs(study, 2)
    cmd = [sys.executable, "-m", "charlstm", "confirm", "tiny", "--top", "2", "--seeds", "3"]
    with open("confirm.out", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)
    deadline = time.monotonic() + 120
    done_before: dict[int, float] = {}
    while time.monotonic() < deadline and len(done_before) < 2:
        time.sleep(0.3)
        try:
            trials = load_study("tiny.confirm").trials
        except Exception:  # not created yet
            continue
        done_before = {t.number: t.value for t in trials if t.state.name == "COMPLETE"}
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, Path("confirm.out").read_text()
    assert 2 <= len(done_before) < 3 * len(configs)

    assert main(["confirm", "tiny", "--top", "2", "--seeds", "3"]) == 0
    trials = load_study("tiny.confirm").trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    keys = [(t.user_attrs["confirms"], t.user_attrs["seed"]) for t in complete]
    assert sorted(keys) == sorted({(n, s) for n in configs for s in (1000, 1001, 1002)})  # each once
    assert all(trials[n].state.name == "COMPLETE" and trials[n].value == v for n, v in done_before.items())


def test_the_report_shows_the_confirmation(corpus, tmp_path):
    study = four_trial_study(corpus, tmp_path)
    assert main(["confirm", "tiny", "--top", "1", "--seeds", "2"]) == 0
    assert main(["report", "tiny", "--no-samples", "--no-log"]) == 0
    folder = tmp_path / "analysis" / "reports" / "tiny"
    page = (folder / "report.html").read_text()
    confirmed = page.split("<h2>Confirmed</h2>")[1].split("<h2>")[0]
    assert "seeds 1000, 1001" in confirmed and "alt='confirmed over seeds'" in confirmed
    assert f"<td>{study.best_trial.number}</td>" in confirmed
    assert "<li>trial " in confirmed or study.best_trial.user_attrs.get("baseline")  # a verdict, if two configs
    md = (folder / "report.md").read_text()
    assert "## Confirmed" in md and (folder / "plots" / "confirmed.png").is_file()


def test_a_study_with_a_final_trial_confirms_its_search_trials_and_adds_no_final(corpus, tmp_path, capsys):
    from charlstm.analysis import load_study

    study = four_trial_study(corpus, tmp_path, trial_budget={"max_steps": 8}, final={"max_steps": 16})
    final = next(t for t in study.trials if t.user_attrs.get("final"))
    search = [t for t in study.trials if not t.user_attrs.get("final")]
    assert main(["confirm", "tiny", "--top", "1", "--seeds", "2"]) == 0
    confirmation = load_study("tiny.confirm")
    confirmed = {t.user_attrs["confirms"] for t in confirmation.trials}
    assert final.number not in confirmed and confirmed <= {t.number for t in search}
    # every companion trial is one it queued: no final trial of its own, search-trial budgets
    assert all("final" not in t.user_attrs for t in confirmation.trials)
    assert len(confirmation.trials) == 2 * len(confirmed)
    # @best stays on the final trial's model: no search trial's model had its budget
    best = MlflowClient().get_model_version_by_alias("charlstm-tiny", "best")
    assert best.run_id == final.user_attrs["mlflow_run_id"]
    assert f"@best stays on the final trial {final.number}" in capsys.readouterr().out

"""charlstm reproduce: a float32 trial re-run from its MLflow record draws the same curve; an
edited corpus is named as what changed; --budget stops early."""

from __future__ import annotations

import yaml
from mlflow.tracking import MlflowClient

from charlstm.cli import main
from tests.conftest import tiny_study_dict


def tiny_study(corpus, tmp_path):
    from charlstm.analysis import load_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(corpus, n_trials=2)))
    assert main(["sweep", str(path)]) == 0
    return load_study("tiny")


def reproductions(client, run_id: str) -> list:
    return client.search_runs([client.get_experiment_by_name("charlstm").experiment_id],
                              filter_string=f"tags.reproduces = '{run_id}'")


def test_a_float32_trial_reproduces_from_its_record(corpus, tmp_path, capsys):
    study = tiny_study(corpus, tmp_path)
    trial = study.trials[1]
    run_id = trial.user_attrs["mlflow_run_id"]
    capsys.readouterr()
    assert main(["reproduce", "tiny", "1"]) == 0
    out = capsys.readouterr().out
    assert f"reproduced run {run_id}" in out and "evaluation(s) identical" in out
    client = MlflowClient()
    (again,) = reproductions(client, run_id)
    assert again.info.status == "FINISHED" and "charlstm.study" not in again.data.tags  # not a trial
    recorded = [m.value for m in client.get_metric_history(run_id, "val_bpc")]
    assert [m.value for m in client.get_metric_history(again.info.run_id, "val_bpc")] == recorded

    # by run id, only the first evaluation
    assert main(["reproduce", run_id, "--budget", "1"]) == 0
    assert "1 evaluation(s) identical" in capsys.readouterr().out
    short = [r for r in reproductions(client, run_id) if r.info.run_id != again.info.run_id]
    assert short[0].data.tags["reproduce"] == "stopped after 1 evaluation(s)"


def test_a_seconds_budget_trial_reproduces_by_replaying_its_compute_clock(corpus, tmp_path, capsys, monkeypatch):
    """Its schedule, its evaluations and its end followed its compute clock, which its last.pt
    kept step by step: the re-run reads that clock, not its own, and draws the same curve."""
    from charlstm import reproduce

    d = tiny_study_dict(corpus, n_trials=1, trial_budget={"max_seconds": 1.0})
    d["overrides"].update({"train.eval_points": 4})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    assert main(["sweep", str(path), "-q"]) == 0
    capsys.readouterr()
    assert main(["reproduce", "tiny", "0"]) == 0
    out = capsys.readouterr().out
    assert "4 evaluation(s) identical" in out, out
    # without the clock (a run whose last.pt is gone) the schedule follows this run's clock
    monkeypatch.setattr(reproduce, "recorded_clock", lambda uri, run_id: None)
    assert main(["reproduce", "tiny", "0"]) == 1
    assert "the run kept no clock to replay" in capsys.readouterr().err


def test_an_edited_corpus_is_named_as_what_changed(corpus, tmp_path, capsys):
    study = tiny_study(corpus, tmp_path)
    corpus.write_text(corpus.read_text().replace("Romeo", "Romea"))
    capsys.readouterr()
    assert main(["reproduce", "tiny", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"run {study.trials[0].user_attrs['mlflow_run_id']} does not reproduce" in err[0]
    assert "evaluation 1 (at " in err[0] and "changed since: corpus digest " in err[0]


def test_reproduce_bad_input_is_one_line(capsys):
    for argv, needle in ((["reproduce", "nope"], "not an MLflow run id"),
                         (["reproduce", "f" * 32, "--budget", "0"], "--budget 0")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]


def test_curves_are_compared_by_characters_seen():
    from charlstm.config import Config
    from charlstm.reproduce import Record, compare

    now = {"commit": "a", "corpus digest": "d", "torch": "t", "device": "cpu"}
    record = Record("r" * 32, Config(), [(2048, 3.1), (3072, 3.0)], dict(now))  # a retry: from 2048 on
    full = [(1024, 3.2), (2048, 3.1), (3072, 3.0)]
    assert compare(record, full, now)[0]
    agree, line = compare(record, full[:2], now)  # a shorter re-run is not "identical"
    assert not agree and "evaluation 2 (at 3,072 characters) was 3.000000 bits/char, no evaluation there" in line
    assert compare(record, full[:2], now, budget=2)[0]  # unless it was asked to stop early

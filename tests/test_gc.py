"""charlstm gc: lists, then deletes, the checkpoints a study no longer needs, locally and in
MLflow, and never those of the registered version; the study stays consistent."""

from __future__ import annotations

from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from charlstm.cli import main
from tests.conftest import tiny_study_dict


def checkpoints(client, trial) -> tuple[set[str], set[str]]:
    local = {p.name for p in Path(f"checkpoints/tiny/trial-{trial.number:04d}").glob("*.pt")}
    remote = {a.path for a in client.list_artifacts(trial.user_attrs["mlflow_run_id"], "checkpoints")}
    return local, remote


def test_gc_keeps_the_best_and_the_registered_and_frees_the_rest(corpus, tmp_path, capsys):
    from charlstm.analysis import load_study

    path = tmp_path / "study.yaml"
    d = tiny_study_dict(corpus, n_trials=4)
    d["overrides"]["tracking.travel_seconds"] = 0  # every evaluation sends a copy for a retry elsewhere
    path.write_text(yaml.safe_dump(d))
    assert main(["sweep", str(path)]) == 0
    study = load_study("tiny")
    client = MlflowClient()
    best = study.best_trial
    others = [t for t in study.trials if t.number != best.number]
    assert all(checkpoints(client, t) != (set(), set()) for t in study.trials)
    # a completed trial's copy went with its run's end; one left behind (its process died first):
    assert not any(client.list_artifacts(t.user_attrs["mlflow_run_id"], "resume") for t in study.trials)
    client.log_artifact(best.user_attrs["mlflow_run_id"], f"checkpoints/tiny/trial-{best.number:04d}/last.pt", "resume")
    capsys.readouterr()

    assert main(["gc", "tiny", "--keep", "top:1"]) == 0  # a dry run: it lists, deletes nothing
    listed = capsys.readouterr().out
    assert f"kept: trial {best.number}" in listed and "dry run: nothing deleted" in listed
    # the others' checkpoints, and the kept best's copy a retry elsewhere would have resumed from
    assert f"{len(others) + 1} trial(s)" in listed and "only the copy a retry elsewhere" in listed
    assert all(checkpoints(client, t)[0] == {"best.pt", "last.pt"} for t in study.trials)

    assert main(["gc", "tiny", "--keep", "top:1", "--yes"]) == 0
    assert "freed " in capsys.readouterr().out
    for t in others:
        assert checkpoints(client, t) == (set(), set()), t.number
        tags = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags
        assert tags["charlstm.gc"].startswith("checkpoints deleted")
    assert checkpoints(client, best) == ({"best.pt", "last.pt"}, {"checkpoints/best.pt", "checkpoints/last.pt"})
    assert not any(client.list_artifacts(t.user_attrs["mlflow_run_id"], "resume") for t in study.trials)

    # the registered best still generates; a collected trial still samples from its MLflow Model
    assert main(["generate", "models:/charlstm-tiny@best", "--prime", "RO", "--length", "20", "--seed", "1"]) == 0
    assert main(["generate", others[0].user_attrs["mlflow_run_id"], "--prime", "RO", "--length", "20"]) == 0
    assert main(["doctor", "tiny"]) == 0
    assert "all consistent" in capsys.readouterr().out
    assert main(["gc", "tiny", "--keep", "top:1"]) == 0 and "0 trial(s)" in capsys.readouterr().out


def test_gc_refuses_a_mistyped_rule_in_one_line(capsys):
    assert main(["gc", "tiny", "--keep", "best:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["charlstm: error: --keep 'best:2': expected top:K (K >= 1) or pareto"]

"""Optuna studies: study files, trials as nested MLflow runs, pruning, resume, local workers."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from charlstm.cli import main
from charlstm.schedule import auto_lr
from charlstm.sweep.objective import _pruning
from charlstm.sweep.spec import SEED_BASELINE, load_sweep, parse_sweep, trial_config
from charlstm.sweep.store import open_storage, requeue, retry_history
from charlstm.sweep.workers import run_sweep
from tests.conftest import EXPERIMENTS
from tests.conftest import tiny_study_dict as study_dict

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def write_study(tmp_path: Path, d: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


def mlflow_client() -> MlflowClient:
    return MlflowClient(f"sqlite:///{Path('mlflow.db').resolve()}")


def children(client: MlflowClient, parent_id: str):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def check_states_match(study, client):
    """Every Optuna trial's state is its MLflow run's status."""
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == STATUS[t.state.name], (t.number, t.state, run.info.status)
        assert run.data.tags["charlstm.trial"] == str(t.number)


def test_three_trial_sweep_end_to_end(corpus, tmp_path, capsys):
    path = write_study(tmp_path, study_dict(corpus, max_params=5000))
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "leaderboard" in out and "registered models:/charlstm-tiny@best" in out

    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert len(study.trials) == 3
    t0 = study.trials[0]  # the seed baseline goes first, as far as the space allows
    assert t0.user_attrs["baseline"] is True
    assert SEED_BASELINE["data.seq_length"] not in (8, 16)  # not among the choices: sampled instead
    assert t0.params["data.seq_length"] in (8, 16)
    # numbers outside the space's bounds are trained as they are: the seed's E and H
    assert SEED_BASELINE["model.hidden_size"] > 32 and SEED_BASELINE["model.embedding_dim"] > 16
    assert t0.params["model.hidden_size"] == SEED_BASELINE["model.hidden_size"]
    assert t0.params["model.embedding_dim"] == SEED_BASELINE["model.embedding_dim"]
    for t in study.trials:
        assert t.user_attrs["params_total"] > 0
        if t.state.name == "COMPLETE":
            # intermediate values against characters seen, at the same marks for every shape
            assert all(step % 512 == 0 for step in list(t.intermediate_values)[:-1])

    client = mlflow_client()
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.study"] == "tiny"
    assert parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"] == 3
    kids = children(client, parent_id)
    assert len(kids) == 3
    for run in kids:
        assert run.data.tags["charlstm.study"] == "tiny"
        assert "model.hidden_size" in run.data.params and "params.total" in run.data.params
    check_states_match(study, client)
    best = min((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert parent.data.tags["best.run_id"] == best.user_attrs["mlflow_run_id"]
    ver = client.get_model_version_by_alias("charlstm-tiny", "best")
    assert ver.run_id == best.user_attrs["mlflow_run_id"]
    best_run = client.get_run(ver.run_id)
    assert len(client.get_metric_history(ver.run_id, "val_bpc")) >= 2
    assert best_run.data.tags["state"] == "COMPLETE"

    assert main(["generate", "models:/charlstm-tiny@best", "--prime", "RO", "--length", "30",
                 "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("RO")


def test_too_large_trials_never_train(corpus, tmp_path):
    d = study_dict(corpus, max_params=1, n_trials=1)
    study = run_sweep(parse_sweep(d), quiet=True)
    (t,) = study.trials
    assert t.state.name == "PRUNED" and "max_params" in t.user_attrs["pruned_reason"]
    run = mlflow_client().get_run(t.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["state"] == "PRUNED"
    assert "max_params" in run.data.tags["pruned_reason"]
    assert not list(Path("checkpoints").glob("tiny/trial-0000/*.pt"))


def test_pruner_prunes_a_bad_trial(corpus, tmp_path):
    d = study_dict(
        corpus,
        space={"train.lr": {"type": "float", "low": 1e-9, "high": 0.03, "log": True}},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        n_trials=2,
        trial_budget={"max_steps": 48},
        overrides={**study_dict(corpus)["overrides"], "train.lr": 0.02, "train.warmup_steps": 0},
    )
    spec = parse_sweep(d)
    storage = open_storage(None)
    study = optuna.create_study(study_name="tiny", storage=storage)
    study.enqueue_trial({"train.lr": 0.02})  # learns
    study.enqueue_trial({"train.lr": 1e-9})  # deliberately cannot learn
    d["enqueue_baseline"] = False
    study = run_sweep(parse_sweep(d), n_trials=2, quiet=True)  # the two queued above
    good, bad = study.trials
    assert good.state.name == "COMPLETE"
    assert bad.state.name == "PRUNED"
    run = mlflow_client().get_run(bad.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["state"] == "PRUNED"
    assert int(run.data.tags["pruned_at_chars"]) == max(bad.intermediate_values)
    assert spec.pruner["name"] == "median"


def test_resume_adds_trials_to_the_same_study_and_parent(corpus, tmp_path):
    d = study_dict(corpus, n_trials=2)
    first = run_sweep(parse_sweep(d), quiet=True)
    parent = first.user_attrs["mlflow_parent_run_id"]
    again = run_sweep(parse_sweep(d), n_trials=1, quiet=True)
    assert len(again.trials) == 3
    assert again.user_attrs["mlflow_parent_run_id"] == parent
    assert len(children(mlflow_client(), parent)) == 3
    assert mlflow_client().get_run(parent).info.status == "FINISHED"
    params = [tuple(sorted(t.params.items())) for t in again.trials]
    assert len(set(params)) == 3  # the resumed sampler does not propose the same points again


@pytest.mark.slow
def test_two_local_workers_share_the_journal(corpus, tmp_path, capfd):
    d = study_dict(corpus, n_trials=4)
    study = run_sweep(parse_sweep(d), workers=2, quiet=True)
    out, err = capfd.readouterr()
    assert "locked" not in err and "Traceback" not in err
    ran = [int(line.split("ran ")[1].split()[0]) for line in out.splitlines() if " ran " in line]
    n = len(study.trials)
    # 4 asked; two workers that finish a trial in the same instant may both start one more
    assert 4 <= n <= 5
    assert len(ran) == 2 and sum(ran) == n  # two worker processes shared the trials
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert len({t.number for t in study.trials}) == n
    assert len({t.user_attrs["mlflow_run_id"] for t in study.trials}) == n
    check_states_match(study, mlflow_client())


# --------------------------------------------------------------------------------------------
# Bad study files: one line, exit 2.


def fails_cleanly(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("charlstm: error: "), err
    for needle in needles:
        assert needle in err, err


def test_low_greater_than_high(capsys, corpus, tmp_path):
    d = study_dict(corpus)
    d["space"]["model.hidden_size"] = {"type": "int", "low": 64, "high": 8}
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "model.hidden_size", "low (64) > high (8)")


def test_unknown_distribution(capsys, corpus, tmp_path):
    d = study_dict(corpus)
    d["space"]["model.hidden_size"] = {"type": "lognormal", "low": 8, "high": 64}
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "unknown distribution", "lognormal")


def test_space_key_not_a_config_path(capsys, corpus, tmp_path):
    d = study_dict(corpus)
    d["space"]["model.hidden"] = {"type": "int", "low": 8, "high": 64}
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "'model.hidden'", "not a config path")


def test_unknown_sampler(capsys, corpus, tmp_path):
    d = study_dict(corpus, sampler={"name": "bayesian-magic"})
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "unknown sampler", "bayesian-magic")


def test_unknown_pruner(capsys, corpus, tmp_path):
    d = study_dict(corpus, pruner={"name": "early"})
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "unknown pruner", "early")


def test_unknown_pruner_setting(capsys, corpus, tmp_path):
    d = study_dict(corpus, pruner={"name": "median", "patience": 3})
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "pruner.patience")


def test_unreachable_storage_fails_fast(capsys, corpus, tmp_path):
    import time

    path = str(write_study(tmp_path, study_dict(corpus)))
    start = time.monotonic()
    fails_cleanly(capsys, ["sweep", path, "--storage", "postgresql://postgres:hunter2@127.0.0.1:9/none"],
                  "unreachable", "***")
    assert time.monotonic() - start < 15
    assert "hunter2" not in capsys.readouterr().err


def test_changed_search_space_needs_force(capsys, corpus, tmp_path):
    d = study_dict(corpus, n_trials=1)
    assert main(["sweep", str(write_study(tmp_path, d))]) == 0
    capsys.readouterr()
    d["space"]["model.hidden_size"] = {"type": "int", "low": 8, "high": 64}
    changed = str(write_study(tmp_path, d, "changed.yaml"))
    fails_cleanly(capsys, ["sweep", changed], "another search space", "model.hidden_size", "--force")
    assert main(["sweep", changed, "--force"]) == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert len(study.trials) == 2


def test_shipped_study_files_load(monkeypatch):
    monkeypatch.chdir(EXPERIMENTS.parent)  # paths in study files are relative to the checkout
    for path in sorted((EXPERIMENTS.parent / "sweeps").glob("*.yaml")):
        spec = load_sweep(path)
        assert {"model.embedding_dim", "model.hidden_size", "data.seq_length"} <= set(spec.space)
        for key, value in SEED_BASELINE.items():  # trial 0 can be the real seed baseline: a number
            dist = spec.space.get(key)                # outside the bounds is trained as it is, a
            assert dist is None or dist.type != "categorical" or dist.contains(value), (path.name, key)  # choice must be there


def test_study_definition_round_trips_through_the_storage(corpus):
    """Workers rebuild the spec from what the study stored: zeros and flags must survive."""
    d = study_dict(corpus)
    d["space"]["model.dropout"] = {"type": "float", "low": 0.0, "high": 0.25}
    d["space"]["train.lr"] = {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}
    spec = parse_sweep(d)
    assert parse_sweep(spec.as_dict()) == spec


def test_a_run_left_running_after_its_trial_ended_is_closed_by_the_next_sweep(corpus, tmp_path):
    """A worker that ended its trial but not its run (it died, or the store failed just then)
    leaves a RUNNING run: the next sweep ends it as its trial ended."""
    import socket
    import subprocess

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(corpus, n_trials=2)))
    assert main(["sweep", str(path)]) == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    done = study.trials[1]
    client = MlflowClient()
    run_id = done.user_attrs["mlflow_run_id"]
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process of this host that no longer exists
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "state", "RUNNING")
    client.set_tag(run_id, "charlstm.owner", f"{socket.gethostname()}:{gone.pid}:1")
    assert main(["sweep", str(path), "--n-trials", "0"]) == 0
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["state"]) == ("FINISHED", done.state.name)
    assert main(["doctor", "tiny"]) == 0


def test_a_final_budget_trains_the_best_config_longer_as_one_more_unpruned_trial(corpus, tmp_path):
    d = study_dict(corpus, n_trials=2, trial_budget={"max_steps": 8}, final={"max_steps": 24},
                   pruner={"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0})
    study = run_sweep(parse_sweep(d), quiet=True)
    *search, final = study.trials
    assert len(search) == 2 and not any(t.user_attrs.get("final") for t in search)
    best = min((t for t in search if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert final.user_attrs["final"] is True and final.user_attrs["final_of"] == best.number
    assert final.params == best.params
    # the final budget, not the trials': 24 steps, and never pruned though it lags early on
    assert final.state.name == "COMPLETE"
    client = mlflow_client()
    run = client.get_run(final.user_attrs["mlflow_run_id"])
    assert run.data.params["train.max_steps"] == "24"
    assert run.data.tags["charlstm.final_of"] == str(best.number)
    assert client.get_run(best.user_attrs["mlflow_run_id"]).data.params["train.max_steps"] == "8"
    check_states_match(study, client)
    # a sweep resumed later runs no second final trial
    again = run_sweep(parse_sweep(d), n_trials=0, quiet=True)
    assert sum(bool(t.user_attrs.get("final")) for t in again.trials) == 1
    # the report says which trial is the final one and what budgets were compared
    assert main(["report", "tiny", "--no-samples", "--no-log", "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "tiny" / "report.md").read_text()
    assert f"final: trial {best.number}'s config trained longer" in page
    assert final.value < best.value  # (3x the steps of the same config)
    assert (f"It is the final trial: trial {best.number}'s config trained for max_steps 24, where the "
            "search's trials had max_steps 8." in page)


def test_a_final_budget_names_budget_keys(capsys, corpus, tmp_path):
    path = write_study(tmp_path, study_dict(corpus, final={"max_hours": 1}))
    fails_cleanly(capsys, ["sweep", str(path)], "final needs one or more of")


def test_the_final_trial_reports_but_is_never_pruned():
    class AlwaysPrune:  # a trial whose pruner wants it gone at every report
        reported: list = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return True

    class Tracker:
        end_status, end_tags = "FAILED", {}

    record = {"val_bpc": 3.0, "chars_mark": 512, "step": 4}
    trial = AlwaysPrune()
    _pruning(trial, Tracker(), "val_bpc", prune=False)(record)  # no raise
    assert trial.reported == [(512, 3.0)]
    with pytest.raises(optuna.TrialPruned):
        _pruning(trial, Tracker(), "val_bpc")(record)


def test_the_seed_baseline_trial_gets_the_auto_lr_of_the_trial_budget(corpus, tmp_path):
    d = study_dict(corpus, n_trials=1, trial_budget={"max_seconds": 1},
                   space={**study_dict(corpus)["space"], "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}})
    spec = parse_sweep(d)
    (t0,) = run_sweep(spec, quiet=True).trials
    assert t0.user_attrs["baseline"] is True
    assert t0.params["train.lr"] == pytest.approx(auto_lr(trial_config(spec).train))  # the 1-s budget's lr
    assert trial_config(spec).train.lr == "auto"


def test_a_trial_with_values_outside_the_space_is_queued_again_and_resumes_with_them():
    """The seed baseline's numbers may lie outside a space; its retry (after a pause or a dead
    worker) must carry them, not fail on Optuna's range check."""
    study = optuna.create_study()
    study.enqueue_trial({"h": 96}, user_attrs={"baseline": True})

    def stopped(trial):
        trial.suggest_int("h", 128, 512)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(stopped, n_trials=1)
    (failed,) = study.trials
    assert failed.state.name == "FAIL" and failed.params == {"h": 96}
    assert requeue(study, failed, crashed=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(lambda t: t.suggest_int("h", 128, 512), n_trials=1)
    retry = study.trials[-1]
    assert retry.state.name == "COMPLETE" and retry.params == {"h": 96} and retry.value == 96
    assert retry.user_attrs["baseline"] is True and retry_history(retry) == [0]


def test_resuming_a_paused_final_trial_adds_no_search_trials(corpus):
    from charlstm.sweep.study import _set_target

    spec = parse_sweep(study_dict(corpus, n_trials=2, final={"max_steps": 16}))
    study = optuna.create_study()
    study.set_user_attr("target_trials", 2)
    study.set_user_attr("deadline", None)
    study.optimize(lambda t: 1.0, n_trials=2)  # the search: done
    study.enqueue_trial({}, user_attrs={"final": True, "final_of": 0})  # its final, paused and queued
    _set_target(study, spec, n_trials=None, timeout=None)  # what `charlstm sweep FILE` does on resume
    assert study.user_attrs["target_trials"] == 2
    assert study.trials[-1].state.name == "WAITING"
    _set_target(study, spec, n_trials=3, timeout=None)  # asked for more: more it is
    assert study.user_attrs["target_trials"] == 5

"""What a study spread over machines needs of each one, tested on this one: the same corpus
everywhere, checkpoints a retry can trust, stores that may fail, and time budgets a
reproduction can replay."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli_env, tiny_study_dict


def test_a_worker_whose_corpus_differs_refuses_naming_both_digests(corpus, tmp_path):
    from charlstm.sweep.spec import load_sweep
    from charlstm.sweep.store import load_study, open_storage
    from charlstm.sweep.study import setup_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(corpus)))
    setup_study(load_sweep(path), None, None, None, None)
    theirs = hashlib.sha256(corpus.read_bytes()).hexdigest()
    corpus.write_text(corpus.read_text() + "another machine's copy, edited\n")  # the same path, other text
    ours = hashlib.sha256(corpus.read_bytes()).hexdigest()
    done = subprocess.run([sys.executable, "-m", "charlstm", "worker", "--study", "tiny", "--storage",
                           "studies/journal.log"], capture_output=True, text=True, env=cli_env(), timeout=120)
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith("charlstm: error: corpus "), done.stderr
    assert ours[:16] in line and theirs[:16] in line
    study = load_study("tiny", open_storage(None))
    assert [t.state.name for t in study.trials] == ["WAITING"]  # (the baseline, never asked for)
    again = subprocess.run([sys.executable, "-m", "charlstm", "sweep", str(path), "--n-trials", "0"],
                           capture_output=True, text=True, env=cli_env(), timeout=120)
    assert again.returncode == 2 and theirs[:16] in again.stderr  # a later sweep of it too, unless --force


def _trained(corpus, tmp_path, **extra):
    """A tiny run's checkpoints (best.pt at an earlier evaluation than last.pt) and its config."""
    from charlstm.config import load_config
    from charlstm.train import train
    from tests.conftest import EXPERIMENTS, smoke_overrides

    cfg = load_config(EXPERIMENTS / "smoke.yaml", smoke_overrides(corpus, **{
        "tracking.enabled": False, "train.max_steps": 40, "train.eval_every_chars": 512, **extra}))
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    return cfg, result


def test_a_checkpoint_says_why_it_cannot_resume_a_run(corpus, tmp_path):
    from dataclasses import replace

    import torch

    from charlstm import checkpoint
    from charlstm.data import load_corpus, prepare

    cfg, result = _trained(corpus, tmp_path)
    vocab = prepare(load_corpus(str(corpus)), cfg.data.val_fraction, cfg.data.test_fraction).vocab.chars
    last = result.run_dir / "last.pt"
    assert checkpoint.unusable(last, cfg, vocab) is None
    # where it is kept and what the machine picks may differ; what it trains may not
    assert checkpoint.unusable(last, replace(cfg, name="x", train=replace(cfg.train, out_dir="elsewhere",
                                                                            threads=7)), vocab) is None
    assert checkpoint.unusable(tmp_path / "nope.pt", cfg, vocab) == "is missing"
    assert checkpoint.unusable(last, cfg, vocab + "§") == "was trained on another corpus (another vocab)"
    other = replace(cfg, model=replace(cfg.model, hidden_size=cfg.model.hidden_size + 1))
    assert checkpoint.unusable(last, other, vocab).startswith(
        f"is of another config (model.hidden_size {cfg.model.hidden_size} vs {cfg.model.hidden_size + 1}")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert checkpoint.unusable(cut, cfg, vocab).startswith("is not a charlstm checkpoint")
    future = tmp_path / "future.pt"
    torch.save({**checkpoint.load(last), "format": checkpoint.FORMAT + 1}, future)
    assert checkpoint.unusable(future, cfg, vocab) == (f"is of format {checkpoint.FORMAT + 1}, another charlstm "
                                                       f"version's (this one reads format {checkpoint.FORMAT})")


def _paused_trial(corpus, tmp_path):
    """A study whose trial 0 (the seed baseline, as the tiny study's trial 0) failed mid-run with
    its checkpoints on disk, queued to resume as trial 1. Returns (spec, its checkpoint folder)."""
    from charlstm.config import flatten
    from charlstm.sweep.kinds import Kind
    from charlstm.sweep.objective import Objective
    from charlstm.sweep.recovery import fail_trial
    from charlstm.sweep.spec import load_sweep
    from charlstm.sweep.study import setup_study
    from charlstm.train import train

    d = tiny_study_dict(corpus, n_trials=1, enqueue_baseline=False)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    spec = load_sweep(path)
    study, uri = setup_study(spec, None, None, None, None)
    study.enqueue_trial({"model.embedding_dim": 8, "model.hidden_size": 16, "data.seq_length": 16})
    trial = study.ask()
    objective = Objective(spec, uri, study.user_attrs["mlflow_parent_run_id"], 1, print)
    cfg, _ = objective._config(trial, Kind.SEARCH)
    folder = tmp_path / flatten(cfg)["train.out_dir"] / "trial-0000"
    train(cfg, run_dir=folder, progress=False)  # (its run as the worker would have begun it)
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert fail_trial(study, frozen, uri, "its worker was stopped", retry=True, crashed=False)
    return spec, folder


def test_a_retry_passes_over_a_damaged_checkpoint_to_an_earlier_one(corpus, tmp_path, capsys):
    from charlstm.sweep.workers import run_sweep

    spec, folder = _paused_trial(corpus, tmp_path)
    (folder / "last.pt").write_bytes((folder / "last.pt").read_bytes()[:1000])  # cut while paused
    study = run_sweep(spec, quiet=True)
    retry = study.trials[1]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["resumed_from_trial"] == 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "trial 1:" in ln]
    assert line.endswith("trial 1: trial 0's last.pt is not a charlstm checkpoint (not a file torch.save "
                         "wrote): resuming from trial 0's best.pt")


def test_a_retry_with_no_checkpoint_to_trust_starts_over_and_completes(corpus, tmp_path, capsys):
    from charlstm.sweep.workers import run_sweep

    spec, folder = _paused_trial(corpus, tmp_path)
    for name in ("last.pt", "best.pt"):
        (folder / name).write_bytes(b"")  # both emptied: a disk that lost them
    study = run_sweep(spec, quiet=True)
    retry = study.trials[1]
    assert retry.state.name == "COMPLETE" and "resumed_from_trial" not in retry.user_attrs
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "trial 1:" in ln]
    assert line.endswith("trial 0's last.pt is not a charlstm checkpoint (not a file torch.save wrote); "
                         "trial 0's best.pt is not a charlstm checkpoint (not a file torch.save wrote): starting it over")


def test_a_tracking_server_beyond_loopback_refuses_to_start_without_a_login(tmp_path):
    cmd = [sys.executable, "-m", "charlstm", "tracking-server", "--host", "0.0.0.0", "--port", "5999",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifacts-destination", str(tmp_path / "a")]
    env = {k: v for k, v in cli_env().items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith("charlstm: error: refusing to serve every run"), done.stderr
    assert not (tmp_path / "m.db").exists()  # nothing started
    loose = tmp_path / "login"
    loose.write_text("alice:s3cret-Passw0rd\n")
    loose.chmod(0o644)
    done = subprocess.run([*cmd, "--credentials", str(loose)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "is readable by others: chmod 600" in done.stderr


def test_a_tracking_server_beyond_loopback_lets_in_only_its_login(tmp_path):
    import base64
    import urllib.error
    import urllib.request

    from tests.conftest import free_port, running_server

    port, password = free_port(), "s3cret-Passw0rd-9"
    login = tmp_path / "login"
    login.write_text(f"alice:{password}\n")
    login.chmod(0o600)
    log = tmp_path / "server.log"
    cmd = ["bash", "-c", f"exec {sys.executable} -m charlstm tracking-server --host 0.0.0.0 --port {port} "
           f"--backend-store-uri sqlite:///{tmp_path / 'm.db'} --artifacts-destination {tmp_path / 'a'} "
           f"--credentials {login} --workers 1 > {log} 2>&1"]
    url = f"http://127.0.0.1:{port}"
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    with running_server(cmd, url):
        try:
            urllib.request.urlopen(search, timeout=10)
            raise AssertionError("the server answered a request without a login")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        auth = base64.b64encode(f"alice:{password}".encode()).decode()
        ok = urllib.request.urlopen(urllib.request.Request(search, headers={"Authorization": f"Basic {auth}"}),
                                    timeout=10)
        assert ok.status == 200
        # a charlstm process logs in from the same file (CHARLSTM_MLFLOW_CREDENTIALS)
        probe = subprocess.run([sys.executable, "-c", "from charlstm.server import use_credentials_file; "
                                "use_credentials_file(); from charlstm import tracking; "
                                f"print(tracking.client_for('{url}').search_experiments()[0].name)"],
                               capture_output=True, text=True, timeout=120,
                               env={**cli_env(), "CHARLSTM_MLFLOW_CREDENTIALS": str(login)})
        assert probe.returncode == 0 and probe.stdout.strip() == "Default", probe.stderr[-1000:]
    assert "basic-auth (admin user alice" in log.read_text() and password not in log.read_text()


def test_a_retry_on_a_machine_without_the_checkpoint_resumes_from_the_copy_its_run_sent(corpus, tmp_path):
    import os
    import shutil
    import signal
    import time

    from mlflow.tracking import MlflowClient

    from charlstm.sweep.store import load_study, open_storage
    from tests.conftest import wait_for

    d = tiny_study_dict(corpus, n_trials=1, trial_budget={"max_seconds": 8.0})
    d["overrides"].update({"train.eval_points": 40, "tracking.travel_seconds": 1})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    sweep = subprocess.Popen([sys.executable, "-m", "charlstm", "sweep", str(path)], env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def sent() -> bool:  # trial 0's run has sent its checkpoint
            trials = load_study("tiny", open_storage(None)).trials if os.path.exists("studies/journal.log") else []
            run = trials[0].user_attrs.get("mlflow_run_id") if trials else None
            return bool(run) and any(a.path == "resume/last.pt" for a in MlflowClient("sqlite:///mlflow.db").list_artifacts(run, "resume"))
        wait_for(sent, timeout=120)
        time.sleep(1.5)
    finally:
        os.killpg(sweep.pid, signal.SIGTERM)  # a pause: trial 0 fails and is queued to resume
        sweep.wait(timeout=120)
    shutil.rmtree("checkpoints")  # the retry runs on a machine that never had them
    done = subprocess.run([sys.executable, "-m", "charlstm", "sweep", str(path)], capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trial 1: fetched trial 0's checkpoint from its MLflow run" in done.stderr
    study = load_study("tiny", open_storage(None))
    retry = study.trials[1]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["resumed_from_trial"] == 0
    first = min(m.step for m in MlflowClient("sqlite:///mlflow.db").get_metric_history(
        retry.user_attrs["mlflow_run_id"], "train_loss"))
    assert first > 0  # it went on from where the copy was, not from the start


@pytest.mark.slow
def test_launch_runs_workers_through_submitit_until_the_target(corpus, tmp_path):
    """submitit's local executor runs the same jobs a Slurm array would, as real processes."""
    from charlstm.sweep.spec import load_sweep
    from charlstm.sweep.store import load_study, open_storage, started_trials
    from charlstm.sweep.study import setup_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(corpus, n_trials=4)))
    setup_study(load_sweep(path), None, None, None, None)
    done = subprocess.run([sys.executable, "-m", "charlstm", "launch", "tiny", "--storage", "studies/journal.log",
                           "--workers", "2", "--cluster", "local", "--wait"], capture_output=True, text=True,
                          env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "submitted 2 worker job(s) of study tiny" in done.stdout and "done: the workers ran 4 trial(s)" in done.stdout
    study = load_study("tiny", open_storage(None))
    assert started_trials(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({t.user_attrs["worker"].split(":")[1] for t in study.trials}) == 2  # two processes ran them
    assert sorted(p.name for p in Path("logs/submitit").iterdir())  # the jobs' logs

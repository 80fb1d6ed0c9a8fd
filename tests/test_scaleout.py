"""Scale-out on real engines: Optuna on PostgreSQL, MLflow behind a tracking server.

Needs the PostgreSQL server on 127.0.0.1:5432 (trust auth, user postgres). Each test run
creates its own databases and drops them afterwards; the MLflow server it starts is stopped
at teardown. Skips with the reason where no PostgreSQL answers, but never under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from charlstm.sweep.runner import finish_study, setup_study
from charlstm.sweep.spec import parse_sweep
from charlstm.sweep.store import open_storage
from tests.conftest import cli_env, free_port, running_server
from tests.test_sweep import STATUS, study_dict

PG = dict(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)


def _admin():
    import psycopg

    try:
        conn = psycopg.connect(**PG, autocommit=True)
    except Exception as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL on 127.0.0.1:5432 is unreachable: {e}")
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({str(e).strip().splitlines()[0]})")
    return conn


@pytest.fixture
def pg_databases():
    """Two fresh databases (Optuna, MLflow) for this test, dropped afterwards."""
    conn = _admin()
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    names = [f"charlstm_optuna_{tag}", f"charlstm_mlflow_{tag}"]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE {name}")
    yield [f"postgresql://postgres@127.0.0.1:5432/{n}" for n in names]
    with conn.cursor() as cur:
        for name in names:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
    conn.close()


@pytest.fixture
def mlflow_server(pg_databases, tmp_path):
    """`make mlflow-server`'s command on a free loopback port, stopped at teardown."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow), "server", "--backend-store-uri", pg_databases[1],
           "--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]  # as make mlflow-server
    with running_server(cmd, f"http://127.0.0.1:{port}") as url:
        yield url


@pytest.mark.postgres
def test_dead_worker_trial_is_retried_from_its_checkpoint(corpus, tmp_path, pg_databases, mlflow_server):
    optuna_url = pg_databases[0]
    d = study_dict(
        corpus, study="pg", n_trials=3, trial_budget={"max_steps": 1500},
        heartbeat_interval=1, grace_period=8,
    )
    spec = parse_sweep(d)
    study, uri = setup_study(spec, optuna_url, mlflow_server, None, None)
    assert uri == mlflow_server
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "charlstm", "worker", "--study", "pg", "--storage", optuna_url,
             "--threads", "1", "--worker-index", str(i)],
            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        # kill a worker in the middle of a trial that has already written a checkpoint
        victim_trial = None
        deadline = time.monotonic() + 300
        while victim_trial is None and time.monotonic() < deadline:
            for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                if "worker" in t.user_attrs and Path(f"checkpoints/pg/trial-{t.number:04d}/last.pt").is_file():
                    victim_trial = t
                    break
            time.sleep(0.2)
        assert victim_trial is not None, "no trial reached a checkpoint"
        pid = int(victim_trial.user_attrs["worker"].split(":")[1])
        (victim,) = [w for w in workers if w.pid == pid]
        victim.send_signal(signal.SIGKILL)
        (survivor,) = [w for w in workers if w is not victim]
        _, err = survivor.communicate(timeout=600)
        assert survivor.returncode == 0, err
        assert "locked" not in err
    finally:
        for w in workers:
            w.kill()
            w.wait()

    finish_study(spec, "pg", optuna_url, uri, quiet=True)
    study = optuna.load_study(study_name="pg", storage=open_storage(optuna_url, spec))
    trials = study.get_trials()
    summary = [(t.number, t.state.name, t.system_attrs.get("retry_history"), t.system_attrs.get("fail_reason"),
                t.user_attrs.get("worker")) for t in trials]
    print(f"victim pid {victim.pid}; survivor's stderr:\n{err}")  # shown by pytest if this test fails
    dead = next(t for t in trials if t.number == victim_trial.number)
    assert dead.state.name == "FAIL", summary
    retry = next(t for t in trials if victim_trial.number in t.system_attrs.get("retry_history", []))
    assert retry.state.name == "COMPLETE"
    assert retry.user_attrs["resumed_from_trial"] == victim_trial.number
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3, summary

    client = MlflowClient(uri)
    dead_run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "FAILED" and "heartbeat" in dead_run.data.tags["error"]
    retry_run = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert retry_run.data.tags["charlstm.resumed_from_run"] == dead_run.info.run_id
    first_chars = min(m.step for m in client.get_metric_history(retry_run.info.run_id, "train_loss"))
    per_step = int(retry_run.data.params["data.batch_size"]) * int(retry_run.data.params["data.seq_length"])
    assert first_chars > 10 * per_step  # it continued from the checkpoint, not from step 0 (steps count chars)
    for t in trials:  # every Optuna state matches its MLflow run's status
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == STATUS[t.state.name]
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 3
    assert "postgres@" not in str(parent.data.params) + str(parent.data.tags)


class Proxy:
    """A TCP forwarder to PostgreSQL that the test can cut (every connection closed, the port
    refusing) and restore on the same port: a link that drops, not the server restarting."""

    def __init__(self, target=("127.0.0.1", 5432)):
        import socket
        import threading

        self.target, self.port, self.socket, self.threading = target, free_port(), socket, threading
        self.conns: list = []
        self.listener = None
        self.start()

    def start(self) -> None:
        s = self.socket
        self.listener = s.socket(s.AF_INET, s.SOCK_STREAM)
        self.listener.setsockopt(s.SOL_SOCKET, s.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            server = self.socket.create_connection(self.target)
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                self.threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self.listener.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(self.socket.SHUT_RDWR)
                c.close()
        self.conns = []


@pytest.mark.postgres
@pytest.mark.slow
def test_a_30s_cut_to_postgresql_mid_trial_costs_no_trial(corpus, tmp_path, pg_databases):
    import yaml

    from charlstm.sweep.store import load_study, started_trials

    proxy = Proxy()
    direct = pg_databases[0]
    through = direct.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    d = study_dict(corpus, study="cut", n_trials=2, trial_budget={"max_seconds": 12.0})
    d["overrides"]["train.eval_points"] = 12
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(d))
    sweep = subprocess.Popen([sys.executable, "-m", "charlstm", "sweep", str(path), "--storage", through],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # a trial a few evaluations in
            try:
                trials = load_study("cut", open_storage(direct)).trials
            except Exception:
                trials = []
            if any(t.state.name == "RUNNING" and len(t.intermediate_values) >= 2 for t in trials):
                break
            time.sleep(0.5)
        proxy.cut()
        time.sleep(30)
        proxy.start()
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 0, err[-3000:]
    assert "optuna storage unreachable" in err and "retrying for up to 60 s" in err
    study = load_study("cut", open_storage(direct))
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert started_trials(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials), \
        [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]

"""Scale-out on real engines, on one machine: three hosts share Optuna on PostgreSQL and an MLflow
tracking server with a login. A host is a network namespace with its own hostname and its own
checkpoint disk, linked to the others by a bridge::

    this machine's own namespace: the network               host-a, host-b, host-c (ip netns)
    +--------------------------------------------------+       +----------------------------+
    | PostgreSQL 127.0.0.1:5432                        |       | charlstm worker            |
    |   ^ Proxy on GATEWAY:P    (a test cuts the link)  |<-veth-| hostname host-a            |
    | charlstm tracking-server GATEWAY:Q (basic-auth)   |       | ./checkpoints: its own disk |
    +--------------------------------------------------+       +----------------------------+

Needs root (ip netns, unshare, mount) and PostgreSQL on 127.0.0.1:5432 (trust auth, user
postgres). Each test run creates its databases, namespaces and bridge and removes them; the
servers it starts are stopped. Skips with the reason without them, but never under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from charlstm.sweep.spec import parse_sweep
from charlstm.sweep.store import load_study, open_storage, retried_as, started_trials
from charlstm.sweep.study import finish_study, setup_study
from tests.conftest import cli_env, free_port, postgres_admin, running_server, unavailable, wait_for
from tests.test_sweep import STATUS, study_dict

HOSTS = ("host-a", "host-b", "host-c")
PASSWORD = "multi-host-Passw0rd"


class Proxy:
    """A TCP forwarder to PostgreSQL on ``listen`` that the test can cut (every connection
    closed, the port refusing) and restore on the same port: a link that drops, not the server
    restarting (never restart the machine's own server)."""

    def __init__(self, listen: str, target=("127.0.0.1", 5432)):
        self.listen, self.target, self.port = listen, target, free_port()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen, self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.target)
            except OSError:  # cut
                return
            with self.lock:  # (a connection accepted as the link was cut must not outlive it)
                if listener is not self.listener:
                    for s in (client, server):
                        s.close()
                    return
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
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
        with self.lock:
            listener, self.listener = self.listener, None
            with contextlib.suppress(OSError):  # (wakes the accept() in flight: a close alone would not)
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                    c.close()
            self.conns = []


class Hosts:
    """Network namespaces on a bridge, each one "host": its own hostname (a UTS namespace) and
    its own disk under ./checkpoints (a directory bind-mounted in a private mount namespace)."""

    def __init__(self, names: tuple[str, ...]):
        tag = uuid.uuid4().hex[:5]
        n = int(tag, 16)
        self.subnet = f"10.{200 + n % 50}.{n // 50 % 250}"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"chb{tag}"
        self.ns = {name: f"ch{tag}{i}" for i, name in enumerate(names)}

    @staticmethod
    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def up(self) -> None:
        self.ip("link", "add", self.bridge, "type", "bridge")
        self.ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        self.ip("link", "set", self.bridge, "up")
        for i, ns in enumerate(self.ns.values()):
            self.ip("netns", "add", ns)
            self.ip("link", "add", f"{ns}v", "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.ip("link", "set", f"{ns}v", "master", self.bridge, "up")
            self.ip("-n", ns, "addr", "add", f"{self.subnet}.{i + 2}/24", "dev", "eth0")
            self.ip("-n", ns, "link", "set", "eth0", "up")
            self.ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for name in self.ns:
            self.kill(name)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)

    def start(self, name: str, argv: list[str], cwd: Path, log: Path, env: dict) -> subprocess.Popen:
        """``argv`` on host ``name``, in ``cwd``, its ./checkpoints that host's own disk."""
        disk = cwd / "disks" / name
        disk.mkdir(parents=True, exist_ok=True)
        (cwd / "checkpoints").mkdir(exist_ok=True)
        script = 'hostname "$1" && mount --bind "$2" "$3" && shift 3 && exec "$@"'
        cmd = ["ip", "netns", "exec", self.ns[name], "unshare", "--uts", "--mount", "--propagation", "private",
               "sh", "-c", script, "sh", name, str(disk), str(cwd / "checkpoints"), *argv]
        with open(log, "ab") as sink:
            return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL every process of host ``name``: the machine is gone."""
        pids = subprocess.run(["ip", "netns", "pids", self.ns[name]], capture_output=True, text=True, timeout=30)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three hosts, a PostgreSQL link the test can cut, and a tracking server with a login:
    (hosts, proxy, optuna URL as the hosts see it, the same direct, tracking URL, login file)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        unavailable("the multi-host tests need root, ip (iproute2) and unshare")
    conn = postgres_admin()
    tag = uuid.uuid4().hex[:8]
    names = [f"charlstm_optuna_{tag}", f"charlstm_mlflow_{tag}"]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE {name}")
    hosts = Hosts(HOSTS)
    tmp = tmp_path_factory.mktemp("cluster")
    login = tmp / "login"
    login.write_text(f"alice:{PASSWORD}\n")
    login.chmod(0o600)
    try:
        hosts.up()
        proxy = Proxy(hosts.gateway)
        port = free_port()
        server = [sys.executable, "-m", "charlstm", "tracking-server", "--host", hosts.gateway, "--port", str(port),
                  "--backend-store-uri", f"postgresql://postgres@127.0.0.1:5432/{names[1]}",
                  "--artifacts-destination", str(tmp / "server-artifacts"), "--credentials", str(login),
                  "--workers", "2"]
        with running_server(server, f"http://{hosts.gateway}:{port}") as url:
            yield (hosts, proxy, f"postgresql://postgres@{hosts.gateway}:{proxy.port}/{names[0]}",
                   f"postgresql://postgres@127.0.0.1:5432/{names[0]}", url, login)
    finally:
        hosts.down()
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


@pytest.fixture
def logged_in(cluster, monkeypatch):
    """This test process logs in to the tracking server as the hosts do."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    return cluster


def start_workers(cluster, study: str, tmp_path: Path) -> dict[str, subprocess.Popen]:
    """One ``charlstm worker`` on each host, through the hosts' link to PostgreSQL; each
    host's output goes to ``<host>.log``."""
    hosts, _, through, _, _, login = cluster
    env = cli_env(CHARLSTM_MLFLOW_CREDENTIALS=str(login))
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # (the file is their login)
        env.pop(key, None)
    return {name: hosts.start(name, [sys.executable, "-m", "charlstm", "worker", "--study", study, "--storage", through,
                                     "--threads", "1", "--worker-index", str(i)], tmp_path, tmp_path / f"{name}.log", env)
            for i, name in enumerate(HOSTS)}


def check_agreement(study, uri: str) -> None:
    """Nothing RUNNING; every trial's run ended as its trial did; the parent run finished."""
    client = MlflowClient(uri)
    assert not [t.number for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in study.trials:
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == STATUS[t.state.name], t.number
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert "postgres@" not in str(parent.data.params) + str(parent.data.tags)


def travelled(study, client: MlflowClient):
    """A trial running mid-way whose checkpoint has reached the tracking server, if any."""
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        run = t.user_attrs.get("mlflow_run_id")
        if run and len(t.intermediate_values) >= 1 and any(
                a.path == "resume/last.pt" for a in client.list_artifacts(run, "resume")):
            return t
    return None


@pytest.mark.postgres
@pytest.mark.slow
def test_a_host_that_dies_mid_trial_loses_no_work(corpus, tmp_path, logged_in):
    """Kill every process of the host running a trial: another host retries it from the copy of
    its checkpoint that travelled to the tracking server (its disk is out of reach), the target
    is met, and Optuna, MLflow and `charlstm doctor` (run on a surviving host) agree."""
    hosts, _, through, direct, url, _ = logged_in
    d = study_dict(corpus, study="dies", n_trials=4, trial_budget={"max_steps": 2400},
                   heartbeat_interval=1, grace_period=8)
    d["overrides"].update({"train.eval_every_chars": 8192, "tracking.travel_seconds": 1})
    spec = parse_sweep(d)
    study, uri = setup_study(spec, direct, url, None, None)
    assert uri == url
    workers = start_workers(logged_in, "dies", tmp_path)
    client = MlflowClient(uri)
    victim = wait_for(lambda: travelled(study, client), timeout=300, every=0.2)
    assert victim is not None, "no trial's checkpoint reached the tracking server"
    dead_host = victim.user_attrs["worker"].split(":")[0]
    hosts.kill(dead_host)
    for name, w in workers.items():
        assert w.wait(timeout=600) == (-signal.SIGKILL if name == dead_host else 0), (tmp_path / f"{name}.log").read_text()

    finish_study(spec, "dies", direct, uri, quiet=True)
    study = load_study("dies", open_storage(direct))
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in HOSTS}
    summary = [(t.number, t.state.name, t.user_attrs.get("worker")) for t in study.trials]
    dead = next(t for t in study.trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL, summary
    retry = study.trials[retried_as(study.trials)[victim.number]]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_trial"] == victim.number
    retry_host = retry.user_attrs["worker"].split(":")[0]
    assert retry_host != dead_host and f"fetched trial {victim.number}'s checkpoint" in logs[retry_host]
    first = min(m.step for m in client.get_metric_history(retry.user_attrs["mlflow_run_id"], "train_loss"))
    assert first > 8192  # it went on from the travelled checkpoint (steps count characters), not from 0
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).data.tags["charlstm.resumed_from_run"] == \
        dead.user_attrs["mlflow_run_id"]
    assert "heartbeat" in client.get_run(dead.user_attrs["mlflow_run_id"]).data.tags["error"]
    assert started_trials(study.trials) == 4 and sum(t.state == TrialState.COMPLETE for t in study.trials) == 4
    assert len({t.user_attrs["worker"].split(":")[0] for t in study.trials}) >= 2, summary
    check_agreement(study, uri)
    survivor = next(name for name in HOSTS if name != dead_host)
    done = hosts.start(survivor, [sys.executable, "-m", "charlstm", "doctor", "dies", "--storage", through],
                       tmp_path, tmp_path / "doctor.log", cli_env(CHARLSTM_MLFLOW_CREDENTIALS=str(logged_in[5])))
    assert done.wait(timeout=120) == 0, (tmp_path / "doctor.log").read_text()
    assert "all consistent: dies" in (tmp_path / "doctor.log").read_text()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_30s_cut_between_the_hosts_and_postgresql_costs_no_trial(corpus, tmp_path, logged_in):
    """Every host loses PostgreSQL for 30 s mid-trial (its link, not the server): storage calls
    wait it out, each host says so once when it goes and once when it is back, and every trial
    completes (the heartbeats' grace, 60 s here, outlasts the cut)."""
    _, proxy, _, direct, url, _ = logged_in
    d = study_dict(corpus, study="cut", n_trials=3, trial_budget={"max_seconds": 10.0},
                   heartbeat_interval=2, grace_period=60)
    d["overrides"]["train.eval_points"] = 10
    spec = parse_sweep(d)
    study, uri = setup_study(spec, direct, url, None, None)
    workers = start_workers(logged_in, "cut", tmp_path)
    deep = wait_for(lambda: [t for t in load_study("cut", open_storage(direct)).get_trials(states=(TrialState.RUNNING,))
                             if len(t.intermediate_values) >= 2], timeout=300)
    assert deep, "no trial got two evaluations in"
    proxy.cut()
    time.sleep(30)
    proxy.start()
    for name, w in workers.items():
        assert w.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()

    finish_study(spec, "cut", direct, uri, quiet=True)
    study = load_study("cut", open_storage(direct))
    for name in HOSTS:
        log = (tmp_path / f"{name}.log").read_text()
        assert log.count("optuna storage unreachable") == 1 and "retrying for up to 60 s" in log, log
        assert log.count("optuna storage back after") == 1, log
    summary = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert started_trials(study.trials) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials), summary
    check_agreement(study, uri)

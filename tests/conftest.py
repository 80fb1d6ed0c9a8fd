"""Shared fixtures: every test works in its own temp directory with its own tiny corpus and
its own MLflow store, so no test sees another's state."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

# A small public-domain-style corpus written by the tests themselves (no download, no shared
# state): a few speeches repeated so that a tiny model can learn something in a few steps.
SPEECHES = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name.

MERCUTIO:
A plague o' both your houses!
They have made worms' meat of me.

"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run each test in a fresh directory with MLflow pointed at a database inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield


@pytest.fixture
def corpus(tmp_path) -> Path:
    """About 8 KB of text: enough for smoke.yaml's batches and a validation split."""
    path = tmp_path / "corpus.txt"
    path.write_text(SPEECHES * 20, encoding="utf-8")
    return path


def smoke_overrides(corpus: Path, **extra) -> dict:
    """experiments/smoke.yaml shrunk further for a unit test, pointed at ``corpus``."""
    out = {"data.corpus": str(corpus), "train.sample_length": 20}
    out.update(extra)
    return out


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def tiny_study_dict(corpus: Path, **extra) -> dict:
    """sweeps/default.yaml's shape on experiments/smoke.yaml: a trial is ~1 s."""
    d = {
        "study": "tiny",
        "base": str(EXPERIMENTS / "smoke.yaml"),
        "overrides": {"data.corpus": str(corpus), "train.eval_every_chars": 512,
                      "train.sample_length": 10, "train.threads": 1},
        "trial_budget": {"max_steps": 24},
        "space": {
            "model.embedding_dim": {"type": "int", "low": 4, "high": 16, "log": True},
            "model.hidden_size": {"type": "int", "low": 8, "high": 32},
            "data.seq_length": {"type": "categorical", "choices": [8, 16]},
        },
        "sampler": {"name": "random", "seed": 1},
        "pruner": {"name": "none"},
        "n_trials": 3,
    }
    d.update(extra)
    return d


def study_with_every_state(corpus: Path, tmp_path: Path):
    """A tracked study made here and now with a COMPLETE baseline and one more COMPLETE trial,
    a PRUNED one (too many parameters), a FAIL one (a context longer than the corpus) and one
    still RUNNING (its MLflow run open, two evaluations logged). Returns (study, tracking URI)."""
    import yaml

    from charlstm.config import from_dict
    from charlstm.model import count_params
    from charlstm.sweep.spec import load_sweep, trial_config
    from charlstm.sweep.study import setup_study
    from charlstm.sweep.workers import run_sweep
    from charlstm.tracking import MLflowTracker

    # (the seed baseline's E=48, H=96 would be over max_params here: a tiny stand-in is trial 0)
    d = tiny_study_dict(corpus, max_params=6000, enqueue_baseline=False)
    d["space"]["data.seq_length"]["choices"] = [8, 16, 100_000]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    spec = load_sweep(path)
    study, uri = setup_study(spec, None, None, 0, None)
    study.enqueue_trial({"model.embedding_dim": 8, "model.hidden_size": 16, "data.seq_length": 16},
                        user_attrs={"baseline": True})
    study.enqueue_trial({"data.seq_length": 100_000})  # FAIL: longer than the corpus
    study.enqueue_trial({"model.embedding_dim": 16, "model.hidden_size": 32, "data.seq_length": 8})  # PRUNED
    study.enqueue_trial({"model.embedding_dim": 8, "model.hidden_size": 24, "data.seq_length": 16})
    run_sweep(spec, n_trials=4, quiet=True)  # the baseline and the three queued above

    # a trial another worker is running: asked, its child run open with two evaluations so far
    params = {"model.embedding_dim": 6, "model.hidden_size": 12, "data.seq_length": 8}
    study.enqueue_trial(params)
    trial = study.ask()
    for key, dist in spec.space.items():
        dist.suggest(trial, key)
    cfg = trial_config(spec, params)
    counts = count_params(40, 6, 12)
    tags = {"charlstm.study": spec.study, "charlstm.trial": str(trial.number)}
    tracker = MLflowTracker(from_dict({"tracking": {"uri": uri}}).tracking, run_name=f"tiny-trial-{trial.number:04d}",
                            parent_run_id=study.user_attrs["mlflow_parent_run_id"], tags=tags)
    trial.set_user_attr("mlflow_run_id", tracker.start())
    trial.set_user_attr("params_total", counts["total"])
    tracker.log_config(cfg)
    tracker.log_param_counts(counts)
    tracker.set_tags({"state": "RUNNING"})
    for i, val in enumerate((3.9, 3.6)):
        tracker.log_metrics({"val_loss": val, "val_bpc": val / 0.6931, "chars_seen": 512 * (i + 1)}, 10 * (i + 1))
    tracker.flush()
    return study, uri


def unavailable(why: str):
    """Skip a test whose service or privilege is missing, with the reason; fail it under CI=true
    (.ci/run provides everything the tests need)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, but {why}")
    pytest.skip(why)


def postgres_admin():
    """An autocommit connection to the PostgreSQL server on 127.0.0.1:5432 (trust auth, user
    postgres), for a test that creates and drops its own databases."""
    import psycopg

    try:
        return psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3,
                               autocommit=True)
    except Exception as e:
        unavailable(f"no PostgreSQL on 127.0.0.1:5432 ({str(e).strip().splitlines()[0]})")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cmd: list[str], url: str, timeout: float = 90, probe: str = "/health", env: dict | None = None):
    """Start ``cmd`` in its own process group, wait until ``url + probe`` answers, yield; stop
    the whole group at the end, whatever happened (a test starts nothing it cannot stop)."""
    import signal
    import subprocess
    import time
    import urllib.request

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env or cli_env())
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url + probe, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"{cmd[0]} did not start on {url}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_make(*targets: str, **variables: str):
    """The checkout's Makefile run as a user would, on this test's Python environment (its
    install stamp taken as up to date); fails the test with make's output if make fails."""
    import subprocess
    import sys

    venv = Path(sys.executable).parent.parent
    cmd = ["make", "-C", str(REPO), "-o", str(venv / ".installed-stamp"), f"VENV={venv}",
           *(f"{k}={v}" for k, v in variables.items()), *targets]
    env = cli_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # a study stores its own; a test's leftover must not win
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


# -- a real browser: Debian's headless chromium through chromedriver ---------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]


@pytest.fixture
def browser():
    """Skips where chromium or chromedriver is missing, with the reason; never under CI=true
    (.ci/run installs both)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        unavailable(f"no {', '.join(missing)}: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(predicate, timeout: float = 60, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()

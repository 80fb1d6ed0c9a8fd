"""charlstm's results in the clients researchers already use, with real servers on free loopback
ports (stopped by the test): the registered best loads in ``mlflow.pyfunc`` and answers
``mlflow models serve``; optuna-dashboard names the metric; the report links each trial to its
MLflow run page, which a real browser opens. And the wheel installs and runs from anywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from charlstm.cli import main
from charlstm.names import GEN_LENGTH
from tests.conftest import REPO, cli_env, free_port, running_server, tiny_study_dict, wait_for

BIN = Path(sys.executable).parent  # mlflow, optuna-dashboard and uvicorn live beside python


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def get_json(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def tracking_server(tmp_path):
    """An MLflow tracking server (SQLite behind it, artifacts proxied) on a free port."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(cmd, f"http://127.0.0.1:{port}") as url:
        yield url


@pytest.mark.slow
def test_the_best_model_is_an_mlflow_model_and_the_study_speaks_the_uis_language(
        corpus, tmp_path, tracking_server, browser, monkeypatch, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from charlstm.analysis import load_study

    url = tracking_server
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(corpus)))
    assert main(["sweep", str(path), "--tracking-uri", url]) == 0
    study = load_study("tiny")
    best = study.best_trial
    run_id = best.user_attrs["mlflow_run_id"]

    # the registered version: an MLflow Model with a signature, tags and a description
    client = MlflowClient(url)
    version = client.get_model_version_by_alias("charlstm-tiny", "best")
    assert version.run_id == run_id and version.source.endswith("/model")
    assert {"study": "tiny", "trial": str(best.number)}.items() <= version.tags.items()
    assert float(version.tags["val_bpc"]) == pytest.approx(best.value, rel=1e-5)
    assert int(version.tags["params_total"]) == best.user_attrs["params_total"]
    assert len(version.tags["corpus_sha256"]) == 64
    assert version.description.startswith(f"charlstm study tiny: trial {best.number}, ")

    # 1. mlflow.pyfunc, as anyone would load it
    mlflow.set_tracking_uri(url)
    model = mlflow.pyfunc.load_model("models:/charlstm-tiny@best")
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == ["prime", "length", "temperature", "top_k", "seed"]
    (text,) = model.predict(pd.DataFrame({"prime": ["ROMEO:"], "length": [30], "seed": [7]}))
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 30
    two = model.predict(pd.DataFrame({"prime": ["JULIET:", "O"]}))  # every option defaulted
    assert [len(t) for t in two] == [len("JULIET:") + GEN_LENGTH, 1 + GEN_LENGTH]  # (the default length)

    # charlstm generate loads the same model: same seed, the same default temperature, same text
    capsys.readouterr()
    assert main(["generate", "models:/charlstm-tiny@best", "--tracking-uri", url, "--prime", "ROMEO:",
                 "--length", "30", "--seed", "7"]) == 0
    assert capsys.readouterr().out.strip() == text.strip()

    # 2. mlflow models serve answers /invocations
    port = free_port()
    env = cli_env(MLFLOW_TRACKING_URI=url, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    serve = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/charlstm-tiny@best",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with running_server(serve, f"http://127.0.0.1:{port}", probe="/ping", env=env) as scoring:
        answer = post_json(f"{scoring}/invocations", {"dataframe_records": [{"prime": "ROMEO:", "length": 25}]})
    (served,) = answer["predictions"]
    assert served.startswith("ROMEO:") and len(served) == len("ROMEO:") + 25

    # 3. optuna-dashboard calls the objective by its name
    port = free_port()
    dashboard = [str(BIN / "optuna-dashboard"), str(tmp_path / "studies" / "journal.log"),
                 "--host", "127.0.0.1", "--port", str(port)]
    with running_server(dashboard, f"http://127.0.0.1:{port}", probe="/api/studies") as board:
        (summary,) = get_json(f"{board}/api/studies")["study_summaries"]
        detail = get_json(f"{board}/api/studies/{summary['study_id']}")
    assert detail["objective_names"] == ["val_bpc"]

    # 4. every trial knows its run's page; the report links to it and the browser follows
    for t in study.trials:
        assert t.user_attrs["mlflow_run_url"].startswith(f"{url}/#/experiments/")
        assert t.user_attrs["mlflow_run_url"].endswith(f"/runs/{t.user_attrs['mlflow_run_id']}")
    assert main(["report", "tiny", "--no-samples", "--no-log"]) == 0
    report = tmp_path / "analysis" / "reports" / "tiny" / "report.html"
    assert f"]({best.user_attrs['mlflow_run_url']})" in report.with_suffix(".md").read_text()
    browser.get(report.as_uri())
    link = browser.find_element("css selector", f"a[href='{best.user_attrs['mlflow_run_url']}']")
    assert link.text == str(best.number)
    link.click()
    body = lambda: browser.find_element("tag name", "body").text  # noqa: E731
    assert wait_for(lambda: f"tiny-trial-{best.number:04d}" in body()), body()[:2000]
    assert browser.save_screenshot(str(tmp_path / "run-page.png"))


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_an_empty_directory(tmp_path):
    """``pip install`` of the built wheel (no editable checkout behind it): the version, a
    shipped experiment and a shipped study by name, from a directory with nothing in it."""
    src = tmp_path / "src"  # a copy, so that the build writes nothing into the checkout
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, src / name)
    for folder in ("charlstm", "experiments", "sweeps", "analysis"):
        shutil.copytree(REPO / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "out", "reports", "*.ipynb"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("charlstm-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = cli_env(PYTHONPATH=str(site))

    def charlstm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "charlstm", *args], cwd=empty, env=env,
                              capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import charlstm; print(charlstm.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where  # the wheel's copy, not the checkout
    version = charlstm("--version")
    assert version.returncode == 0 and version.stdout.strip() == "charlstm 0.1.0"
    dry = charlstm("train", "baseline", "--dry-run", "-q")
    assert dry.returncode == 0, dry.stderr[-2000:]
    helped = charlstm("sweep", "--help")
    assert helped.returncode == 0 and "shipped" in helped.stdout
    assert (site / "charlstm" / "sweeps" / "default.yaml").is_file()
    assert (site / "charlstm" / "notebooks" / "01-compare-runs.py").is_file()
    assert (site / "charlstm" / "mlflow_model.py").is_file()

"""The real command line, end to end, and its answers to bad input."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from charlstm.cli import main
from tests.conftest import EXPERIMENTS, cli_env

SMOKE = str(EXPERIMENTS / "smoke.yaml")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "charlstm", *args],
        capture_output=True, text=True, timeout=timeout, env=cli_env(),
    )


def runs(status: str | None = None):
    if not Path("mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{Path('mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("charlstm")
    if exp is None:
        return []
    found = client.search_runs([exp.experiment_id])
    return [r for r in found if status is None or r.info.status == status]


def running_in_db() -> bool:
    """Poll the database read-only: an MlflowClient here could race the child's table set-up."""
    if not Path("mlflow.db").exists():
        return False
    try:
        with sqlite3.connect("mlflow.db", timeout=5) as db:
            return bool(db.execute("SELECT 1 FROM runs WHERE status = 'RUNNING'").fetchall())
    except sqlite3.Error:
        return False


def wait_for(predicate, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


# --------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_train_then_generate_from_the_run_id(corpus):
    done = run_cli("train", SMOKE, "--set", f"data.corpus={corpus}", "-q")
    assert done.returncode == 0, done.stderr
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert f"mlflow run: {run.info.run_id}" in done.stdout
    client = MlflowClient(f"sqlite:///{Path('mlflow.db').resolve()}")
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) >= 2
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2
    assert int(run.data.params["params.total"]) > 0
    assert run.inputs.dataset_inputs[0].dataset.digest
    assert client.list_artifacts(run.info.run_id, "checkpoints")

    out = run_cli("generate", run.info.run_id, "--prime", "ROMEO:", "--length", "60",
                  "--num-samples", "2", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ROMEO:") == 2 and "--- sample 2 ---" in out.stdout
    again = run_cli("generate", run.info.run_id, "--prime", "ROMEO:", "--length", "60",
                    "--num-samples", "2", "--seed", "3")
    assert again.stdout == out.stdout


@pytest.mark.slow
def test_sigterm_ends_killed_and_resume_finishes_the_same_run(corpus):
    args = ["train", SMOKE, "--set", f"data.corpus={corpus}", "--set", "train.max_steps=200000",
            "--set", "train.eval_every_chars=2048", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "charlstm", *args], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: list(Path("checkpoints").glob("smoke/*/last.pt")))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    (line,) = err.strip().splitlines()  # one line: what was saved and how to go on
    assert "interrupted by SIGTERM at step" in line and "last.pt saved" in line and "--resume" in line
    (run,) = runs()
    assert run.info.status == "KILLED"
    resumed = run_cli("train", SMOKE, "--set", f"data.corpus={corpus}",
                      "--set", "train.max_steps=300", "--resume", "-q")
    # the budget was raised to 200000 for the first run; a resume with another budget is allowed
    assert resumed.returncode == 0, resumed.stderr
    (run,) = runs()
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_sigkilled_run_is_marked_killed_on_next_start(corpus):
    args = ["train", SMOKE, "--set", f"data.corpus={corpus}", "--set", "train.max_steps=200000", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "charlstm", *args], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(running_in_db)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    (orphan,) = runs("RUNNING")
    done = run_cli("train", SMOKE, "--set", f"data.corpus={corpus}", "-q")
    assert done.returncode == 0, done.stderr
    states = {r.info.run_id: r.info.status for r in runs()}
    assert states[orphan.info.run_id] == "KILLED"
    assert sorted(states.values()) == ["FINISHED", "KILLED"]


def test_help_and_dry_run(corpus, capsys):
    for cmd in (["--help"], ["train", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
    assert "--set" in capsys.readouterr().out
    assert main(["train", SMOKE, "--dry-run", "--dry-run-dir", "dry", "--set",
                 f"data.corpus={corpus}", "-q"]) == 0
    assert "after 3 steps" in capsys.readouterr().out
    assert not Path("mlflow.db").exists()  # a dry run tracks nothing


# --------------------------------------------------------------------------------------------
# Bad input: one clear line on stderr, exit code 2, no traceback, nothing stored damaged.


def fails_cleanly(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("charlstm: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_malformed_yaml(capsys, tmp_path):
    cfg = write(tmp_path / "bad.yaml", "model:\n  hidden_size: [96\n")
    fails_cleanly(capsys, ["train", cfg], "malformed YAML", "line")


def test_unknown_key(capsys, tmp_path):
    cfg = write(tmp_path / "bad.yaml", "model:\n  hiden_size: 96\n")
    fails_cleanly(capsys, ["train", cfg], "model.hiden_size")


def test_wrong_type(capsys, tmp_path):
    cfg = write(tmp_path / "bad.yaml", "data:\n  batch_size: lots\n")
    fails_cleanly(capsys, ["train", cfg], "data.batch_size", "integer")


@pytest.mark.parametrize("value", ["0", "-4"])
def test_zero_or_negative_size(capsys, value):
    fails_cleanly(capsys, ["train", SMOKE, "--set", f"model.hidden_size={value}"],
                  "model.hidden_size must be > 0")


def test_unknown_set_key(capsys):
    fails_cleanly(capsys, ["train", SMOKE, "--set", "model.hidden=3"], "model.hidden")


def test_missing_corpus(capsys):
    fails_cleanly(capsys, ["train", SMOKE, "--set", "data.corpus=nope.txt", "-q"], "nope.txt",
                  "no such file")
    assert not runs()  # no run was started for it


def test_empty_corpus(capsys, tmp_path):
    path = write(tmp_path / "empty.txt", "")
    fails_cleanly(capsys, ["train", SMOKE, "--set", f"data.corpus={path}", "-q"], "empty")
    assert not runs()


def test_binary_corpus(capsys, tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(256)) * 100)
    fails_cleanly(capsys, ["train", SMOKE, "--set", f"data.corpus={path}", "-q"], "binary")


def test_corpus_shorter_than_one_batch(capsys, tmp_path):
    path = write(tmp_path / "short.txt", "To be, or not to be.\n")
    fails_cleanly(capsys, ["train", SMOKE, "--set", f"data.corpus={path}", "-q"], "too short")
    assert not runs()


def test_checkpoint_from_another_vocab(capsys, corpus, tmp_path):
    assert main(["train", SMOKE, "--set", f"data.corpus={corpus}", "-q"]) == 0
    capsys.readouterr()
    (ckpt,) = Path("checkpoints").glob("smoke/*/last.pt")
    before, (run_before,) = ckpt.read_bytes(), runs()
    other = write(tmp_path / "other.txt", "xyz 0123456789 <>{}|~\n" * 400)
    fails_cleanly(capsys, ["train", SMOKE, "--set", f"data.corpus={other}", "--resume", "-q"],
                  "another vocab")
    assert ckpt.read_bytes() == before
    (run_after,) = runs()
    assert run_after.info.status == run_before.info.status == "FINISHED"


def test_corrupted_checkpoint(capsys, tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    fails_cleanly(capsys, ["generate", str(bad)], "corrupt")
    fails_cleanly(capsys, ["train", SMOKE, "--resume", str(bad)], "corrupt")
    assert bad.read_bytes() == b"\x00garbage" * 100


def test_generate_prime_outside_vocab(capsys, corpus):
    assert main(["train", SMOKE, "--set", f"data.corpus={corpus}", "-q"]) == 0
    capsys.readouterr()
    (ckpt,) = Path("checkpoints").glob("smoke/*/best.pt")
    fails_cleanly(capsys, ["generate", str(ckpt), "--prime", "ΩMEGA"], "'Ω'")


def test_unknown_source(capsys):
    fails_cleanly(capsys, ["generate", "not-a-thing"], "not-a-thing")


def test_version(capsys):
    from charlstm import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"charlstm {__version__}"


def test_notebooks_without_the_notebook_tools_say_what_to_install(capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "charlstm.analysis.notebooks", raising=False)
    monkeypatch.setitem(sys.modules, "jupytext", None)  # as if it were not installed
    fails_cleanly(capsys, ["notebooks", "default"], "needs jupytext", "pip install 'charlstm[notebooks]'")

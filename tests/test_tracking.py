"""MLflow tracking: what a run records, how it ends, and stale-run recovery."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from charlstm.config import load_config
from charlstm.errors import TrackingError, redact
from charlstm.names import TAG_HOST, TAG_OWNER
from charlstm.tracking import MLflowTracker, client_for, git_commit
from charlstm.train import train
from tests.conftest import EXPERIMENTS, REPO, smoke_overrides


@pytest.fixture
def cfg(corpus):
    return load_config(EXPERIMENTS / "smoke.yaml", smoke_overrides(corpus))


def test_a_tracked_run_records_everything(cfg):
    with MLflowTracker(cfg.tracking, run_name="smoke") as tracker:
        result = train(cfg, tracker, progress=False)
    client = MlflowClient()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.hidden_size"] == "16" and params["data.seq_length"] == "16"
    assert int(params["params.total"]) == result.param_counts["total"]
    assert {"params.embedding", "params.lstm", "params.fc"} <= set(params)
    val = client.get_metric_history(tracker.run_id, "val_bpc")
    # MLflow's x-axis counts characters seen: curves of any batch shape line up by default
    assert [m.step for m in val] == [e["chars_seen"] for e in result.evals]
    assert not [k for k in run.data.metrics if k.startswith("params")]  # counts are params only
    train_loss = client.get_metric_history(tracker.run_id, "train_loss")
    assert len(train_loss) == result.step // cfg.tracking.log_every_steps
    assert client.get_metric_history(tracker.run_id, "chars_seen")[-1].value == result.chars_seen
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.digest == cfg_digest(cfg) and ds.dataset.name == "corpus"
    arts = {a.path for a in client.list_artifacts(tracker.run_id, "checkpoints")}
    assert arts == {"checkpoints/best.pt", "checkpoints/last.pt"}
    model = {a.path for a in client.list_artifacts(tracker.run_id, "model")}
    assert {"model/MLmodel", "model/requirements.txt", "model/artifacts", "model/code"} <= model
    samples = client.list_artifacts(tracker.run_id, "samples")
    assert len(samples) == len(result.evals)
    assert "config.yaml" in {a.path for a in client.list_artifacts(tracker.run_id)}
    commit = git_commit()
    if commit is not None:  # a checkout: the tag names the code that ran
        assert run.data.tags["mlflow.source.git.commit"] == commit


def cfg_digest(cfg):
    from charlstm.data import load_corpus

    return load_corpus(cfg.data.corpus).sha256[:32]


def test_git_commit_is_the_package_checkout():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout with commits")
    assert git_commit() == head.stdout.strip()


def test_failure_ends_failed_with_reason(cfg):
    with pytest.raises(RuntimeError), MLflowTracker(cfg.tracking) as tracker:
        tracker.start()
        raise RuntimeError("boom")
    run = MlflowClient().get_run(tracker.run_id)
    assert run.info.status == "FAILED" and "boom" in run.data.tags["error"]


def test_interrupt_ends_killed(cfg):
    with pytest.raises(KeyboardInterrupt), MLflowTracker(cfg.tracking) as tracker:
        tracker.start()
        raise KeyboardInterrupt
    assert MlflowClient().get_run(tracker.run_id).info.status == "KILLED"


def test_stale_run_of_a_dead_process_is_marked_killed(cfg):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = MLflowTracker(cfg.tracking).start()  # ours: this process is alive
    tracker = MLflowTracker(cfg.tracking)
    tracker.tags = {TAG_OWNER: f"{socket.gethostname()}:{dead.pid}"}
    stale = tracker.start()  # looks like a run whose process was SIGKILLed
    client = MlflowClient()
    assert client.get_run(stale).info.status == "RUNNING"
    MLflowTracker(cfg.tracking)  # the next start looks for stale runs
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(alive).data.tags[TAG_HOST]


def test_many_metrics_are_batched_and_all_kept(cfg):
    with MLflowTracker(cfg.tracking) as tracker:
        for step in range(2500):
            tracker.log_metrics({"a": step, "b": -step}, step)
    history = MlflowClient().get_metric_history(tracker.run_id, "b")
    assert len(history) == 2500 and history[-1].value == -2499


def test_unreachable_server_fails_fast():
    with pytest.raises(TrackingError, match="unreachable"):
        client_for("http://127.0.0.1:9")


def test_file_store_is_refused_with_a_reason():
    with pytest.raises(TrackingError, match="file store"):
        client_for("file:///tmp/mlruns")


def test_password_never_printed():
    assert redact("postgresql://user:s3cret@db:5432/x") == "postgresql://user:***@db:5432/x"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"



def _log_together(trackers, corpus, vocab) -> list[str]:
    """Every tracker logs ``corpus`` from its own thread, released at one instant; the errors."""
    import threading

    barrier, errors = threading.Barrier(len(trackers)), []

    def log(tracker):
        barrier.wait()
        try:
            tracker.log_dataset(corpus, vocab, 900, 100)
        except Exception as e:  # collected: a thread's exception would not fail the test
            errors.append(repr(e)[:300])

    threads = [threading.Thread(target=log, args=(t,)) for t in trackers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_runs_logging_one_new_corpus_at_once_all_link_it(cfg, tmp_path):
    # MLflow's store looks a dataset up and then inserts it: runs starting together on a new
    # corpus race for the insert (13 of 80 plain log_inputs calls failed here, so a sweep's
    # trial failed). Every tracker must come through, linked to the one dataset.
    from charlstm.data import Vocab, load_corpus

    client = client_for(cfg.tracking.uri)
    for round_ in range(8):
        path = tmp_path / f"corpus-{round_}.txt"
        path.write_text(f"round {round_}: " + "to be or not to be\n" * 50, encoding="utf-8")
        corpus = load_corpus(str(path))
        trackers = [MLflowTracker(cfg.tracking, run_name=f"r{round_}-{i}") for i in range(4)]
        for t in trackers:
            t.start()
        assert _log_together(trackers, corpus, Vocab.from_text(corpus.text)) == []
        for t in trackers:
            (ds,) = client.get_run(t.run_id).inputs.dataset_inputs
            assert ds.dataset.digest == corpus.sha256[:32]
            t.end()


def test_a_travelling_run_sends_its_checkpoint_once_travel_seconds_have_passed(cfg):
    """A trial shorter than tracking.travel_seconds sends no copy (the default 30 s: none of
    these few steps); with 0, every evaluation's last.pt goes to resume/, the run's
    travel_seconds metric says what the sends cost it, and a run that finishes deletes its copy
    (its checkpoints/ hold its last) while one that stops keeps it for its retry."""
    from dataclasses import replace

    client = client_for(cfg.tracking.uri)
    with MLflowTracker(cfg.tracking, run_name="short", travel=True) as short:
        train(cfg, short, progress=False)
    assert client.list_artifacts(short.run_id, "resume") == []
    assert client.get_metric_history(short.run_id, "travel_seconds") == []

    every = replace(cfg.tracking, travel_seconds=0.0)
    with MLflowTracker(every, run_name="finished", travel=True) as finished:
        result = train(cfg, finished, progress=False)
    cost = client.get_metric_history(finished.run_id, "travel_seconds")
    assert len(cost) == len(result.evals) and cost[0].value > 0 and cost == sorted(cost, key=lambda m: m.value)
    assert client.list_artifacts(finished.run_id, "resume") == []

    def stop(record):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt), MLflowTracker(every, run_name="stopped", travel=True) as stopped:
        train(cfg, stopped, on_eval=stop, progress=False)
    assert [a.path for a in client.list_artifacts(stopped.run_id, "resume")] == ["resume/last.pt"]
    assert client.get_run(stopped.run_id).info.status == "KILLED"

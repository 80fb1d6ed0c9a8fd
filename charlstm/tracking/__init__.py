"""Experiment tracking: MLflow runs and stores. Every MLflow write goes through here, but for a
study's parent run (``charlstm.sweep.runs``, built from these helpers); the read side
(``charlstm.analysis``, ``report``, ``status``) only reads.

::

    store.py      the URI, a client on it, experiments, tags, ending runs, runs whose process died
    tracker.py    MLflowTracker: one run as charlstm.train.Tracker
    artifacts.py  a run's files: checkpoints back, the travelled copy, sizes, deletion, reports
    models.py     a run's MLflow Model, the registered best, loading a model back

Every function takes the tracking URI first, then the run it is about.
"""

from charlstm.tracking.artifacts import (
    TRAVELLED,
    artifact_bytes,
    delete_artifacts,
    download_checkpoint,
    fetch_travelled,
    log_report,
    retire_travelled,
)
from charlstm.tracking.models import (
    has_model,
    load_model,
    load_registered,
    log_model,
    register_best,
    registered_runs,
)
from charlstm.tracking.store import (
    RUN_ID,
    client_for,
    context_tags,
    end_run,
    forget_error,
    get_or_create_experiment,
    git_commit,
    mark_stale_runs,
    orphaned_runs,
    owner_tags,
    resolve_uri,
    run_url,
    set_tags,
    store_errors,
)
from charlstm.tracking.tracker import FLUSH_EVERY, FLUSH_SECONDS, MLflowTracker

__all__ = [
    "FLUSH_EVERY", "FLUSH_SECONDS", "RUN_ID", "TRAVELLED", "MLflowTracker", "artifact_bytes", "client_for", "context_tags",
    "delete_artifacts", "download_checkpoint", "end_run", "fetch_travelled", "forget_error",
    "get_or_create_experiment", "git_commit", "has_model", "load_model", "load_registered", "log_model", "log_report",
    "mark_stale_runs", "orphaned_runs", "owner_tags", "register_best", "registered_runs", "resolve_uri", "retire_travelled", "run_url",
    "set_tags", "store_errors",
]

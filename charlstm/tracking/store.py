"""The MLflow store: its URI, a client on it (one line when it cannot be used), experiments, and
what is written about a run from outside it: tags, its end, runs whose process died.

Every function here and in the rest of ``charlstm.tracking`` takes the tracking URI first
(``None``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here), then the run it is
about; the client behind a URI is made once per process (``client_for``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import torch
from filelock import FileLock
from mlflow.entities import RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from charlstm import names, owner
from charlstm.config import Config
from charlstm.device import resolve_device
from charlstm.errors import TrackingError, first_line, redact

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_uri(uri: str | None = None) -> str:
    """Config > $MLFLOW_TRACKING_URI > ``sqlite:///mlflow.db`` in the working directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(names.DEFAULT_DB).resolve()}"


_clients: dict[str, MlflowClient] = {}  # (a store is opened, and checked, once a process)


def client_for(uri: str | None = None) -> MlflowClient:
    """The MlflowClient on the resolved URI (MLflow's own API, for reading); a store that cannot
    be used is one TrackingError line, found in seconds rather than after MLflow's retries."""
    resolved = resolve_uri(uri)
    mlflow.set_tracking_uri(resolved)  # (MLflow's fluent API and registry read the same store)
    if resolved in _clients:  # (once open, a server that goes for a while is MLflow's retries' to ride out)
        return _clients[resolved]
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial tables" per run
    if resolved.startswith("file:") or "://" not in resolved and not resolved.startswith("sqlite"):
        raise TrackingError(f"tracking URI {redact(resolved)}: MLflow's file store is retired; use "
                            "sqlite:///PATH or an http(s):// tracking server")
    if resolved.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(resolved.rstrip("/") + "/health", timeout=5).close()
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(f"tracking server {redact(resolved)} is unreachable: {getattr(e, 'reason', e)}") from None
    try:
        with _store_lock(resolved):
            client = MlflowClient(tracking_uri=resolved)
            client.search_experiments(max_results=1)  # a corrupt database fails here, as one line
    except Exception as e:
        raise TrackingError(f"tracking store {redact(resolved)} cannot be used: {first_line(e)} (move it aside, "
                            "or point tracking.uri / MLFLOW_TRACKING_URI elsewhere)") from None
    _clients[resolved] = client
    return client


@contextmanager
def _store_lock(uri: str):
    """Processes that open a new SQLite store at the same instant would race in MLflow's table
    set-up (alembic): they take turns, through a lock file beside the database."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    with FileLock(str(path.with_name(path.name + ".lock"))):
        yield


@contextmanager
def store_errors(what: str):
    """MLflow store failures (a full disk, a broken database, a server gone) as one line."""
    try:
        yield
    except (OSError, MlflowException, SQLAlchemyError) as e:
        reason = e.strerror.lower() if isinstance(e, OSError) and e.strerror else first_line(e)
        raise TrackingError(f"MLflow: {what} failed: {reason}") from None


def get_or_create_experiment(uri: str | None, name: str) -> str:
    """The experiment's id; a new one keeps artifacts under ./mlartifacts for a SQLite store."""
    client = client_for(uri)
    try:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if client.tracking_uri.startswith("sqlite:"):
            location = Path(names.DEFAULT_ARTIFACTS).resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it an instant ago: use theirs
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id
    except Exception as e:  # unreachable server, unwritable database, ...
        raise TrackingError(
            f"tracking store {redact(client.tracking_uri)}: cannot open experiment {name!r}: {first_line(e)}"
        ) from None


@functools.cache
def git_commit() -> str | None:
    """The commit of the charlstm checkout that is running (not of the working directory)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True, cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def owner_tags() -> dict[str, str]:
    """The tags that say which process runs a run, and the code it runs."""
    tags = {names.TAG_HOST: socket.gethostname(), names.TAG_OWNER: owner.this_process()}
    commit = git_commit()
    if commit:
        tags[names.TAG_COMMIT] = commit
    return tags


def context_tags(cfg: Config) -> dict[str, str]:
    """What a run ran on besides its config, corpus and commit: torch and the device (what
    ``charlstm reproduce`` compares)."""
    return {names.TAG_TORCH: torch.__version__, names.TAG_DEVICE: str(resolve_device(cfg.train.device))}


def set_tags(uri: str | None, run_id: str, tags: dict[str, str]) -> None:
    """Several tags in one write."""
    client_for(uri).log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def forget_error(uri: str | None, run_id: str) -> None:
    """Drop the ``error`` tag of a run that stopped once (interrupted, paused) and goes on now."""
    client = client_for(uri)
    if names.TAG_ERROR in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, names.TAG_ERROR)


def end_run(uri: str | None, run_id: str, status: int, tags: dict[str, str] | None = None) -> None:
    """End a run with ``status`` (a ``RunStatus``) and ``tags``, possibly from outside its
    process (a dead worker's trial)."""
    if tags:
        set_tags(uri, run_id, tags)
    client_for(uri).set_terminated(run_id, status=RunStatus.to_string(status))


def orphaned_runs(uri: str | None, experiment_id: str) -> list:
    """Runs left RUNNING by a process of this host that no longer exists (SIGKILL, power loss)."""
    runs = client_for(uri).search_runs(
        [experiment_id],
        filter_string=f"attributes.status = '{RunStatus.to_string(RunStatus.RUNNING)}' "
                      f"and tags.`{names.TAG_HOST}` = '{socket.gethostname()}'",
        max_results=5000,
    )
    return [r for r in runs if r.data.tags.get(names.TAG_OWNER) and not owner.alive(r.data.tags[names.TAG_OWNER])]


def mark_stale_runs(uri: str | None, experiment_id: str) -> list[str]:
    """Orphaned runs cannot end themselves: mark them KILLED. A study's runs (its parent and
    its trials) are left to the study (``charlstm sweep`` / ``doctor``), which ends each with
    its Optuna trial so that the two never disagree. Returns the ids marked."""
    stale = []
    for run in orphaned_runs(uri, experiment_id):
        if names.TAG_STUDY in run.data.tags:
            continue
        end_run(uri, run.info.run_id, RunStatus.KILLED,
                {names.TAG_ERROR: "its process was gone (killed?); marked KILLED later"})
        stale.append(run.info.run_id)
    return stale


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, for a tracking server (a local store has no URL)."""
    if not uri.startswith(("http://", "https://")):
        return None
    parts = urlsplit(uri)  # never a user, password, token or query in a link others will see
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

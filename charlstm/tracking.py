"""Experiment tracking: MLflow runs and stores. Every MLflow write goes through here, but for a
study's parent run (``charlstm.sweep.runs``, built from the helpers below); the read side
(``charlstm.analysis``) only searches.

``MLflowTracker`` implements ``charlstm.train.Tracker`` for one MLflow run: params (the flat
config), parameter counts, step metrics (buffered and written in batches: a synchronous
``log_metric`` would cost a sizeable share of a small model's step), samples, the corpus as a
dataset input, checkpoints as artifacts, the best checkpoint as an MLflow Model
(``charlstm.serving``), and which process and commit ran it. Metric steps are characters seen.
Around it: opening a store (one line when it cannot be used), ending runs from outside their
process, registering a run's model, and loading a model from a run or a registered version.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import torch
import yaml
from filelock import FileLock
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from charlstm import checkpoint, machine, names, owner, serving
from charlstm.config import Config, TrackingConfig, flatten, to_dict
from charlstm.data import Corpus, Vocab
from charlstm.device import resolve_device
from charlstm.errors import CharlstmError, TrackingError, first_line, redact
from charlstm.model import CharacterLSTM
from charlstm.train import Tracker

# (aliases of names' constants, for modules that still import them from here)
DEFAULT_DB = names.DEFAULT_DB
DEFAULT_ARTIFACTS = names.DEFAULT_ARTIFACTS
FLUSH_EVERY = 1000  # buffered metric values before a write (MLflow's log_batch limit)
FLUSH_SECONDS = 10.0  # and at least this often, with the process's load: what a live view reads
TRAVEL_PATH = names.ARTIFACT_TRAVEL  # where: apart from checkpoints/, which the finished run uploads
UNSENT_MAX = 32  # artifacts a run keeps waiting for a store that cannot take them (the oldest samples go first)
TAG_UNSENT = names.TAG_UNSENT  # what a run ended without sending (`charlstm doctor` lists it)
# who runs a run: the host (searchable) and the owner process (charlstm.owner: host:pid:start)
TAG_HOST, TAG_OWNER = names.TAG_HOST, names.TAG_OWNER
TAG_STUDY, TAG_TRIAL = names.TAG_STUDY, names.TAG_TRIAL  # a study's runs (see mark_stale_runs)
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_uri(uri: str | None = None) -> str:
    """Config > $MLFLOW_TRACKING_URI > ``sqlite:///mlflow.db`` in the working directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(names.DEFAULT_DB).resolve()}"


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


def client_for(uri: str | None = None):
    """An MlflowClient on the resolved URI; unreachable stores become one TrackingError line."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial tables" per run
    resolved = resolve_uri(uri)
    if resolved.startswith("file:") or "://" not in resolved and not resolved.startswith("sqlite"):
        raise TrackingError(
            f"tracking URI {redact(resolved)}: MLflow's file store is retired; use sqlite:///PATH "
            "or an http(s):// tracking server"
        )
    if resolved.startswith(("http://", "https://")):  # fail in seconds, not after retries
        try:
            urllib.request.urlopen(resolved.rstrip("/") + "/health", timeout=5).close()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"tracking server {redact(resolved)} is unreachable: {reason}") from None
    mlflow.set_tracking_uri(resolved)
    try:
        with _store_lock(resolved):
            client = MlflowClient(tracking_uri=resolved)
            if resolved not in _opened:  # a corrupt database fails here, as one line
                client.search_experiments(max_results=1)
                _opened.add(resolved)
    except Exception as e:
        raise TrackingError(
            f"tracking store {redact(resolved)} cannot be used: {first_line(e)} (move it aside, "
            "or point tracking.uri / MLFLOW_TRACKING_URI elsewhere)"
        ) from None
    return client


_opened: set[str] = set()  # stores this process has opened and checked once


@contextmanager
def _store_lock(uri: str):
    """Processes that open a new SQLite store at the same instant would race in MLflow's table
    set-up (alembic): they take turns, through a lock file beside the database."""
    if not uri.startswith("sqlite:///") or uri in _opened:
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    with FileLock(str(path.with_name(path.name + ".lock"))):
        yield


def get_or_create_experiment(client, name: str) -> str:
    """The experiment's id; a new one keeps artifacts under ./mlartifacts for a SQLite store."""
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


def owner_tags() -> dict[str, str]:
    """The tags that say which process runs a run, and the code it runs."""
    tags = {names.TAG_HOST: socket.gethostname(), names.TAG_OWNER: owner.this_process()}
    commit = git_commit()
    if commit:
        tags[names.TAG_COMMIT] = commit
    return tags


TAG_TORCH, TAG_DEVICE = names.TAG_TORCH, names.TAG_DEVICE  # what `charlstm reproduce` compares


def context_tags(cfg: Config) -> dict[str, str]:
    """What a run ran on besides its config, corpus and commit: torch and the device."""
    return {names.TAG_TORCH: torch.__version__, names.TAG_DEVICE: str(resolve_device(cfg.train.device))}


def orphaned_runs(client, experiment_id: str) -> list:
    """Runs left RUNNING by a process of this host that no longer exists (SIGKILL, power loss)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = '{RunStatus.to_string(RunStatus.RUNNING)}' "
                      f"and tags.`{names.TAG_HOST}` = '{socket.gethostname()}'",
        max_results=5000,
    )
    return [r for r in runs if r.data.tags.get(names.TAG_OWNER) and not owner.alive(r.data.tags[names.TAG_OWNER])]


def mark_stale_runs(client, experiment_id: str) -> list[str]:
    """Orphaned runs cannot end themselves: mark them KILLED. A study's runs (its parent and
    its trials) are left to the study (``charlstm sweep`` / ``doctor``), which ends each with
    its Optuna trial so that the two never disagree. Returns the ids marked."""
    stale = []
    for run in orphaned_runs(client, experiment_id):
        if names.TAG_STUDY in run.data.tags:
            continue
        end_run(client, run.info.run_id, RunStatus.to_string(RunStatus.KILLED),
                **{names.TAG_ERROR: "its process was gone (killed?); marked KILLED later"})
        stale.append(run.info.run_id)
    return stale


class MLflowTracker(Tracker):
    """One MLflow run per training run, created on first use (or resumed from a checkpoint).

    Use as a context manager: leaving it normally ends the run FINISHED, on Ctrl-C / SIGTERM
    KILLED, on any other exception FAILED with the reason as the ``error`` tag. A resumed run
    is reopened only when the resumed training first writes to it: a resume that fails before
    that leaves the run as it was. Store failures (a full disk, a broken database) surface as
    one-line ``TrackingError``s.
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        travel: bool = False,
    ):
        self.cfg = cfg
        self.travel = travel  # send mid-run checkpoints to the run's artifacts (a study's trials)
        self._travelled, self._travel_warned, self._travel_cost = time.monotonic(), False, 0.0
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})
        self.client = client_for(cfg.uri)
        self.experiment_id = get_or_create_experiment(self.client, cfg.experiment)
        with store_errors("marking stale runs"):
            mark_stale_runs(self.client, self.experiment_id)
        self.run_id: str | None = None
        self._reopen = False  # a resumed run not yet written to
        self._buffer: list[Any] = []
        self._unsent: list[tuple[str, Any, str]] = []  # (kind, text or path, artifact path): see _send
        self._dropped = 0
        self._last_error = ""
        self._flushed = time.monotonic()
        self._load = machine.ProcessLoad()  # (made where the run trains: its own process)
        # set by a caller that knows better, e.g. a pruned trial: KILLED with state=PRUNED
        self.end_status: str | None = None  # a RunStatus's string
        self.end_tags: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def _own_tags(self) -> dict[str, str]:
        tags = {**owner_tags(), **self.tags}
        if self.parent_run_id:
            tags[names.TAG_PARENT_RUN] = self.parent_run_id
        return tags

    def start(self) -> str:
        """The run's id, creating the run (or reopening a resumed one) on first use."""
        with store_errors("starting the run"):
            if self.run_id is None:
                run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=self._own_tags())
                self.run_id = run.info.run_id
            elif self._reopen:
                self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                set_tags(self.client, self.run_id, self._own_tags())
                forget_error(self.client, self.run_id)
                self._reopen = False
        return self.run_id

    def resume(self, info: dict[str, Any]) -> bool:
        run_id = info.get("run_id")
        if self.run_id is not None:  # already has its own run (a retried trial): just link them
            if run_id:
                self.set_tags({names.TAG_RESUMED_FROM_RUN: run_id})
            return False
        if not run_id:
            return False
        self.run_id, self._reopen = run_id, True
        return True

    def checkpoint_info(self) -> dict[str, Any]:
        return {"run_id": self.start()}

    def end(self, status: str = RunStatus.to_string(RunStatus.FINISHED), **tags: str) -> None:
        if self.run_id is None or self._reopen:  # never (re)opened: nothing to end
            return
        try:
            self.flush()
        finally:
            self._send_waiting()
            unsent = [a for _, _, a in self._unsent] + ([f"{self._dropped} sample(s) dropped"] if self._dropped else [])
            if unsent:  # said once, and kept where doctor looks (the runs' store may work when the artifacts' does not)
                tags = {**tags, names.TAG_UNSENT: ", ".join(unsent)}
                print(f"charlstm: warning: run {self.run_id} ended with {len(unsent)} artifact(s) not sent "
                      f"({', '.join(unsent)}: {self._last_error}); `charlstm doctor --fix` sends them from this machine",
                      file=sys.stderr)
            with store_errors("ending the run"):
                end_run(self.client, self.run_id, status, **tags)

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        tags = dict(self.end_tags)
        if exc_type is None:
            self.end(self.end_status or RunStatus.to_string(RunStatus.FINISHED), **tags)
            return
        if self.end_status is not None:
            status = self.end_status
        elif issubclass(exc_type, KeyboardInterrupt | SystemExit):
            status, tags = RunStatus.to_string(RunStatus.KILLED), {names.TAG_ERROR: f"interrupted {exc}".strip(), **tags}
        else:
            status, tags = RunStatus.to_string(RunStatus.FAILED), {names.TAG_ERROR: f"{exc_type.__name__}: {exc}", **tags}
        try:
            self.end(status, **tags)
        except TrackingError as e:  # keep the original error; the next sweep or doctor ends it
            print(f"charlstm: warning: run {self.run_id} stays RUNNING for now ({e}); the next sweep of "
                  "its study or `charlstm doctor --fix` ends it", file=sys.stderr)

    def set_tags(self, tags: dict[str, str]) -> None:
        run_id = self.start()
        with store_errors("setting tags"):
            set_tags(self.client, run_id, tags)

    # -- what a run logs ---------------------------------------------------------------------
    def log_config(self, cfg: Config) -> None:
        run_id = self.start()
        params = [Param(k, "None" if v is None else str(v)) for k, v in flatten(cfg).items()]
        with store_errors("logging the config"):
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i : i + 100])
            set_tags(self.client, run_id, context_tags(cfg))
        self._send("text", yaml.safe_dump(to_dict(cfg), sort_keys=False), names.ARTIFACT_CONFIG)

    def log_param_counts(self, counts: dict[str, int]) -> None:
        params = [Param(f"params.{k}", str(v)) for k, v in counts.items()]
        run_id = self.start()
        with store_errors("logging parameter counts"):  # params, not metrics: no chart each
            self.client.log_batch(run_id, params=params)

    def log_dataset(self, corpus: Corpus, vocab: Vocab, n_train: int, n_val: int) -> None:
        run_id = self.start()
        tag = InputTag(key="mlflow.data.context", value="training")
        with store_errors("logging the dataset"):
            log_inputs(self.client, run_id, [DatasetInput(dataset_entity(corpus), tags=[tag])])
            set_tags(self.client, run_id, {
                names.TAG_CORPUS: corpus.sha256,
                "data.vocab_size": str(len(vocab)),
                "data.train_chars": str(n_train),
                "data.val_chars": str(n_val),
            })

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())
        if len(self._buffer) >= FLUSH_EVERY or time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush(step)

    def flush(self, step: int | None = None) -> None:
        """Write what is buffered, with the process's load since the last write (at ``step``,
        else the last buffered metric's)."""
        if not self._buffer:
            return
        run_id = self.start()
        ts, at = int(time.time() * 1000), self._buffer[-1].step if step is None else step
        self._buffer.extend(Metric(k, v, ts, at) for k, v in self._load.sample().items())
        self._flushed = time.monotonic()
        buf, self._buffer = self._buffer, []
        with store_errors("logging metrics"):
            for i in range(0, len(buf), FLUSH_EVERY):
                self.client.log_batch(run_id, metrics=buf[i : i + FLUSH_EVERY])
        self._send_waiting()

    # -- artifacts: a store that cannot take one never stops the training -------------------
    def log_text(self, text: str, artifact_file: str) -> None:
        self._send("text", text, artifact_file)

    def log_checkpoint(self, path: Path) -> None:
        if Path(path).is_file():
            self._send("file", Path(path), f"{names.ARTIFACT_CHECKPOINTS}/{Path(path).name}")

    def _send(self, kind: str, what: Any, artifact: str) -> None:
        """Write one artifact now or, where the store cannot take it (full, unreachable past
        MLflow's own retries), keep it waiting: the next write tries again (``_send_waiting``),
        and a run that ends with some unsent says so. At most UNSENT_MAX wait."""
        if self._unsent or not self._write(kind, what, artifact):
            self._unsent.append((kind, what, artifact))
            while len(self._unsent) > UNSENT_MAX:  # (texts are samples: the oldest go first; files stay on disk)
                i = next((i for i, u in enumerate(self._unsent) if u[0] == "text"), 0)
                self._dropped += self._unsent.pop(i)[0] == "text"

    def _send_waiting(self) -> None:
        while self._unsent and self._write(*self._unsent[0]):
            self._unsent.pop(0)

    def _write(self, kind: str, what: Any, artifact: str) -> bool:
        run_id = self.start()
        try:
            with store_errors(f"writing artifact {artifact}"):
                if kind == "text":
                    self.client.log_text(run_id, what, artifact)
                elif kind == "file":
                    self.client.log_artifact(run_id, str(what), artifact.rsplit("/", 1)[0])
                else:  # "model": the MLflow Model of a checkpoint
                    log_model(self.client, run_id, Path(what))
        except Exception as e:  # (a store that cannot take it, whatever it raises: the run goes on)
            self._last_error = str(e) if isinstance(e, TrackingError) else f"writing {artifact} failed: {first_line(e)}"
            return False
        return True

    def checkpoint_saved(self, path: Path) -> None:
        """A travelling run's ``last.pt`` to its artifacts (``resume/last.pt``) once
        ``tracking.travel_seconds`` have passed since its last send (or its start): a retry on any
        machine of the study fetches it, and loses at most that long plus one evaluation
        interval. A store that cannot take it costs the run nothing: one line, and the next
        evaluation tries again."""
        every = self.cfg.travel_seconds
        if not self.travel or every is None or time.monotonic() - self._travelled < every:
            return
        try:
            start = time.perf_counter()
            with store_errors("sending the checkpoint a retry elsewhere would resume from"):
                self.client.log_artifact(self.start(), str(path), names.ARTIFACT_TRAVEL.rsplit("/", 1)[0])
            self._travelled = time.monotonic()
            # what travelling has cost the run so far (its last value: the cost per trial)
            self._travel_cost += time.perf_counter() - start
            self.log_metrics({names.TRAVEL_SECONDS: self._travel_cost}, self._buffer[-1].step if self._buffer else 0)
        except TrackingError as e:
            if not self._travel_warned:  # (once a run: the next evaluation tries again)
                print(f"charlstm: warning: {e}; the run goes on (its checkpoint is on this machine)", file=sys.stderr)
            self._travel_warned = True

    def log_model(self, path: Path) -> None:
        if Path(path).is_file():
            self._send("model", Path(path), names.ARTIFACT_MODEL)


def dataset_entity(corpus: Corpus):
    """The corpus as MLflow's dataset entity, for ``log_inputs``. MLflow builds this entity with
    the private ``Dataset._to_mlflow_entity()`` and has no public constructor for a dataset
    that is only a file and a digest; this is the one place charlstm calls it."""
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local files
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(Path(corpus.path).resolve().as_uri())
    return MetaDataset(source=source, name=corpus.name, digest=corpus.sha256[:32])._to_mlflow_entity()


@contextmanager
def store_errors(what: str):
    """MLflow store failures (a full disk, a broken database, a server gone) as one line."""
    try:
        yield
    except (OSError, MlflowException, SQLAlchemyError) as e:
        reason = e.strerror.lower() if isinstance(e, OSError) and e.strerror else first_line(e)
        raise TrackingError(f"MLflow: {what} failed: {reason}") from None


def set_tags(client, run_id: str, tags: dict[str, str]) -> None:
    """Several tags in one write."""
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def _is_duplicate_key(e: Exception) -> bool:
    text = str(e).lower()  # PostgreSQL, SQLite and MySQL each word it their own way
    return "unique" in text or "duplicate" in text


def log_inputs(client, run_id: str, inputs: list, attempts: int = 5) -> None:
    """``client.log_inputs``, safe when several runs log the same new dataset at once.

    MLflow's store looks a dataset up by (experiment, name, digest) and inserts it when it is
    missing, in two steps: two workers starting trials on one corpus together both miss it and
    the second insert hits the unique key, on PostgreSQL and SQLite alike (it failed one trial
    in three of the scale-out test). The winner's row exists by then, so trying again links
    this run to it.
    """
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, inputs)
            return
        except MlflowException as e:
            if attempt == attempts - 1 or not _is_duplicate_key(e):
                raise
            time.sleep(0.05 * (attempt + 1))


def download_checkpoint(run_id: str, uri: str | None = None, name: str = names.BEST_PT) -> Path:
    """Fetch ``checkpoints/<name>`` of an MLflow run into a temporary directory."""
    client = client_for(uri)
    try:
        client.get_run(run_id)
    except Exception:
        raise TrackingError(
            f"no MLflow run {run_id} in {redact(client.tracking_uri)}"
        ) from None
    dst = tempfile.mkdtemp(prefix="charlstm-")
    try:
        return Path(client.download_artifacts(run_id, f"{names.ARTIFACT_CHECKPOINTS}/{name}", dst))
    except Exception:
        raise TrackingError(f"MLflow run {run_id} has no {names.ARTIFACT_CHECKPOINTS}/{name} artifact") from None


def fetch_travelled(run_id: str, uri: str | None, folder: Path) -> Path | None:
    """A run's travelled ``resume/last.pt`` (see ``MLflowTracker.checkpoint_saved``) fetched
    as ``folder/last.pt``; None when it has none or the store cannot give it."""
    try:
        client = client_for(uri)
        with tempfile.TemporaryDirectory() as tmp:
            got = Path(client.download_artifacts(run_id, names.ARTIFACT_TRAVEL, tmp))
            folder.mkdir(parents=True, exist_ok=True)
            return Path(shutil.move(got, folder / names.LAST_PT))
    except Exception:  # (no such artifact, a store that is down: the retry starts over)
        return None


def forget_error(client, run_id: str) -> None:
    """Drop the ``error`` tag of a run that stopped once (interrupted, paused) and goes on now."""
    if names.TAG_ERROR in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, names.TAG_ERROR)


def end_run(client, run_id: str, status: str, **tags: str) -> None:
    """End a run, possibly from outside its process (a dead worker's trial), with its tags."""
    if tags:
        set_tags(client, run_id, tags)
    client.set_terminated(run_id, status=status)


def has_model(run_id: str, uri: str | None) -> bool:
    """Whether a run logged its MLflow Model (``model/MLmodel``)."""
    try:
        return any(a.path.endswith("MLmodel") for a in client_for(uri).list_artifacts(run_id, names.ARTIFACT_MODEL))
    except MlflowException:
        return False


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, for a tracking server (a local store has no URL)."""
    if not uri.startswith(("http://", "https://")):
        return None
    parts = urlsplit(uri)  # never a user, password, token or query in a link others will see
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def log_model(client, run_id: str, ckpt_path: Path) -> None:
    """The MLflow Model of a checkpoint (``charlstm.serving``) as the run's ``model/`` artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        serving.save_model(ckpt_path, Path(tmp) / names.ARTIFACT_MODEL)
        client.log_artifacts(run_id, str(Path(tmp) / names.ARTIFACT_MODEL), names.ARTIFACT_MODEL)


def _registered_checkpoint(model_uri: str, uri: str | None = None) -> Path:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> its run's ``best.pt``."""
    client = client_for(uri)
    name, sep, alias = model_uri.removeprefix("models:/").partition("@")
    try:
        version = (client.get_model_version_by_alias(name, alias) if sep
                   else client.get_model_version(*name.rsplit("/", 1)))
    except Exception:
        raise TrackingError(f"{model_uri}: no such registered model version in {redact(client.tracking_uri)}") from None
    return download_checkpoint(version.run_id, uri)


def load_registered(model_uri: str, uri: str | None = None) -> serving.CharlstmModel:
    """A registered version (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) as MLflow
    loads it for anyone: the same pyfunc that ``mlflow models serve`` runs."""
    client = client_for(uri)  # and points MLflow's registry at the same store
    try:
        return serving.load(model_uri)
    except MlflowException as e:
        raise TrackingError(f"{model_uri}: cannot load it from {redact(client.tracking_uri)}: {first_line(e)}") from None


def load_model(source: str, device: Any = "cpu", tracking_uri: str | None = None
               ) -> tuple[CharacterLSTM, Vocab, Config]:
    """``source``: a checkpoint file or run directory, an MLflow run id, or a ``models:/`` URI.
    Returns (model, vocab, config)."""
    m = None
    if source.startswith("models:/"):
        try:
            m = load_registered(source, tracking_uri)
        except TrackingError:  # a version registered before versions were MLflow Models
            path = _registered_checkpoint(source, tracking_uri)
    elif Path(source).exists():
        path = Path(source)
    elif RUN_ID.match(source):
        if has_model(source, tracking_uri):  # the run's MLflow Model: it outlives charlstm gc
            m = serving.load(f"runs:/{source}/{names.ARTIFACT_MODEL}")
        else:
            path = download_checkpoint(source, tracking_uri)
    else:
        raise CharlstmError(f"{source}: not a checkpoint file, run directory, MLflow run id or models:/ URI")
    if m is not None:
        return m.model.to(device), m.vocab, m.cfg
    return checkpoint.load_model(path, device)


def register_best(uri: str, name: str, run_id: str, tags: dict[str, str], description: str) -> str:
    """Register the best trial's MLflow Model as a version of ``name`` with alias ``best``, its
    ``tags`` and one-line ``description``; a run registered before gets its version back rather
    than a new one. The run's commit and corpus digest join the tags."""
    client = client_for(uri)
    with store_errors(f"registering {name}"):
        try:
            client.get_registered_model(name)
        except Exception:
            client.create_registered_model(name, description="charlstm: the best trial of each run of a study")
        run = client.get_run(run_id)
        if not has_model(run_id, uri):  # a run trained before models were logged: log it now
            log_model(client, run_id, download_checkpoint(run_id, uri))
        source = f"{run.info.artifact_uri}/{names.ARTIFACT_MODEL}"
        mine = [v for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
                if v.source == source]
        if mine:
            version = min(mine, key=lambda v: int(v.version)).version
        else:
            version = client.create_model_version(name, source=source, run_id=run_id, description=description).version
        run_tags = {"commit": names.TAG_COMMIT, names.STUDY_CORPUS: names.TAG_CORPUS}
        tags = {**tags, **{k: run.data.tags[t] for k, t in run_tags.items() if t in run.data.tags}}
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value))
        client.set_registered_model_alias(name, "best", version)
    return version


def registered_runs(client, name: str) -> set[str]:
    """The runs behind every version of registered model ``name`` (none if it is not there)."""
    with store_errors(f"reading registered model {name}"):
        return {v.run_id for v in client.search_model_versions(f"name = '{name}'")}


def artifact_bytes(client, run_id: str, path: str) -> int:
    """The size of a run's artifacts under ``path`` (0 when there are none)."""
    with store_errors(f"listing the artifacts of run {run_id}"):
        return sum(a.file_size or 0 for a in client.list_artifacts(run_id, path) if not a.is_dir)


def delete_artifacts(client, run_id: str, path: str) -> None:
    """Delete a run's artifacts under ``path``. MlflowClient has no public way: the artifact
    repository behind the run's artifact URI does (local, proxied or cloud stores alike); this
    is the one place charlstm asks it."""
    with store_errors(f"deleting {path} of run {run_id}"):
        repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
        repo.delete_artifacts(path)


def log_report(uri: str, run_id: str, directory: Path, artifact_path: str = names.ARTIFACT_REPORT) -> None:
    """A study report (HTML, Markdown, plots) as artifacts of the study's parent run."""
    client_for(uri).log_artifacts(run_id, str(directory), artifact_path)

"""``MLflowTracker``: ``charlstm.train.Tracker`` for one MLflow run. It records params (the flat
config), parameter counts, step metrics (buffered and written in batches: a synchronous
``log_metric`` would cost a sizeable share of a small model's step), samples, the corpus as a
dataset input, checkpoints as artifacts (and, for a study's trial, the copy a retry on another
machine resumes from), the best checkpoint as an MLflow Model (``charlstm.serving``), and which
process and commit ran it. Metric steps are characters seen. A store that cannot take an
artifact never stops the training: it waits, and is sent at the next write that succeeds.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

from charlstm import machine, names
from charlstm.config import Config, TrackingConfig, flatten, to_dict
from charlstm.data import Corpus, Vocab
from charlstm.errors import TrackingError, first_line
from charlstm.tracking.artifacts import TRAVELLED, retire_travelled
from charlstm.tracking.models import log_model
from charlstm.tracking.store import (
    client_for,
    context_tags,
    end_run,
    forget_error,
    get_or_create_experiment,
    mark_stale_runs,
    owner_tags,
    resolve_uri,
    set_tags,
    store_errors,
)
from charlstm.train import Tracker

FLUSH_EVERY = 1000  # buffered metric values before a write (MLflow's log_batch limit)
FLUSH_SECONDS = 10.0  # and at least this often, with the process's load: what a live view reads
UNSENT_MAX = 32  # artifacts a run keeps waiting for a store that cannot take them (the oldest samples go first)


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
        self._travel_sent, self._step = False, 0  # (the step of the last metric logged)
        # set by a caller whose run no retry will continue (its trial was pruned, or failed for a
        # reason of its own): its travelled copy goes when the run ends, as a FINISHED run's does
        # (its checkpoints/ hold its last)
        self.no_retry = False
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})
        self.uri = resolve_uri(cfg.uri)
        self.client = client_for(self.uri)  # (MLflow's own calls; charlstm's helpers take the URI)
        self.experiment_id = get_or_create_experiment(self.uri, cfg.experiment)
        with store_errors("marking stale runs"):
            mark_stale_runs(self.uri, self.experiment_id)
        self.run_id: str | None = None
        self._reopen = False  # a resumed run not yet written to
        self._buffer: list[Any] = []
        self._unsent: list[tuple[str, Any, str]] = []  # (kind, text or path, artifact path): see _send
        self._dropped = 0
        self._last_error = ""
        self._flushed = time.monotonic()
        self._load = machine.ProcessLoad()  # (made where the run trains: its own process)
        # set by a caller that knows better, e.g. a pruned trial: KILLED with state=PRUNED
        self.end_status: int | None = None  # a RunStatus
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
                set_tags(self.uri, self.run_id, self._own_tags())
                forget_error(self.uri, self.run_id)
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

    def end(self, status: int = RunStatus.FINISHED, tags: dict[str, str] | None = None) -> None:
        """End the run with ``status`` (a ``RunStatus``) and ``tags``, sending what waits first."""
        tags = dict(tags or {})
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
                end_run(self.uri, self.run_id, status, tags)
            if self._travel_sent and not unsent and (status == RunStatus.FINISHED or self.no_retry):
                retire_travelled(self.uri, self.run_id)

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        tags = dict(self.end_tags)
        if exc_type is None:
            self.end(RunStatus.FINISHED if self.end_status is None else self.end_status, tags)
            return
        if self.end_status is not None:
            status = self.end_status
        elif issubclass(exc_type, KeyboardInterrupt | SystemExit):
            status, tags = RunStatus.KILLED, {names.TAG_ERROR: f"interrupted {exc}".strip(), **tags}
        else:
            status, tags = RunStatus.FAILED, {names.TAG_ERROR: f"{exc_type.__name__}: {exc}", **tags}
        try:
            self.end(status, tags)
        except TrackingError as e:  # keep the original error; the next sweep or doctor ends it
            print(f"charlstm: warning: run {self.run_id} stays RUNNING for now ({e}); the next sweep of "
                  "its study or `charlstm doctor --fix` ends it", file=sys.stderr)

    def set_tags(self, tags: dict[str, str]) -> None:
        run_id = self.start()
        with store_errors("setting tags"):
            set_tags(self.uri, run_id, tags)

    # -- what a run logs ---------------------------------------------------------------------
    def log_config(self, cfg: Config) -> None:
        run_id = self.start()
        params = [Param(k, "None" if v is None else str(v)) for k, v in flatten(cfg).items()]
        with store_errors("logging the config"):
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i : i + 100])
            set_tags(self.uri, run_id, context_tags(cfg))
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
            _log_inputs(self.client, run_id, [DatasetInput(dataset_entity(corpus), tags=[tag])])
            set_tags(self.uri, run_id, {
                names.TAG_CORPUS: corpus.sha256,
                "data.vocab_size": str(len(vocab)),
                "data.train_chars": str(n_train),
                "data.val_chars": str(n_val),
            })

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts, self._step = int(time.time() * 1000), step
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
                    log_model(self.uri, run_id, Path(what))
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
                self.client.log_artifact(self.start(), str(path), TRAVELLED)
            self._travelled, self._travel_sent = time.monotonic(), True
            # what travelling has cost the run so far (its last value: the cost per trial), at
            # the evaluation it came with; written with the next batch
            self._travel_cost += time.perf_counter() - start
            self._buffer.append(Metric(names.TRAVEL_SECONDS, self._travel_cost, int(time.time() * 1000), self._step))
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


def _is_duplicate_key(e: Exception) -> bool:
    text = str(e).lower()  # PostgreSQL, SQLite and MySQL each word it their own way
    return "unique" in text or "duplicate" in text


def _log_inputs(client, run_id: str, inputs: list, attempts: int = 5) -> None:
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

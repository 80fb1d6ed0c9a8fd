"""Optuna studies over experiment configs. This module owns every Optuna call.

A study file (``sweeps/*.yaml``) names a base experiment, fixed overrides, a search space keyed
by dotted config paths, a sampler, a pruner, a trial count / timeout and a per-trial budget.
Each trial builds the same typed ``Config`` a single experiment uses and calls ``train()``; the
trainer never knows Optuna called it: an ``on_eval`` hook reports and prunes. Every trial is a
child MLflow run of one parent run per study.

Storage: an Optuna journal file by default (``studies/journal.log``): several local worker
processes append to it under a file lock, with no 'database is locked' and ~5-10x cheaper
storage calls than SQLite here; optuna-dashboard reads it. A ``postgresql://`` (or any
SQLAlchemy) URL uses RDB storage with heartbeats, so the trial of a worker that died is retried,
resuming from that trial's last checkpoint.

Faults: a torn last journal record is set aside before the next append. Ctrl-C / SIGTERM pause
a study: running trials save ``last.pt``, end FAIL and are queued again (same params, resumed
from that checkpoint, counted once). A worker that dies (SIGKILL, OOM) is noticed by its sweep,
or by the next sweep / worker on this host, and its trial is retried the same way. A trial's
Optuna state and its MLflow run always end together (``RUN_STATUS``).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock
from optuna.storages.journal import JournalFileSymlinkLock

from charlstm import interrupt, owner
from charlstm.config import Config, config_paths, flatten, load_config, read_yaml
from charlstm.errors import CharlstmError, ConfigError, StorageError, TrackingError, first_line

DEFAULT_STORAGE = "studies/journal.log"
# the seed notebook's setting (the config defaults), enqueued as trial 0 of every study
SEED_BASELINE = {
    key: flatten(Config())[key]
    for key in ("model.embedding_dim", "model.hidden_size", "data.seq_length", "data.batch_size")
}
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 30  # seconds; a study file may shorten them (tests)
USER_ATTR_RUN = "mlflow_run_id"
USER_ATTR_OWNER = "worker"  # host:pid:start of the process running the trial (charlstm.owner)
USER_ATTR_PARENT = "mlflow_parent_run_id"
CARRIED_ATTRS = ("baseline",)  # user attrs a retried trial keeps (the rest belong to its run)
# an Optuna trial state -> its MLflow run's status (the run's ``state`` tag is the Optuna name)
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
STATE_ORDER = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")  # leaderboard order
UNSIGNED_GRACE = 60  # s: a RUNNING trial that no worker signed for this long lost it at birth
STOP_GRACE = 60  # s a stopped worker gets to save its checkpoint before it is killed
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

# ---------------------------------------------------------------------------------------------
# Study files


@dataclass(frozen=True)
class Dist:
    """One search-space dimension."""

    type: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial, name: str):
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None and not (k == "log" and not v)}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d


@dataclass(frozen=True)
class SweepSpec:
    """A study definition, validated."""

    study: str
    base: str
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "val_bpc"
    direction: str = "minimize"
    space: dict[str, Dist] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    n_trials: int | None = None
    timeout: float | None = None
    trial_budget: dict[str, float] = field(default_factory=dict)
    max_params: int | None = None
    enqueue_baseline: bool = True
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    max_retry: int = 2

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["space"] = {k: v.as_dict() for k, v in self.space.items()}
        return d


SPEC_KEYS = {f for f in SweepSpec.__dataclass_fields__}
DIST_KEYS = {"type", "low", "high", "log", "step", "choices"}
BUDGET_KEYS = {"max_chars", "max_seconds", "max_steps"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler"}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "none": "NopPruner",
}


def _parse_dist(key: str, raw: Any) -> Dist:
    if not isinstance(raw, dict):
        raise ConfigError(f"space.{key}: expected a mapping like {{type: int, low: 32, high: 512}}")
    unknown = sorted(set(raw) - DIST_KEYS)
    if unknown:
        raise ConfigError(f"space.{key}: unknown key {unknown[0]!r} (known: {', '.join(sorted(DIST_KEYS))})")
    kind = raw.get("type")
    if kind not in ("int", "float", "categorical"):
        raise ConfigError(f"space.{key}: unknown distribution {kind!r} (int, float or categorical)")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"space.{key}: categorical needs a non-empty list of choices")
        return Dist("categorical", choices=tuple(choices))
    low, high = raw.get("low"), raw.get("high")
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"space.{key}: {name} must be a number, got {v!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"space.{key}: int bounds must be whole numbers")
    if low > high:
        raise ConfigError(f"space.{key}: low ({low}) > high ({high})")
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"space.{key}: a log scale needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None and (log or not isinstance(step, int | float) or step <= 0):
        raise ConfigError(f"space.{key}: step must be a positive number and not used with log")
    return Dist(kind, float(low) if kind == "float" else int(low),
                float(high) if kind == "float" else int(high), log, step)


def _check_named(kind: str, table: dict[str, str], raw: Any) -> dict[str, Any]:
    """Sampler / pruner settings: a known name and keyword arguments its class accepts."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{kind}: expected {{name: ..., <settings>}}")
    name = raw["name"]
    if name not in table:
        raise ConfigError(f"{kind}: unknown {kind} {name!r} (known: {', '.join(table)})")
    import optuna

    module = optuna.samplers if kind == "sampler" else optuna.pruners
    cls = getattr(module, table[name])
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(raw) - {"name"} - accepted)
    if unknown:
        raise ConfigError(f"{kind}.{unknown[0]}: not a setting of {table[name]}")
    return dict(raw)


def parse_sweep(raw: Any, source: str = "sweep") -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(SPEC_KEYS))})")
    for required in ("study", "base", "space"):
        if required not in raw:
            raise ConfigError(f"{source}: missing {required!r}")
    study = raw["study"]
    if not isinstance(study, str) or not STUDY_NAME.match(study):
        raise ConfigError(
            f"{source}: study {study!r} must be letters, digits, '.', '_' or '-' (it names MLflow "
            "filters, a registered model and a folder)"
        )
    space_raw = raw["space"]
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError(f"{source}: space must map config paths to distributions")
    paths = set(config_paths()) - {"name"}
    for key in space_raw:
        if key not in paths:
            raise ConfigError(f"{source}: space key {key!r} is not a config path (e.g. model.hidden_size)")
    space = {k: _parse_dist(k, v) for k, v in space_raw.items()}
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: overrides must map config paths to values")
    budget = raw.get("trial_budget") or {}
    if not isinstance(budget, dict) or not budget or set(budget) - BUDGET_KEYS:
        raise ConfigError(f"{source}: trial_budget needs one or more of {', '.join(sorted(BUDGET_KEYS))}")
    metric = raw.get("metric", "val_bpc")
    if metric not in ("val_bpc", "val_loss"):
        raise ConfigError(f"{source}: metric must be val_bpc or val_loss")
    direction = raw.get("direction", "minimize")
    if direction != "minimize":
        raise ConfigError(f"{source}: direction must be minimize (a loss)")
    for key in ("n_trials", "max_params", "heartbeat_interval", "grace_period", "max_retry"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "max_retry" else 1)):
            raise ConfigError(f"{source}: {key} must be a positive integer, got {v!r}")
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"{source}: timeout must be a positive number of seconds")
    if raw.get("n_trials") is None and timeout is None:
        raise ConfigError(f"{source}: set n_trials and/or timeout")
    spec = SweepSpec(
        study=study,
        base=str(raw["base"]),
        overrides=dict(overrides),
        metric=metric,
        direction=direction,
        space=space,
        sampler=_check_named("sampler", SAMPLERS, raw.get("sampler", {"name": "tpe", "seed": 0})),
        pruner=_check_named("pruner", PRUNERS, raw.get("pruner", {"name": "median"})),
        n_trials=raw.get("n_trials"),
        timeout=timeout,
        trial_budget=dict(budget),
        max_params=raw.get("max_params"),
        enqueue_baseline=bool(raw.get("enqueue_baseline", True)),
        heartbeat_interval=raw.get("heartbeat_interval") or HEARTBEAT_INTERVAL,
        grace_period=raw.get("grace_period") or GRACE_PERIOD,
        max_retry=raw.get("max_retry", 2),
    )
    base_config(spec)  # the base experiment and fixed overrides must load on their own
    for key, dist in space.items():  # ... and so must every value the space can propose
        values = dist.choices if dist.type == "categorical" else (dist.low, dist.high)
        for value in values:
            try:
                base_config(spec, {key: value})
            except ConfigError as e:
                why = str(e).removeprefix(f"{spec.base}: ")
                raise ConfigError(f"{source}: space.{key}: the value {value!r} does not fit: {why}") from None
    return spec


def load_sweep(path: str | Path) -> SweepSpec:
    try:
        return parse_sweep(read_yaml(path), str(path))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def base_config(spec: SweepSpec, params: dict[str, Any] | None = None) -> Config:
    """The base experiment with the fixed overrides, the trial budget and ``params`` applied."""
    budget = {f"train.{k}": None for k in BUDGET_KEYS}
    budget.update({f"train.{k}": v for k, v in spec.trial_budget.items()})
    return load_config(spec.base, {**spec.overrides, **budget, **(params or {})})


# ---------------------------------------------------------------------------------------------
# Storage


def is_rdb(url: str) -> bool:
    return "://" in url and not url.startswith("file:")


def set_aside_torn_tail(path: Path) -> int:
    """Move a torn last record (a writer killed mid-append leaves a line with no newline) into
    ``<journal>.torn``; Optuna reads past such a tail but would append onto it, and the glued line
    would break every later read. Call holding the journal's lock. Returns the bytes set aside."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        f.seek(max(0, size - (1 << 20)))  # records are far shorter than 1 MiB
        tail = f.read()
        cut = size - len(tail) + tail.rfind(b"\n") + 1
        f.seek(cut)
        torn = f.read()
        _keep_aside(path, [torn])
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    _say_set_aside(path, [torn], "a torn last record (its writer was killed mid-append)")
    return len(torn)


def repair_journal(path: Path) -> None:
    """Make a damaged journal readable again, keeping every complete record: a torn tail is set
    aside, and a line where a later append was glued onto a torn record (left by tools that do
    not check) is split: the torn prefix is set aside and the glued record kept."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        set_aside_torn_tail(path)
        data = path.read_bytes()
        marker = b'{"op_code":'
        if data.count(marker) == data.count(b"\n" + marker) + data.startswith(marker):
            return  # every record starts a line: nothing glued (the common case, one C-level scan)
        kept, dropped = [], []
        for line in data.split(b"\n")[:-1]:
            start = line.rfind(marker)
            if start > 0 and _parses(line[start:]):
                kept.append(line[start:])
                dropped.append(line[:start])
            elif _parses(line):
                kept.append(line)
            else:
                dropped.append(line)
        _keep_aside(path, dropped)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, path)
        _say_set_aside(path, dropped, "damaged records (torn, with later records glued on)")
    finally:
        lock.release()


def _parses(line: bytes) -> bool:
    import json

    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _keep_aside(path: Path, pieces: list[bytes]) -> None:
    with open(path.with_name(path.name + ".torn"), "ab") as f:
        f.write(b"".join(p + b"\n" for p in pieces))


def _say_set_aside(path: Path, pieces: list[bytes], what: str) -> None:
    n = sum(len(p) for p in pieces)
    print(f"charlstm: {path}: set {what} aside, {n} bytes, in {path}.torn; every complete record "
          "is kept", file=sys.stderr)


class _RepairingLock(JournalFileSymlinkLock):
    """Optuna's journal-file lock that, once held, sets a torn last record aside before the
    append it guards (see ``set_aside_torn_tail``)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.journal = Path(path)

    def acquire(self) -> bool:
        held = super().acquire()
        try:
            set_aside_torn_tail(self.journal)
        except BaseException:
            self.release()
            raise
        return held


def open_storage(url: str | None, spec: SweepSpec | None = None, tracking_uri: str | None = None):
    """A journal file (default) or an RDB storage with heartbeats; unreachable -> one line."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    from charlstm.tracking import redact

    url = url or DEFAULT_STORAGE
    if not is_rdb(url):
        path = Path(url.removeprefix("file:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            repair_journal(path)
            return JournalStorage(JournalFileBackend(str(path), lock_obj=_RepairingLock(str(path))))
        except (OSError, ValueError) as e:
            raise TrackingError(f"optuna storage {path} cannot be used: {first_line(e)}") from None
    interval = spec.heartbeat_interval if spec else HEARTBEAT_INTERVAL
    grace = spec.grace_period if spec else GRACE_PERIOD
    max_retry = spec.max_retry if spec else 2

    def on_stale(study, trial):  # the worker running `trial` died: its run ends too, then a retry
        end_trial_run(tracking_uri, trial.user_attrs.get(USER_ATTR_RUN), "FAIL",
                      "its worker died (Optuna heartbeat went stale)")
        requeue(study, trial, crashed=True, max_retry=max_retry)

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental"
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=on_stale,
            )
    except Exception as e:  # unreachable host, bad credentials, missing driver, ...
        raise TrackingError(f"optuna storage {redact(url)} is unreachable: {first_line(e)}") from None


def study_lock(storage_url: str | None, study_name: str) -> FileLock:
    """Processes of this host that set up or finish one study take turns: two sweeps started
    together must not both enqueue the baseline, create a parent run or register the best."""
    url = storage_url or DEFAULT_STORAGE
    if is_rdb(url):
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"charlstm-{key}-{study_name}.lock"
    else:
        journal = Path(url.removeprefix("file:"))
        path = journal.with_name(f"{journal.name}.{study_name}.lock")
    return FileLock(str(path))


def make_sampler(spec: SweepSpec, worker_index: int, n_existing: int):
    import optuna

    settings = {k: v for k, v in spec.sampler.items() if k != "name"}
    if "seed" in settings and settings["seed"] is not None:
        # distinct per worker and per resume: the same seed twice would propose the same points
        settings["seed"] = int(settings["seed"]) + 1000 * worker_index + n_existing
    return getattr(optuna.samplers, SAMPLERS[spec.sampler["name"]])(**settings)


def make_pruner(spec: SweepSpec):
    import optuna

    settings = {k: v for k, v in spec.pruner.items() if k != "name"}
    return getattr(optuna.pruners, PRUNERS[spec.pruner["name"]])(**settings)


def load_study(study_name: str, storage, **kwargs):
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage, **kwargs)
    except KeyError:
        raise ConfigError(f"no study {study_name!r} in that storage: start it with 'charlstm sweep'") from None


# ---------------------------------------------------------------------------------------------
# Trial lifecycle: shared by workers, the sweep that runs them, and `charlstm doctor`


def retry_history(trial) -> list[int]:
    """The trials this one retries, oldest first (Optuna's own record of retries)."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return list(RetryHeartbeatStaleTrialCallback.retry_history(trial))


def retried_as(trials) -> dict[int, int]:
    """failed trial number -> the number of the trial that retried it."""
    return {history[-1]: t.number for t in trials if (history := retry_history(t))}


def started_trials(trials) -> int:
    """Trials that count toward a study's target: run or running, not queued (WAITING), and
    not failed ones that were queued again (their retry counts instead)."""
    from optuna.trial import TrialState

    again = retried_as(trials)
    return sum(1 for t in trials if t.state != TrialState.WAITING
               and not (t.state == TrialState.FAIL and t.number in again))


def requeue(study, trial, crashed: bool, max_retry: int | None = None) -> bool:
    """Queue a FAIL trial again, as Optuna's retry callback does (WAITING, same params, its
    number in ``retry_history``), keeping its seed-baseline flag but not its dead run's records;
    the retry resumes from the failed trial's checkpoint. A crash counts against ``max_retry``
    (a config that kills its worker every time), an interruption does not."""
    import optuna

    crashes = trial.system_attrs.get("crashes", 0) + int(crashed)
    if crashed and max_retry is not None and crashes > max_retry:
        return False
    history = [*retry_history(trial), trial.number]
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k in CARRIED_ATTRS},
        system_attrs={"failed_trial": history[0], "retry_history": history, "crashes": crashes},
    ))
    return True


def _annotate(study, trial, key: str, value: Any) -> None:
    """Set a user attr on a trial this process did not ask for (a dead worker's). Optuna has no
    public way: ``Trial`` objects belong to the process that asked; this is the storage call
    Optuna's own stale-trial handling makes."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def end_trial_run(uri: str | None, run_id: str | None, state: str, reason: str | None = None) -> None:
    """End a trial's MLflow run to match its Optuna ``state``: status, ``state`` tag, reason."""
    from charlstm import tracking

    if not run_id:
        return
    tags = {"state": state, **({"error": reason} if reason else {})}
    with tracking.store_errors(f"ending run {run_id}"):
        tracking.end_run(tracking.client_for(uri), run_id, RUN_STATUS[state], **tags)


def fail_trial(study, trial, uri: str | None, reason: str, retry: bool, crashed: bool = True,
               max_retry: int | None = None) -> bool:
    """FAIL a RUNNING trial of a dead or stopped worker with ``reason``, end its run to match,
    and queue it again when ``retry``. False when another process ended it first."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        _annotate(study, trial, "fail_reason", reason)
        study.tell(trial.number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):  # no longer RUNNING: someone else did it
        return False
    end_trial_run(uri, trial.user_attrs.get(USER_ATTR_RUN), "FAIL", reason)
    if retry:
        requeue(study, trial, crashed=crashed, max_retry=max_retry)
    return True


def orphans(study, pids: set[int] | None = None, heartbeats: bool = False) -> list:
    """RUNNING trials whose worker is certainly gone: a process of this host that no longer
    exists (``pids``: only those), or, without heartbeats, no worker signed for the trial at all
    within UNSIGNED_GRACE seconds of its start."""
    from optuna.trial import TrialState

    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get(USER_ATTR_OWNER)
        if who:
            gone = owner.on_this_host(who) and not owner.alive(who)
            if gone and (pids is None or owner.pid_of(who) in pids):
                found.append(t)
        elif pids is None and not heartbeats and t.datetime_start is not None \
                and (datetime.now() - t.datetime_start).total_seconds() > UNSIGNED_GRACE:
            found.append(t)
    return found


def recover_orphans(study, uri: str | None, spec: SweepSpec, pids: set[int] | None = None,
                    why: str | None = None, heartbeats: bool = False) -> list[int]:
    """FAIL the trials of dead workers with the reason and queue each again to resume from its
    checkpoint. Returns the numbers of the trials failed here."""
    failed = []
    for t in orphans(study, pids, heartbeats):
        who = t.user_attrs.get(USER_ATTR_OWNER)
        reason = why or (f"its worker (pid {owner.pid_of(who)}) had died" if who else "its worker died as it began")
        if fail_trial(study, t, uri, reason, retry=True, max_retry=spec.max_retry):
            failed.append(t.number)
    return failed


# ---------------------------------------------------------------------------------------------
# Creating, resuming and joining a study


def setup_study(
    spec: SweepSpec,
    storage_url: str | None,
    tracking_uri: str | None,
    n_trials: int | None,
    timeout: float | None,
    force: bool = False,
):
    """Create the study (or resume it by name), its parent MLflow run and its trial target.

    Without ``n_trials``, a study whose last target was not reached (it was interrupted, or
    another sweep is running it) continues toward that target; otherwise the target grows by
    ``n_trials`` (default: the study file's). Trials a killed sweep left RUNNING are failed and
    queued to resume first."""
    import optuna

    from charlstm import tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study"
    storage = open_storage(storage_url, spec, tracking_uri)
    with study_lock(storage_url, spec.study):
        study = optuna.create_study(
            study_name=spec.study,
            storage=storage,
            direction=spec.direction,
            load_if_exists=True,
            pruner=make_pruner(spec),
        )
        stored = study.user_attrs.get("sweep")
        fresh = stored is None
        if not fresh and stored["space"] != spec.as_dict()["space"] and not force:
            changed = sorted(set(stored["space"]) ^ set(spec.as_dict()["space"])) or [
                k for k in spec.space if stored["space"].get(k) != spec.as_dict()["space"][k]
            ]
            raise ConfigError(
                f"study {spec.study!r} exists with another search space (changed: {', '.join(changed)}); "
                "resume with --force to accept it, or give the study a new name"
            )
        study.set_user_attr("sweep", spec.as_dict())
        uri = tracking.resolve_uri(tracking_uri or base_config(spec).tracking.uri)
        if "@" not in uri:  # never store a URI that could carry a password
            study.set_user_attr("tracking_uri", uri)
        parent = tracking.study_parent_run(uri, base_config(spec).tracking.experiment, spec.study,
                                           spec.as_dict(), study.user_attrs.get(USER_ATTR_PARENT))
        study.set_user_attr(USER_ATTR_PARENT, parent)
        recover_orphans(study, uri, spec, heartbeats=is_rdb(storage_url or DEFAULT_STORAGE))
        started = started_trials(study.get_trials(deepcopy=False))
        target = study.user_attrs.get("target_trials")
        if n_trials is not None or target is None or started >= target:
            n = n_trials if n_trials is not None else spec.n_trials
            target = started + n if n is not None else None
        study.set_user_attr("target_trials", target)
        timeout = timeout if timeout is not None else spec.timeout
        study.set_user_attr("deadline", time.time() + timeout if timeout else None)
        if fresh and spec.enqueue_baseline:
            enqueue_baseline(study, spec)
    return study, uri


def enqueue_baseline(study, spec: SweepSpec) -> None:
    """The seed notebook's setting as the study's first trial, as far as the space allows."""
    baseline = base_config(spec)
    flat = {k: v for k, v in SEED_BASELINE.items() if k in spec.space}
    flat.update({k: _get(baseline, k) for k in spec.space if k not in SEED_BASELINE})
    # a value the space excludes is left to the sampler: trial 0 is as close as it allows
    excluded = sorted(k for k, v in flat.items() if not spec.space[k].contains(v))
    if excluded:
        print(f"note: the space excludes the baseline's {', '.join(excluded)}: trial 0 samples them")
    flat = {k: v for k, v in flat.items() if k not in excluded}
    study.enqueue_trial(flat, user_attrs={"baseline": True}, skip_if_exists=True)


def _get(cfg: Config, path: str):
    section, key = path.split(".", 1)
    return getattr(getattr(cfg, section), key)


def join_study(study_name: str, storage_url: str | None, tracking_uri: str | None, worker_index: int):
    """A worker's view of a study: (study with its sampler and pruner, spec, tracking URI)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our one line, not its traceback
    storage = open_storage(storage_url, None, tracking_uri)
    attrs = load_study(study_name, storage).user_attrs
    spec = parse_sweep(attrs["sweep"], f"study {study_name}")
    uri = tracking_uri or attrs.get("tracking_uri")
    if uri is None:
        raise ConfigError("this study's tracking URI was not stored: pass --tracking-uri")
    if is_rdb(storage_url or DEFAULT_STORAGE):  # now with this study's heartbeat settings
        storage = open_storage(storage_url, spec, uri)
    n_existing = len(load_study(study_name, storage).get_trials(deepcopy=False))
    study = load_study(study_name, storage, sampler=make_sampler(spec, worker_index, n_existing),
                       pruner=make_pruner(spec))
    return study, spec, uri


def next_action(study, heartbeats: bool) -> str:
    """``run`` a trial (a queued one first), ``wait`` for trials running elsewhere (one may yet
    die and need a retry: RDB heartbeats only), or ``done`` (target or deadline reached)."""
    from optuna.trial import TrialState

    attrs = study.user_attrs
    if attrs.get("deadline") is not None and time.time() >= attrs["deadline"]:
        return "done"
    trials = study.get_trials(deepcopy=False)
    target = attrs.get("target_trials")
    if target is None or started_trials(trials) < target:
        return "run"
    if heartbeats and any(t.state == TrialState.RUNNING for t in trials):
        return "wait"
    return "done"


def study_progress(study) -> str:
    """'5 of 12 trials done, 2 queued to resume' and the like."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    started = started_trials(trials)
    target = study.user_attrs.get("target_trials")
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    resuming = sum(bool(retry_history(t)) for t in waiting)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    parts = [f"{started - running} of {target if target is not None else '?'} trials done"]
    if running:
        parts.append(f"{running} running")
    if resuming:
        parts.append(f"{resuming} to resume from their checkpoints")
    if len(waiting) > resuming:
        parts.append(f"{len(waiting) - resuming} queued")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# One trial


def _vocab_size(spec: SweepSpec) -> int:
    from charlstm.data import load_corpus, prepare

    cfg = base_config(spec)
    return len(prepare(load_corpus(cfg.data.corpus), cfg.data.val_fraction, cfg.data.test_fraction).vocab)


class Objective:
    """The function Optuna calls: suggest -> Config -> train(), reporting and pruning at each
    evaluation -> the metric. A failure ends the trial's run FAILED with the reason (one line
    in the worker's log; a traceback only for a bug); a diverged run never completes."""

    def __init__(self, spec: SweepSpec, tracking_uri: str, parent_run_id: str, threads: int,
                 log: Callable[[str], None]):
        self.spec, self.uri, self.parent_run_id, self.threads, self.log = (
            spec, tracking_uri, parent_run_id, threads, log)
        self.vocab_size = _vocab_size(spec)
        self.trial_number: int | None = None  # the trial being run, for the worker's clean-up
        self.storage_failed: StorageError | None = None  # a full disk or a broken store

    def __call__(self, trial) -> float:
        self.trial_number = trial.number
        trial.set_user_attr(USER_ATTR_OWNER, owner.this_process())  # first: whose trial it is
        try:
            return self._run(trial)
        except KeyboardInterrupt as e:
            trial.set_user_attr("fail_reason", _reason(e))
            raise
        except StorageError as e:  # not the trial's fault: the worker stops, the trial is queued
            self.storage_failed = e
            trial.set_user_attr("fail_reason", str(e))
            raise
        except CharlstmError as e:  # an impossible sampled config, divergence, ...
            self._failed(trial, str(e))
            raise
        except Exception as e:
            import optuna

            if isinstance(e, optuna.TrialPruned):
                raise
            self._failed(trial, f"{type(e).__name__}: {first_line(e)}")
            traceback.print_exc()  # not a known fault: a bug, whose traceback is worth having
            raise

    def _failed(self, trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason)
        self.log(f"trial {trial.number} failed: {reason}")

    def _run(self, trial) -> float:
        import optuna

        from charlstm.model import count_params
        from charlstm.tracking import TAG_STUDY, TAG_TRIAL, MLflowTracker
        from charlstm.train import train

        spec = self.spec
        params = {key: dist.suggest(trial, key) for key, dist in spec.space.items()}
        name = f"{spec.study}-trial-{trial.number:04d}"
        out_dir = str(Path(base_config(spec).train.out_dir) / spec.study)
        cfg = base_config(spec, {**params, "name": name, "train.out_dir": out_dir})
        if self.threads and not cfg.train.threads:  # a study may pin train.threads itself
            cfg = replace(cfg, train=replace(cfg.train, threads=self.threads))
        m = cfg.model
        counts = count_params(self.vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.dropout)
        trial.set_user_attr("params_total", counts["total"])
        tags = {TAG_STUDY: spec.study, TAG_TRIAL: str(trial.number)}
        if trial.user_attrs.get("baseline"):
            tags["charlstm.baseline"] = "true"
        tracker = MLflowTracker(replace(cfg.tracking, uri=self.uri), run_name=name,
                                parent_run_id=self.parent_run_id, tags=tags)
        trial.set_user_attr(USER_ATTR_RUN, tracker.start())

        if spec.max_params and counts["total"] > spec.max_params:
            # never trained: recorded as PRUNED in Optuna, KILLED with the reason in MLflow
            tracker.log_config(cfg)
            tracker.log_param_counts(counts)
            reason = f"{counts['total']:,} parameters > max_params {spec.max_params:,}"
            trial.set_user_attr("pruned_reason", reason)
            tracker.end("KILLED", state="PRUNED", pruned_reason=reason, pruned_at_chars="0")
            raise optuna.TrialPruned(reason)

        def on_eval(record: dict[str, Any]) -> None:
            trial.report(record[spec.metric], step=record["chars_mark"])
            if trial.should_prune():
                tracker.end_status = "KILLED"
                tracker.end_tags = {"state": "PRUNED", "pruned_at_chars": str(record["chars_mark"]),
                                    "pruned_at_step": str(record["step"])}
                raise optuna.TrialPruned(f"pruned at {record['chars_mark']:,} chars")

        resume = _retry_checkpoint(trial, out_dir)
        with tracker:
            tracker.set_tags({"state": "RUNNING"})
            # until it completes, a failure of any kind ends the run as its trial ends: FAIL
            tracker.end_status, tracker.end_tags = "FAILED", {"state": "FAIL"}
            try:
                result = train(cfg, tracker, on_eval, resume=resume,
                               run_dir=Path(out_dir) / f"trial-{trial.number:04d}", progress=False)
            except BaseException as e:
                if tracker.end_tags["state"] == "FAIL":  # (a pruned trial set its own)
                    tracker.end_tags["error"] = _reason(e)
                raise
            tracker.end_status, tracker.end_tags = "FINISHED", {"state": "COMPLETE"}
        trial.set_user_attr("chars_per_sec", result.chars_per_sec)
        trial.set_user_attr("train_seconds", result.train_seconds)
        trial.set_user_attr("chars_seen", result.chars_seen)
        trial.set_user_attr("best_val_loss", result.best_val_loss)
        return min(e[spec.metric] for e in result.evals)


def _reason(e: BaseException) -> str:
    if isinstance(e, interrupt.Interrupted):
        return f"interrupted ({e.signal_name}) {e.where}".strip()
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return str(e) if isinstance(e, CharlstmError) else f"{type(e).__name__}: {first_line(e)}"


def _retry_checkpoint(trial, out_dir: str) -> Path | None:
    """A retried trial continues from the newest checkpoint of the trial(s) it replaces."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    for number in reversed(retry_history(frozen)):
        path = Path(out_dir) / f"trial-{number:04d}" / "last.pt"
        if path.is_file():
            trial.set_user_attr("resumed_from_trial", number)
            return path
    return None


# ---------------------------------------------------------------------------------------------
# Workers


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_worker(
    study_name: str,
    storage_url: str | None,
    tracking_uri: str | None = None,
    threads: int = 0,
    worker_index: int = 0,
    log: Callable[[str], None] = _stderr,
) -> int:
    """Join a study and run trials until its target count or deadline. Returns trials run.

    A stop request (Ctrl-C, SIGTERM) ends the running trial at its next step: its checkpoint is
    saved, the trial FAILs and is queued again, and ``Interrupted`` propagates."""
    import optuna

    study, spec, uri = join_study(study_name, storage_url, tracking_uri, worker_index)
    heartbeats = is_rdb(storage_url or DEFAULT_STORAGE)
    recover_orphans(study, uri, spec, heartbeats=heartbeats)  # a killed sweep's trials go first
    if threads:
        import torch

        torch.set_num_threads(threads)
    objective = Objective(spec, uri, study.user_attrs[USER_ATTR_PARENT], threads,
                          lambda line: log(f"worker {worker_index}: {line}"))
    ran = 0
    while (action := next_action(study, heartbeats)) != "done":
        interrupt.check("between trials")
        if action == "wait":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fail_stale_trials is "experimental"
                optuna.storages.fail_stale_trials(study)
            time.sleep(min(spec.heartbeat_interval, 5))
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except KeyboardInterrupt:  # Optuna has marked the trial FAIL; it resumes next time
            _requeue_failed(study, objective.trial_number)
            raise
        if objective.storage_failed is not None:  # the next trial would fail the same way
            _requeue_failed(study, objective.trial_number)
            raise objective.storage_failed
        ran += 1
    return ran


def _requeue_failed(study, number: int | None) -> None:
    """Queue again a trial this worker stopped (not a crash: it counts no retry)."""
    trials = study.get_trials(deepcopy=False)
    trial = next((t for t in trials if t.number == number), None)
    if trial is not None and trial.state.name == "FAIL" and trial.number not in retried_as(trials):
        requeue(study, trial, crashed=False)


def spawn_worker(spec: SweepSpec, storage_url: str | None, uri: str, threads: int, index: int):
    """A worker process of this sweep, in its own session: a Ctrl-C at the terminal reaches
    the sweep alone, which passes one stop on to each worker."""
    return subprocess.Popen(
        [sys.executable, "-m", "charlstm", "worker", "--study", spec.study,
         "--storage", storage_url or DEFAULT_STORAGE, "--tracking-uri", uri,
         "--threads", str(threads), "--worker-index", str(index), "--spawned"],
        start_new_session=True,
    )


def exit_reason(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def supervise(spec: SweepSpec, storage_url: str | None, uri: str, workers: int, threads: int,
              say: Callable[[str], None]) -> None:
    """Run ``workers`` worker processes until the study is done. One that dies (SIGKILL, an
    OOM kill, a crash) has its trial failed and queued to resume, and is replaced; a stop
    request is passed on to every worker, which saves its trial's checkpoint and exits."""
    heartbeats = is_rdb(storage_url or DEFAULT_STORAGE)
    study = load_study(spec.study, open_storage(storage_url, spec, uri))
    procs = {i: spawn_worker(spec, storage_url, uri, threads, i) for i in range(workers)}
    spares = 3 * workers + (study.user_attrs.get("target_trials") or 0)  # replacements allowed
    stopped_at: float | None = None
    errors: list[str] = []  # workers that stopped on a one-line error (exit 2)
    try:
        while procs:
            time.sleep(0.2)
            if interrupt.requested() and stopped_at is None:
                stopped_at = time.monotonic()
                for p in procs.values():  # the same signal the sweep got, once
                    p.send_signal(signal.Signals[interrupt.requested()])
            if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE:
                for p in procs.values():
                    p.kill()
            for i, p in list(procs.items()):
                code = p.poll()
                if code is None:
                    continue
                del procs[i]
                if stopped_at is not None or code == 0:
                    continue
                why = f"worker {i} (pid {p.pid}) {exit_reason(code)}"
                failed = recover_orphans(study, uri, spec, pids={p.pid}, why=why)
                lost = f": trial {', '.join(map(str, failed))} failed and was queued to resume" if failed else ""
                if code != 2 and spares > 0:  # 2: a one-line error (storage, config) would repeat
                    spares -= 1
                    procs[i] = spawn_worker(spec, storage_url, uri, threads, i)
                    say(f"{why}{lost}; started a replacement")
                else:
                    errors.append(f"worker {i}")
                    say(f"{why}{lost}")
            if stopped_at is None and not procs and next_action(study, heartbeats) == "run":
                if errors or spares <= 0:
                    raise CharlstmError(f"{', '.join(errors) or 'every worker'} stopped on an error (above) "
                                        "before the study was done; mend it, then run the sweep again")
                spares -= 1  # work was queued after every worker had ended (a late retry)
                procs[0] = spawn_worker(spec, storage_url, uri, threads, 0)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting; their trials are recovered
        for p in procs.values():
            p.kill()
            p.wait()
        raise
    if stopped_at is not None:
        raise interrupt.Interrupted(interrupt.requested() or "SIGTERM")


class StudyPaused(interrupt.Interrupted):
    """A sweep stopped on request; its running trials are queued to resume."""


def run_sweep(
    spec: SweepSpec,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    force: bool = False,
    quiet: bool = False,
):
    """Set the study up, run ``workers`` local processes on it, then summarise. Returns the study.

    Ctrl-C / SIGTERM pause it: ``StudyPaused`` says what was kept and queued. A full disk or a
    broken store stops it with that ``StorageError``, the trial in hand queued again."""
    from charlstm import tracking

    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"--n-trials must be 0 or more, got {n_trials}")
    if workers < 1:
        raise ConfigError(f"--workers must be 1 or more, got {workers}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout}")
    study, uri = setup_study(spec, storage_url, tracking_uri, n_trials, timeout, force)
    threads = max(1, (os.cpu_count() or 1) // workers)
    say = (lambda line: None) if quiet else print
    say(f"study {spec.study}: {study_progress(study)}; target {study.user_attrs['target_trials']}, "
        f"{workers} worker(s) x {threads} thread(s)")
    try:
        if workers == 1:
            run_worker(spec.study, storage_url, uri, threads, 0)
        else:
            supervise(spec, storage_url, uri, workers, threads, say)
    except KeyboardInterrupt as e:
        raise pause_study(spec, storage_url, uri, e) from None
    except CharlstmError as e:  # (a trial stopped by it was queued again) the parent run says why
        with suppress(CharlstmError):  # (if the store itself is what failed, it cannot)
            tracking.end_run(tracking.client_for(uri), study.user_attrs[USER_ATTR_PARENT], "FAILED",
                             error=f"stopped: {e}")
        raise
    return finish_study(spec, spec.study, storage_url, uri, quiet=quiet)


def pause_study(spec: SweepSpec, storage_url: str | None, uri: str, e: KeyboardInterrupt) -> StudyPaused:
    """After a stop: trials whose worker did not get to save are failed and queued too, and the
    parent run ends KILLED (the next sweep reopens it)."""
    from charlstm import tracking

    signal_name = e.signal_name if isinstance(e, interrupt.Interrupted) else "Ctrl-C"
    study = load_study(spec.study, open_storage(storage_url, spec, uri))
    recover_orphans(study, uri, spec, why=f"its worker was stopped ({signal_name}) before it could save")
    progress = study_progress(study)
    with tracking.store_errors("pausing the study's parent run"):
        tracking.end_run(tracking.client_for(uri), study.user_attrs[USER_ATTR_PARENT], "KILLED",
                         error=f"paused ({signal_name}): {progress}")
    return StudyPaused(signal_name, f"study {spec.study} paused by {signal_name}: {progress}")


def finish_study(spec: SweepSpec, study_name: str, storage_url: str | None, uri: str, quiet: bool = False):
    """Log the study's outcome to its parent run, register the best model, print the leaderboard.

    While trials of other processes still run (a second sweep, a worker elsewhere), the study is
    left for the last of them to finish: one registration of the best, at the end."""
    from optuna.trial import TrialState

    from charlstm import tracking

    study = load_study(study_name, open_storage(storage_url, spec, uri))
    say = (lambda line: None) if quiet else print
    with study_lock(storage_url, study_name):
        recover_orphans(study, uri, spec, heartbeats=is_rdb(storage_url or DEFAULT_STORAGE))
        board = leaderboard(study)
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if running:
            say(f"still running in other processes: trial {', '.join(str(t.number) for t in running)}; "
                "the last process to end finishes the study")
        else:
            counts = {s: sum(t.state.name == s for t in trials) for s in STATE_ORDER}
            best = best_trial(study)
            summary = None if best is None else {
                "number": best.number, "run_id": best.user_attrs.get(USER_ATTR_RUN),
                "value": best.value, "params": best.params}
            tracking.finish_parent_run(uri, study.user_attrs[USER_ATTR_PARENT], spec.metric, counts, summary, board)
            if best is not None:
                version = tracking.register_best(uri, f"charlstm-{spec.study}", best.user_attrs[USER_ATTR_RUN])
                say(f"registered models:/charlstm-{spec.study}@best (version {version}, trial {best.number})")
    say(format_leaderboard(board, spec.metric))
    return study


def best_trial(study):
    """The best COMPLETE trial (a diverged or failed one never is), or None."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


# ---------------------------------------------------------------------------------------------
# Leaderboard


def leaderboard(study):
    """One row per trial, best first: params, parameter count, metric, speed, state, a note
    (why it failed or was pruned, which trial retried it, who runs it), run id."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    again = retried_as(trials)
    rows = []
    for t in trials:
        row = {"trial": t.number, "state": t.state.name, "value": t.value}
        row.update(t.params)
        row["params_total"] = t.user_attrs.get("params_total")
        row["chars_per_sec"] = t.user_attrs.get("chars_per_sec")
        row["train_seconds"] = t.user_attrs.get("train_seconds")
        row["baseline"] = bool(t.user_attrs.get("baseline"))
        if t.state.name == "PRUNED" and t.intermediate_values:
            row["value"] = t.intermediate_values[max(t.intermediate_values)]
        row["note"] = _note(t, again)
        row["mlflow_run_id"] = t.user_attrs.get(USER_ATTR_RUN)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_o"] = df["state"].map({s: i for i, s in enumerate(STATE_ORDER)})
    return df.sort_values(["_o", "value"], na_position="last").drop(columns="_o").reset_index(drop=True)


def _note(t, again: dict[int, int]) -> str:
    state = t.state.name
    if state == "RUNNING":
        who = t.user_attrs.get(USER_ATTR_OWNER)
        return f"running in pid {owner.pid_of(who)}" if who else "starting"
    if state == "WAITING":
        history = retry_history(t)
        return f"queued: resumes trial {history[-1]}" if history else "queued"
    note = t.user_attrs.get("fail_reason" if state == "FAIL" else "pruned_reason", "")
    if t.number in again:
        note = f"{note}; resumed as trial {again[t.number]}".lstrip("; ")
    return note


def format_leaderboard(df, metric: str = "val_bpc", top: int = 10) -> str:
    if df.empty:
        return "no trials"
    cols = [c for c in df.columns if c not in ("mlflow_run_id",)]
    shown = df[cols].head(top).copy()
    shown["note"] = shown["note"].map(lambda s: s if len(s) <= 60 else s[:57] + "...")
    shown = shown.rename(columns={"value": metric})
    counts = df["state"].value_counts().to_dict()
    summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    with_fmt = shown.to_string(
        index=False,
        float_format=lambda v: f"{v:,.4f}" if abs(v) < 100 else f"{v:,.0f}",
        na_rep="-",
    )
    return f"leaderboard (top {min(top, len(df))} of {len(df)}: {summary}; PRUNED shows its last report)\n{with_fmt}"

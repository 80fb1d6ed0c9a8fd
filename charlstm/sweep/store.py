"""Where studies live: the Optuna storage (a journal file kept readable through torn
writes, or an RDB with heartbeats), the sampler and pruner of a spec, how trials are counted
and queued again, and the leaderboard."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from filelock import FileLock
from optuna.exceptions import ExperimentalWarning, StorageInternalError
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import InterfaceError, OperationalError

from charlstm import names, owner
from charlstm.errors import ConfigError, TrackingError, first_line, redact
from charlstm.files import atomic_write
from charlstm.sweep.spec import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    PRUNERS,
    SAMPLERS,
    SweepSpec,
    stored_spec,
)

# the user attrs a retried trial keeps: what kind of trial it is (the rest are its run's)
CARRIED_ATTRS = (names.ATTR_BASELINE, names.ATTR_CONFIRMS, names.ATTR_SEED, names.ATTR_FINAL, names.ATTR_FINAL_OF,
                 names.ATTR_CHECK)
# the leaderboard's order (by the states' names: its state column holds them)
STATE_ORDER = tuple(s.name for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING,
                                     TrialState.FAIL))

# ---------------------------------------------------------------------------------------------
# Storage


def is_rdb(url: str | None) -> bool:
    """A database URL (heartbeats, many hosts) rather than a journal file (None: the default)."""
    url = url or names.DEFAULT_STORAGE
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
        atomic_write(path, lambda f: f.write(b"".join(line + b"\n" for line in kept)))
        _say_set_aside(path, dropped, "damaged records (torn, with later records glued on)")
    finally:
        lock.release()


def _parses(line: bytes) -> bool:
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


STORAGE_PATIENCE = 60.0  # s an RDB storage call waits out a database that restarts or a link that drops


class PatientRDBStorage(RDBStorage):
    """Optuna's RDB storage, whose calls wait out a database that is restarting or unreachable
    for up to STORAGE_PATIENCE seconds (retrying with backoff) before they fail: a PostgreSQL
    restart costs no trial. Optuna retries none of them itself. A write whose connection died
    after the server committed it would be made twice: for these calls (single-row updates
    and inserts of a trial) the second attempt is refused or repeats the same value."""


_outage: dict[str, float] = {}  # since when this process finds the storage unreachable (said once)
_outage_lock = threading.Lock()  # (the heartbeat thread and the trial's thread meet an outage together)


def _patient(call: Callable) -> Callable:
    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        deadline, pause, failed = time.monotonic() + STORAGE_PATIENCE, 0.5, False
        while True:
            try:
                result = call(self, *args, **kwargs)
            except (OperationalError, InterfaceError, StorageInternalError) as e:
                if not _link_lost(e) or time.monotonic() + pause > deadline:
                    raise
                _say_outage(e)
                failed = True
                time.sleep(pause)
                pause = min(pause * 2, 4.0)
                continue
            if failed:  # (only a call that met the outage may say it is over: others may not touch the database)
                _say_outage(None)
            return result
    return wrapper


def _say_outage(e: BaseException | None) -> None:
    """One line when the storage goes (``e``: why), one when it is back (None), per process."""
    with _outage_lock:
        if e is not None and not _outage:
            _outage["since"] = time.monotonic()
            print(f"charlstm: optuna storage unreachable ({_why(e)}): retrying for up to "
                  f"{STORAGE_PATIENCE:.0f} s", file=sys.stderr)
        elif e is None and _outage:
            print(f"charlstm: optuna storage back after {time.monotonic() - _outage.pop('since'):.0f} s",
                  file=sys.stderr)


def _why(e: BaseException) -> str:
    """The first line of what failed: Optuna words every failed commit alike ("invalid data in
    the commit"), its cause says what it was (the link, too many clients, ...)."""
    cause = e.__cause__ if isinstance(e, StorageInternalError) and e.__cause__ else e
    return first_line(cause)


def _link_lost(e: BaseException) -> bool:
    """The server or the link failed, not the request (Optuna wraps a failed commit in its own
    StorageInternalError: the cause says which)."""
    cause = e.__cause__ if isinstance(e, StorageInternalError) else e
    return isinstance(cause, OperationalError | InterfaceError) or bool(getattr(cause, "connection_invalidated", False))


for _name in ("check_trial_is_updatable", "create_new_study", "create_new_trial", "delete_study", "get_all_studies",
              "get_all_trials", "get_best_trial", "get_n_trials", "get_study_directions", "get_study_id_from_name",
              "get_study_name_from_id", "get_study_system_attrs", "get_study_user_attrs", "get_trial",
              "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
              "get_trial_params", "get_trial_system_attrs", "get_trial_user_attrs", "record_heartbeat",
              "set_study_system_attr", "set_study_user_attr", "set_trial_intermediate_value", "set_trial_param",
              "set_trial_state_values", "set_trial_system_attr", "set_trial_user_attr",
              # private: the ones Optuna's cached storage (which wraps every RDB storage) calls
              # directly; no public hook exists, and these are the only place they are named
              "_create_new_trial", "_get_best_trial_id", "_get_stale_trial_ids", "_get_trials", "_set_trial_param"):
    setattr(PatientRDBStorage, _name, _patient(getattr(RDBStorage, _name)))


def open_storage(url: str | None, spec: SweepSpec | None = None,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None):
    """A journal file (default) or an RDB storage with the spec's heartbeat settings; a worker
    passes ``on_stale``, what to do with a trial whose worker's heartbeat stopped.
    Unreachable -> one line."""
    url = url or names.DEFAULT_STORAGE
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
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental"
            return PatientRDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=on_stale,
            )
    except Exception as e:  # unreachable host, bad credentials, missing driver, ...
        raise TrackingError(f"optuna storage {redact(url)} is unreachable: {_why(e)}") from None


def study_lock(storage_url: str | None, study_name: str) -> FileLock:
    """Processes of this host that set up or finish one study take turns: two sweeps started
    together must not both enqueue the baseline, create a parent run or register the best."""
    url = storage_url or names.DEFAULT_STORAGE
    if is_rdb(url):
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"charlstm-{key}-{study_name}.lock"
    else:
        journal = Path(url.removeprefix("file:"))
        path = journal.with_name(f"{journal.name}.{study_name}.lock")
    return FileLock(str(path))


def make_sampler(spec: SweepSpec, worker_index: int, n_existing: int):
    settings = {k: v for k, v in spec.sampler.items() if k != "name"}
    if "seed" in settings and settings["seed"] is not None:
        # distinct per worker and per resume: the same seed twice would propose the same points
        settings["seed"] = int(settings["seed"]) + 1000 * worker_index + n_existing
    return getattr(optuna.samplers, SAMPLERS[spec.sampler["name"]])(**settings)


def make_pruner(spec: SweepSpec):
    settings = {k: v for k, v in spec.pruner.items() if k != "name"}
    return getattr(optuna.pruners, PRUNERS[spec.pruner["name"]])(**settings)


def load_study(study_name: str, storage, **kwargs):
    try:
        return optuna.load_study(study_name=study_name, storage=storage, **kwargs)
    except KeyError:
        raise ConfigError(f"no study {study_name!r} in that storage: start it with 'charlstm sweep'") from None


def trial_run(study, number: int) -> str:
    """The MLflow run of trial ``number`` of ``study``; one line when it has none."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or not trial.user_attrs.get(names.ATTR_RUN):
        raise ConfigError(f"study {study.study_name} has no trial {number} with a run")
    return trial.user_attrs[names.ATTR_RUN]


def tracking_uri_of(study, given: str | None = None) -> str | None:
    """The MLflow URI to use for a study: the one given, else the one it stored."""
    return given or study.user_attrs.get(names.STUDY_TRACKING)


def study_spec(study) -> SweepSpec:
    """The study definition a study stored for its workers."""
    return stored_spec(study.user_attrs[names.STUDY_SPEC], study.study_name)


# ---------------------------------------------------------------------------------------------
# Counting trials, and queueing them again


def retry_history(trial) -> list[int]:
    """The trials this one retries, oldest first (Optuna's own record of retries)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return list(RetryHeartbeatStaleTrialCallback.retry_history(trial))


def retried_as(trials) -> dict[int, int]:
    """failed trial number -> the number of the trial that retried it."""
    return {history[-1]: t.number for t in trials if (history := retry_history(t))}


def started_trials(trials) -> int:
    """Trials that count toward a study's target: run or running, not queued (WAITING), and
    not failed ones that were queued again (their retry counts instead)."""
    again = retried_as(trials)
    return sum(1 for t in trials if t.state != TrialState.WAITING
               and not (t.state == TrialState.FAIL and t.number in again))


def requeue(study, trial, crashed: bool, max_retry: int | None = None) -> bool:
    """Queue a FAIL trial again, as Optuna's retry callback does (WAITING, same params, its
    number in ``retry_history``), keeping its seed-baseline flag but not its dead run's records;
    the retry resumes from the failed trial's checkpoint. A crash counts against ``max_retry``
    (a config that kills its worker every time), an interruption does not."""
    crashes = trial.system_attrs.get(names.SYS_CRASHES, 0) + int(crashed)
    if crashed and max_retry is not None and crashes > max_retry:
        return False
    history = [*retry_history(trial), trial.number]
    # its params as fixed params, as enqueue_trial queues them: a value outside the space (the
    # seed baseline's) is refused as a trial's own param but taken as a fixed one
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k in CARRIED_ATTRS},
        system_attrs={names.SYS_FIXED_PARAMS: trial.params, names.SYS_FAILED_TRIAL: history[0],
                      names.SYS_RETRY_HISTORY: history, names.SYS_CRASHES: crashes},
    ))
    return True


def study_progress(study) -> str:
    """'5 of 12 trials done, 2 queued to resume' and the like."""
    trials = study.get_trials(deepcopy=False)
    started = started_trials(trials)
    target = study.user_attrs.get(names.STUDY_TARGET)
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
    trials = study.get_trials(deepcopy=False)
    again = retried_as(trials)
    rows = []
    for t in trials:
        row = {"trial": t.number, names.STATE: t.state.name, "value": t.value}
        row.update(t.params or t.system_attrs.get(names.SYS_FIXED_PARAMS, {}))  # (queued: what it will run)
        for key in (names.ATTR_PARAMS_TOTAL, names.CHARS_PER_SEC, names.TRAIN_SECONDS):
            row[key] = t.user_attrs.get(key)
        row[names.COMPUTE_SHARE] = compute_share(t.user_attrs)
        row[names.ATTR_BASELINE] = bool(t.user_attrs.get(names.ATTR_BASELINE))
        row[names.ATTR_FINAL] = bool(t.user_attrs.get(names.ATTR_FINAL))
        row[names.ATTR_FINAL_OF] = t.user_attrs.get(names.ATTR_FINAL_OF)
        if t.state == TrialState.PRUNED and t.intermediate_values:
            row["value"] = t.intermediate_values[max(t.intermediate_values)]
        row["note"] = _note(t, again)
        row[names.ATTR_RUN] = t.user_attrs.get(names.ATTR_RUN)
        row[names.ATTR_RUN_URL] = t.user_attrs.get(names.ATTR_RUN_URL)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_o"] = df[names.STATE].map({s: i for i, s in enumerate(STATE_ORDER)})
    return df.sort_values(["_o", "value"], na_position="last").drop(columns="_o").reset_index(drop=True)


def compute_share(attrs: dict) -> float | None:
    """The share of a trial's training wall-clock that was compute (< 1: the machine was busy)."""
    compute, wall = attrs.get(names.COMPUTE_SECONDS), attrs.get(names.TRAIN_SECONDS)
    return compute / wall if compute is not None and wall else None


def _note(t, again: dict[int, int]) -> str:
    if t.state == TrialState.RUNNING:
        who = t.user_attrs.get(names.ATTR_OWNER)
        return f"running in pid {owner.pid_of(who)}" if who else "starting"
    if t.state == TrialState.WAITING:
        history = retry_history(t)
        return f"queued: resumes trial {history[-1]}" if history else "queued"
    note = t.user_attrs.get(names.ATTR_FAIL_REASON if t.state == TrialState.FAIL else names.ATTR_PRUNED_REASON, "")
    if t.user_attrs.get(names.ATTR_CHECK):
        note = f"check: the scaling laws' predicted optimum; {note}".rstrip("; ")
    elif t.user_attrs.get(names.ATTR_FINAL):
        note = f"final: trial {t.user_attrs.get(names.ATTR_FINAL_OF)}'s config trained longer; {note}".rstrip("; ")
    if t.number in again:
        note = f"{note}; resumed as trial {again[t.number]}".lstrip("; ")
    return note


def format_leaderboard(df, metric: str = names.VAL_BPC, top: int = 10) -> str:
    if df.empty:
        return "no trials"
    cols = [c for c in df.columns if c not in (names.ATTR_RUN, names.ATTR_RUN_URL, names.ATTR_FINAL_OF, names.COMPUTE_SHARE)]
    shown = df[cols].head(top).copy()
    shown["note"] = shown["note"].map(lambda s: s if len(s) <= 60 else s[:57] + "...")
    shown = shown.rename(columns={"value": metric})
    counts = df[names.STATE].value_counts().to_dict()
    summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    with_fmt = shown.to_string(
        index=False,
        float_format=lambda v: f"{v:,.4f}" if abs(v) < 100 else f"{v:,.0f}",
        na_rep="-",
    )
    return f"leaderboard (top {min(top, len(df))} of {len(df)}: {summary}; PRUNED shows its last report)\n{with_fmt}"

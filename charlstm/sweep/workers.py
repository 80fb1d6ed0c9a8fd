"""The processes that run a study: a worker (trials until the study's target or deadline), the
sweep that supervises local workers (one that dies is replaced and its trial queued to resume; a
stop request pauses them all), and the sweep as a whole (set up, work, finish)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import optuna
import torch
from mlflow.entities import RunStatus
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from charlstm import interrupt, machine, names, status
from charlstm.errors import (
    CharlstmError,
    ConfigError,
    StorageError,
    TrackingError,
    first_line,
    redact,
)
from charlstm.sweep.objective import Objective
from charlstm.sweep.recovery import recover_orphans, stale_trial_handler
from charlstm.sweep.runs import end_parent_run, end_trial_run
from charlstm.sweep.spec import SweepSpec
from charlstm.sweep.store import (
    is_rdb,
    load_study,
    make_pruner,
    make_sampler,
    open_storage,
    requeue,
    retried_as,
    study_progress,
    study_spec,
    tracking_uri_of,
)
from charlstm.sweep.study import check_corpus, finish_study, next_action, setup_study

STOP_GRACE = 60  # s a stopped worker gets to save its checkpoint before it is killed


SWEEP_PID = "CHARLSTM_SWEEP_PID"  # told to the workers a sweep spawns: the process they die with


def join_study(study_name: str, storage_url: str | None, tracking_uri: str | None, worker_index: int):
    """A worker's view of a study: (study with its sampler and pruner, spec, tracking URI)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our one line, not its traceback
    storage = open_storage(storage_url)
    first = load_study(study_name, storage)
    spec = study_spec(first)
    check_corpus(first, spec)  # before any trial of it is asked for
    uri = tracking_uri_of(first, tracking_uri)
    if uri is None:
        raise ConfigError("this study's tracking URI was not stored: pass --tracking-uri")
    if is_rdb(storage_url):  # now with this study's heartbeat settings
        storage = open_storage(storage_url, spec, stale_trial_handler(uri, spec.max_retry))
    n_existing = len(load_study(study_name, storage).get_trials(deepcopy=False))
    study = load_study(study_name, storage, sampler=make_sampler(spec, worker_index, n_existing),
                       pruner=make_pruner(spec))
    return study, spec, uri


def _stderr(line: str) -> None:
    print(f"{status.stamp()} {line}", file=sys.stderr, flush=True)


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
    study, spec, uri = join_study(study_name, storage_url, tracking_uri, worker_index)
    heartbeats = is_rdb(storage_url)
    recover_orphans(study, uri, spec, heartbeats=heartbeats)  # a killed sweep's trials go first
    if threads:
        torch.set_num_threads(threads)
    objective = Objective(spec, uri, study.user_attrs[names.STUDY_PARENT], threads,
                          lambda line: log(f"worker {worker_index}: {line}"), f"worker {worker_index}")
    ran = 0
    while (action := next_action(study, heartbeats, spec, storage_url)) != "done":
        interrupt.check("between trials")
        if action == "wait":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fail_stale_trials is "experimental"
                optuna.storages.fail_stale_trials(study)
            time.sleep(min(spec.heartbeat_interval, 5))
            continue
        objective.trial_number = None
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except KeyboardInterrupt:  # Optuna has marked the trial FAIL; it resumes next time
            _requeue_failed(study, objective.trial_number)
            raise
        except UpdateFinishedTrialError:  # another process ended it first (a stale heartbeat)
            _lost_to_another(study, objective.trial_number, uri, log)
        except (OSError, SQLAlchemyError) as e:  # the Optuna storage itself failed
            raise StorageError(f"optuna storage {redact(storage_url or names.DEFAULT_STORAGE)}: {first_line(e)}") from None
        if objective.storage_failed is not None:  # the next trial would fail the same way
            _requeue_failed(study, objective.trial_number)
            raise objective.storage_failed
        ran += 1
    return ran


def _lost_to_another(study, number: int | None, uri: str, log: Callable[[str], None]) -> None:
    """This worker ran a trial that another process had failed meanwhile (its heartbeat looked
    stale: a very busy machine) and queued again: its run ends as Optuna has it, FAIL."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        return
    reason = "failed by another worker while it ran (its heartbeat went stale); its retry runs it again"
    log(f"trial {number}: {reason}")
    with suppress(TrackingError):
        end_trial_run(uri, trial.user_attrs.get(names.ATTR_RUN), TrialState.FAIL, reason)


def _requeue_failed(study, number: int | None) -> None:
    """Queue again a trial this worker stopped (not a crash: it counts no retry)."""
    trials = study.get_trials(deepcopy=False)
    trial = next((t for t in trials if t.number == number), None)
    if trial is not None and trial.state == TrialState.FAIL and trial.number not in retried_as(trials):
        requeue(study, trial, crashed=False)


def spawn_worker(spec: SweepSpec, storage_url: str | None, uri: str, threads: int, index: int,
                 output: Path | None = None):
    """A worker process of this sweep, in its own session: a Ctrl-C at the terminal reaches
    the sweep alone, which passes one stop on to each worker. ``output``: a file its stdout and
    stderr go to (appended), where a live view holds the terminal."""
    sink = None
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        sink = open(output, "ab")  # noqa: SIM115 (the worker holds it; ours closes below)
    try:
        with interrupt.blocked():  # held back until the worker has its handlers (it unblocks them)
            return subprocess.Popen(
                [sys.executable, "-m", "charlstm", "worker", "--study", spec.study,
                 "--storage", storage_url or names.DEFAULT_STORAGE, "--tracking-uri", uri,
                 "--threads", str(threads), "--worker-index", str(index), "--spawned"],
                start_new_session=True, env={**os.environ, SWEEP_PID: str(os.getpid())},
                stdout=sink, stderr=sink,
            )
    finally:
        if sink is not None:
            sink.close()


def exit_reason(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def supervise(spec: SweepSpec, storage_url: str | None, uri: str, workers: int, threads: int,
              say: Callable[[str], None], output: Path | None = None) -> None:
    """Run ``workers`` worker processes until the study is done. One that dies (SIGKILL, an
    OOM kill, a crash) has its trial failed and queued to resume, and is replaced; a stop
    request is passed on to every worker, which saves its trial's checkpoint and exits.
    ``output``: see ``spawn_worker``."""
    heartbeats = is_rdb(storage_url)
    study = load_study(spec.study, open_storage(storage_url, spec))
    procs = {i: spawn_worker(spec, storage_url, uri, threads, i, output) for i in range(workers)}
    spares = 3 * workers + (study.user_attrs.get(names.STUDY_TARGET) or 0)  # replacements allowed
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
                    procs[i] = spawn_worker(spec, storage_url, uri, threads, i, output)
                    say(f"{why}{lost}; started a replacement")
                else:
                    errors.append(f"worker {i}")
                    say(f"{why}{lost}")
            if stopped_at is None and not procs and next_action(study, heartbeats, spec, storage_url) == "run":
                if errors or spares <= 0:
                    raise CharlstmError(f"{', '.join(errors) or 'every worker'} stopped on an error (above) "
                                        "before the study was done; mend it, then run the sweep again")
                spares -= 1  # work was queued after every worker had ended (a late retry)
                procs[0] = spawn_worker(spec, storage_url, uri, threads, 0, output)
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
    verbose: bool = False,
    watch: bool = True,
):
    """Set the study up, run ``workers`` local processes on it, then summarise. Returns the study.
    ``quiet``: print nothing; ``watch=False``: nothing while it runs, only the summary at the end.

    Ctrl-C / SIGTERM pause it: ``StudyPaused`` says what was kept and queued. A full disk or a
    broken store stops it with that ``StorageError``, the trial in hand queued again."""
    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"--n-trials must be 0 or more, got {n_trials}")
    if workers < 1:
        raise ConfigError(f"--workers must be 1 or more, got {workers}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout}")
    study, uri = setup_study(spec, storage_url, tracking_uri, n_trials, timeout, force)
    work(spec, study, storage_url, uri, workers, quiet or not watch, verbose)
    return finish_study(spec, spec.study, storage_url, uri, quiet=quiet)


def work(spec: SweepSpec, study, storage_url: str | None, uri: str, workers: int, quiet: bool = False,
         verbose: bool = False) -> None:
    """Run ``workers`` local processes on a set-up study until its target (or a stop), shown
    as it goes (``status.Watch``: a live view on a terminal, timestamped lines otherwise)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    if (study.user_attrs.get(names.STUDY_MACHINE) or {}).get("threads") != threads:  # what a second is worth here
        study.set_user_attr(names.STUDY_MACHINE, machine.describe(threads))
    mode = status.view_mode(quiet)
    reader = status.Reader(spec.study, storage_url, uri, workers)
    # worker processes write to a file while the live view holds the terminal; it shows their lines
    output = Path(spec.base_config.train.out_dir) / spec.study / "workers.log" if mode == "live" else None
    try:
        with status.Watch(reader, mode, verbose, logs=[output] if output else []) as watch:
            watch.event(f"study {spec.study}: {study_progress(study)}; target {study.user_attrs[names.STUDY_TARGET]}, "
                        f"{workers} worker(s) x {threads} thread(s)")
            if workers == 1:
                run_worker(spec.study, storage_url, uri, threads, 0,
                           log=watch.event if mode == "live" else _stderr)
            else:
                supervise(spec, storage_url, uri, workers, threads, watch.event, output)
    except KeyboardInterrupt as e:
        raise pause_study(spec, storage_url, uri, e) from None
    except CharlstmError as e:  # (a trial stopped by it was queued again) the parent run says why
        with suppress(CharlstmError):  # (if the store itself is what failed, it cannot)
            if not spec.confirms:  # (a confirmation's parent is the confirmed study's)
                end_parent_run(uri, study.user_attrs[names.STUDY_PARENT], RunStatus.FAILED, f"stopped: {e}")
        raise


def pause_study(spec: SweepSpec, storage_url: str | None, uri: str, e: KeyboardInterrupt) -> StudyPaused:
    """After a stop: trials whose worker did not get to save are failed and queued too, and the
    parent run ends KILLED (the next sweep reopens it)."""
    signal_name = interrupt.signal_name(e)
    study = load_study(spec.study, open_storage(storage_url, spec))
    recover_orphans(study, uri, spec, why=f"its worker was stopped ({signal_name}) before it could save",
                    heartbeats=is_rdb(storage_url), crashed=False)
    progress = study_progress(study)
    if not spec.confirms:  # (a confirmation's parent is the confirmed study's, which is done)
        end_parent_run(uri, study.user_attrs[names.STUDY_PARENT], RunStatus.KILLED, f"paused ({signal_name}): {progress}")
    return StudyPaused(signal_name, f"study {spec.study} paused by {signal_name}: {progress}")

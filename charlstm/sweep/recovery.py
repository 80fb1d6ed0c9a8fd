"""Trials whose worker is gone: found (a process of this host that no longer exists, or no
worker at all), failed with the reason, their run ended to match, and queued again to resume
from their checkpoint. Used by workers, the sweep that runs them, and ``charlstm doctor``.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from charlstm import names, owner
from charlstm.errors import TrackingError
from charlstm.sweep.runs import end_trial_run, orphaned_trial_runs
from charlstm.sweep.spec import SweepSpec
from charlstm.sweep.store import requeue

UNSIGNED_GRACE = 60  # s: a RUNNING trial that no worker signed for this long lost it at birth


def _annotate(study, trial, key: str, value: Any) -> None:
    """Set a user attr on a trial this process did not ask for (a dead worker's). Optuna has no
    public way: ``Trial`` objects belong to the process that asked; this is the storage call
    Optuna's own stale-trial handling makes."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def fail_trial(study, trial, uri: str | None, reason: str, retry: bool, crashed: bool = True,
               max_retry: int | None = None) -> bool | None:
    """FAIL a RUNNING trial of a dead or stopped worker with ``reason``, queue it again when
    ``retry``, and end its run to match (a store that fails there leaves that to ``doctor``:
    the retry is never lost to it). True when queued, False when not (``max_retry``), None
    when another process ended the trial first."""
    try:
        _annotate(study, trial, names.ATTR_FAIL_REASON, reason)
        study.tell(trial.number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):  # no longer RUNNING: someone else did it
        return None
    queued = retry and requeue(study, trial, crashed=crashed, max_retry=max_retry)
    with suppress(TrackingError):
        end_trial_run(uri, trial.user_attrs.get(names.ATTR_RUN), TrialState.FAIL, reason)
    return queued


def orphans(study, pids: set[int] | None = None, heartbeats: bool = False) -> list:
    """RUNNING trials whose worker is certainly gone: a process of this host that no longer
    exists (``pids``: only those), or, without heartbeats, no worker signed for the trial at all
    within UNSIGNED_GRACE seconds of its start."""
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get(names.ATTR_OWNER)
        if who:
            gone = owner.on_this_host(who) and not owner.alive(who)
            if gone and (pids is None or owner.pid_of(who) in pids):
                found.append(t)
        elif pids is None and not heartbeats and t.datetime_start is not None \
                and (datetime.now() - t.datetime_start).total_seconds() > UNSIGNED_GRACE:
            found.append(t)
    return found


def recover_orphans(study, uri: str | None, spec: SweepSpec, pids: set[int] | None = None,
                    why: str | None = None, heartbeats: bool = False, crashed: bool = True) -> list[int]:
    """FAIL the trials of dead workers with the reason and queue each again to resume from its
    checkpoint (a crash counts against ``max_retry``, a stop does not: ``crashed``). Returns the
    numbers of the trials queued again."""
    queued = []
    for t in orphans(study, pids, heartbeats):
        who = t.user_attrs.get(names.ATTR_OWNER)
        reason = why or (f"its worker (pid {owner.pid_of(who)}) had died" if who else "its worker died as it began")
        if fail_trial(study, t, uri, reason, retry=True, crashed=crashed, max_retry=spec.max_retry):
            queued.append(t.number)
    if pids is None:  # a full look: also the runs that outlived their ended trials
        close_left_runs(study, uri)
    return queued


def close_left_runs(study, uri: str | None) -> list[str]:
    """Runs still RUNNING whose trial has ended and whose process is gone (it died, or its
    store failed just as it ended the run): ended as their trial ended. Returns their ids."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    ended = {t.user_attrs.get(names.ATTR_RUN): t for t in study.get_trials(deepcopy=False, states=done)}
    parent = study.user_attrs.get(names.STUDY_PARENT)
    if uri is None or parent is None or not ended.keys() - {None}:
        return []
    closed = []
    with suppress(TrackingError):  # (a store that fails now leaves it to the next look, or doctor)
        for run_id in set(orphaned_trial_runs(uri, parent)) & ended.keys():
            t = ended[run_id]
            end_trial_run(uri, run_id, t.state, t.user_attrs.get(names.ATTR_FAIL_REASON) if t.state == TrialState.FAIL else None)
            closed.append(run_id)
    return closed


def stale_trial_handler(uri: str, max_retry: int):
    """What a worker on RDB storage does with a trial whose worker's heartbeat stopped (Optuna
    has failed it by then): end its run to match, and queue it again."""
    def handle(study, trial) -> None:
        requeue(study, trial, crashed=True, max_retry=max_retry)
        with suppress(TrackingError):  # (doctor reconciles a run a failing store left open)
            end_trial_run(uri, trial.user_attrs.get(names.ATTR_RUN), TrialState.FAIL,
                          "its worker died (Optuna heartbeat went stale)")

    return handle

"""A study's runs in MLflow: one parent run per study (found again by every worker and every
resume), and the rule that ends each trial's run as its Optuna trial ended (``RUN_STATUS``, with
the trial's state as the run's ``state`` tag), so the two never disagree.
"""

from __future__ import annotations

import time
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunStatus
from optuna.trial import TrialState

from charlstm import names
from charlstm.tracking import (
    client_for,
    end_run,
    forget_error,
    get_or_create_experiment,
    mark_stale_runs,
    orphaned_runs,
    owner_tags,
    set_tags,
    store_errors,
)

# an Optuna trial's final state -> its MLflow run's status (the run's ``state`` tag is the Optuna name)
RUN_STATUS = {TrialState.COMPLETE: RunStatus.FINISHED, TrialState.PRUNED: RunStatus.KILLED,
              TrialState.FAIL: RunStatus.FAILED}


def study_parent_run(uri: str, experiment: str, study_name: str, settings: dict[str, Any],
                     known_run_id: str | None = None) -> str:
    """The study's parent run, RUNNING: found by tag (every worker, every resume) or created
    once, with the study's ``settings`` (its definition) as params."""
    client = client_for(uri)
    exp_id = get_or_create_experiment(uri, experiment)
    with store_errors("opening the study's parent run"):
        mark_stale_runs(uri, exp_id)
        run_id = find_parent_run(uri, exp_id, study_name, known_run_id)
        if run_id is None:
            tags = {names.TAG_STUDY: study_name, names.TAG_ROLE: names.ROLE_PARENT, **owner_tags()}
            run_id = client.create_run(exp_id, run_name=f"study-{study_name}", tags=tags).info.run_id
            params = {
                **{k: v for k, v in settings.items() if k not in ("space", "overrides")},
                **{f"space.{k}": v for k, v in settings["space"].items()},
                **{f"override.{k}": v for k, v in settings["overrides"].items()},
            }
            client.log_batch(run_id, params=[Param(f"sweep.{k}", str(v)[:6000]) for k, v in params.items()])
        else:
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            set_tags(uri, run_id, owner_tags())
            forget_error(uri, run_id)
        client.log_text(run_id, yaml.safe_dump(settings, sort_keys=False),
                        f"sweep/{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    return run_id


def find_parent_run(uri: str, experiment_id: str, study_name: str, known_run_id: str | None = None) -> str | None:
    """The study's parent run: the one it knows, if it is still there, else the one tagged so."""
    found = client_for(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{names.TAG_STUDY}` = '{study_name}' and tags.`{names.TAG_ROLE}` = '{names.ROLE_PARENT}'",
        max_results=10,
    )
    ids = [r.info.run_id for r in found]
    return known_run_id if known_run_id in ids else (ids[0] if ids else None)


def finish_parent_run(uri: str, run_id: str, metric: str, counts: dict[str, int],
                      best: dict[str, Any] | None, board) -> None:
    """Trial counts by state, the best trial (``number``, ``run_id``, ``value``, ``params``) and
    the leaderboard; then FINISHED."""
    client = client_for(uri)
    n = sum(counts.values())
    ts = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k.lower()}", float(v), ts, n) for k, v in counts.items()]
    with store_errors("finishing the study's parent run"):
        if best is not None:
            metrics.append(Metric(f"best_{metric}", float(best["value"]), ts, n))
            set_tags(uri, run_id, {
                "best.trial": str(best["number"]), "best.run_id": best["run_id"] or "",
                f"best.{metric}": f"{best['value']:.6f}",
                **{f"best.{k}": str(v) for k, v in best["params"].items()},
            })
        client.log_batch(run_id, metrics=metrics)
        if not board.empty:
            client.log_text(run_id, board.to_csv(index=False), "leaderboard.csv")
        forget_error(uri, run_id)
        end_run(uri, run_id, RunStatus.FINISHED)


def log_confirmation(uri: str, run_id: str, table_csv: str, metrics: dict[str, float]) -> None:
    """A confirmation's table (``confirm.csv``) and per-config mean / std / interval on the
    study's parent run."""
    client = client_for(uri)
    ts = int(time.time() * 1000)
    with store_errors("logging the confirmation to the study's parent run"):
        client.log_text(run_id, table_csv, "confirm.csv")
        client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items() if v == v])


def orphaned_trial_runs(uri: str, parent_run_id: str) -> list[str]:
    """Runs of the parent's experiment left RUNNING by a process of this host that is gone."""
    with store_errors("looking for runs left running"):
        experiment = client_for(uri).get_run(parent_run_id).info.experiment_id
        return [r.info.run_id for r in orphaned_runs(uri, experiment)]


def end_trial_run(uri: str | None, run_id: str | None, state: TrialState, reason: str | None = None) -> None:
    """End a trial's MLflow run to match its Optuna ``state``: status, ``state`` tag, reason."""
    if not run_id:
        return
    tags = {names.TAG_STATE: state.name, **({names.TAG_ERROR: reason} if reason else {})}
    with store_errors(f"ending run {run_id}"):
        end_run(uri, run_id, RUN_STATUS[state], tags)


def end_parent_run(uri: str, run_id: str, status: int, why: str) -> None:
    """A paused (``RunStatus.KILLED``) or stopped (``FAILED``) study's parent run ends with the
    reason; the next sweep of the study reopens it."""
    with store_errors("ending the study's parent run"):
        end_run(uri, run_id, status, {names.TAG_ERROR: why})

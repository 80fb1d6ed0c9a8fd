"""``charlstm doctor``: reconcile a study's Optuna trials with their MLflow runs.

Optuna records what a trial is; MLflow what its run did. They agree when every finished trial's
run has the status ``runs.RUN_STATUS[state]`` and the tag ``state=<state>``, nothing is RUNNING
without a live process behind it, every run of the study belongs to a trial, and every
checkpoint folder to a trial. ``check`` lists what disagrees; each problem carries the repair
``--fix`` may make (only safe ones: a dead worker's trial is failed and queued to resume, a
run's status follows its trial's final state, a dead sweep's parent run ends, a checkpoint
folder of no trial is moved aside). Optuna's state is the truth: it is never rewritten.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from mlflow.entities import RunStatus
from optuna.trial import TrialState

from charlstm import checkpoint, gc, names, owner, tracking
from charlstm.errors import human_bytes
from charlstm.sweep.recovery import fail_trial, orphans
from charlstm.sweep.runs import RUN_STATUS, end_trial_run
from charlstm.sweep.store import is_rdb, load_study, open_storage, study_spec, tracking_uri_of

RUNNING = RunStatus.to_string(RunStatus.RUNNING)  # (as MLflow's runs spell their status)
CHECKPOINTS = f"{names.ARTIFACT_CHECKPOINTS}/"  # a run's checkpoint artifacts' prefix


@dataclass
class Problem:
    """One disagreement, and the repair --fix makes for it (None: a person must decide)."""

    study: str
    trial: int | None
    run_id: str | None
    what: str
    fix: str | None = None  # what the repair does, in words
    repair: Callable[[], None] | None = None


@dataclass
class _Seen:
    """A study as the doctor reads it once: its trials, its MLflow runs, which trial has which run."""

    name: str
    study: optuna.Study
    uri: str | None
    client: Any
    runs: dict[str, Any]  # run id -> run, every run tagged with the study
    runs_of: dict[int, Any]  # trial number -> its run
    dead: set[int]  # RUNNING trials whose worker is gone
    max_retry: int
    folder: Path  # where its trials' checkpoint folders are

    def problem(self, trial, run_id, what, fix=None, repair=None) -> Problem:
        return Problem(self.name, trial, run_id, what, fix, repair)


def check(study_name: str, storage_url: str | None = None, tracking_uri: str | None = None) -> list[Problem]:
    """Every disagreement between the study's trials, its runs and its checkpoint folders."""
    study = load_study(study_name, open_storage(storage_url))
    spec = study_spec(study)
    uri = tracking_uri_of(study, tracking_uri)
    client = tracking.client_for(uri)
    experiment = client.get_experiment_by_name(spec.base_config.tracking.experiment)
    runs = {} if experiment is None else {r.info.run_id: r for r in client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{names.TAG_STUDY}` = '{study_name}'", max_results=50000)}
    trials = study.get_trials(deepcopy=False)
    dead = {t.number for t in orphans(study, heartbeats=is_rdb(storage_url))}
    seen = _Seen(study_name, study, uri, client, runs, _runs_by_trial(trials, runs), dead, spec.max_retry,
                 Path(spec.base_config.train.out_dir) / study_name)
    return [*_trial_problems(seen, trials), *_run_problems(seen, trials), *_folder_problems(seen, trials),
            *_travel_problems(seen, trials)]


def _trial_problems(seen: _Seen, trials) -> list[Problem]:
    """Trials RUNNING with their worker gone, finished ones with no run or a run that disagrees."""
    out = []
    for t in trials:
        run = seen.runs_of.get(t.number)
        run_id = run.info.run_id if run is not None else t.user_attrs.get(names.ATTR_RUN)
        if t.number in seen.dead:
            out.append(seen.problem(
                t.number, run_id, "RUNNING, but its worker process is gone",
                "FAIL it and queue it to resume from its checkpoint",
                lambda t=t: fail_trial(seen.study, t, seen.uri, "its worker was gone (charlstm doctor)", retry=True,
                                       max_retry=seen.max_retry)))
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            continue  # queued, or running in a live process: nothing to agree on yet
        elif run is None:
            if t.user_attrs.get(names.ATTR_RUN):
                out.append(seen.problem(t.number, run_id, "its MLflow run is missing"))
            elif not (t.state == TrialState.FAIL and t.user_attrs.get(names.ATTR_FAIL_REASON)):
                out.append(seen.problem(t.number, None, "finished without an MLflow run"))
        else:
            state, status = run.data.tags.get(names.TAG_STATE), run.info.status
            expected = RunStatus.to_string(RUN_STATUS[t.state])
            if status != expected or state != t.state.name:
                out.append(seen.problem(
                    t.number, run_id, f"{t.state.name} in Optuna, but its run is {status} with state={state}",
                    f"end the run {expected} with state={t.state.name}",
                    lambda t=t, run_id=run_id: end_trial_run(seen.uri, run_id, t.state,
                                                             t.user_attrs.get(names.ATTR_FAIL_REASON))))
            if run.data.tags.get(names.TAG_UNSENT):
                out.append(_unsent_problem(seen, t.number, run))
    return out


def _unsent_problem(seen: _Seen, number: int, run) -> Problem:
    """A run that ended with artifacts its store could not take (``MLflowTracker._send``).
    --fix sends what this machine can make again from the trial's checkpoints (the checkpoints,
    the MLflow Model, config.yaml); text samples were not kept, and are said lost."""
    run_id, unsent = run.info.run_id, run.data.tags[names.TAG_UNSENT].split(", ")
    folder = seen.folder / f"trial-{number:04d}"
    best = folder / names.BEST_PT if (folder / names.BEST_PT).is_file() else folder / names.LAST_PT
    here = [a for a in unsent if a.startswith(CHECKPOINTS) and (folder / a.removeprefix(CHECKPOINTS)).is_file()]
    here += [a for a in unsent if a in (names.ARTIFACT_MODEL, names.ARTIFACT_CONFIG) and best.is_file()]

    def send() -> None:
        with tracking.store_errors(f"sending the artifacts of run {run_id}"):
            for artifact in here:
                if artifact.startswith(CHECKPOINTS):
                    seen.client.log_artifact(run_id, str(folder / artifact.removeprefix(CHECKPOINTS)),
                                             names.ARTIFACT_CHECKPOINTS)
                elif artifact == names.ARTIFACT_CONFIG:
                    seen.client.log_text(run_id, yaml.safe_dump(checkpoint.load(best)["config"], sort_keys=False),
                                         names.ARTIFACT_CONFIG)
                else:
                    tracking.log_model(seen.uri, run_id, best)
            lost = [a for a in unsent if a not in here]
            if lost:
                tracking.set_tags(seen.uri, run_id, {names.TAG_UNSENT_LOST: ", ".join(lost)})
            seen.client.delete_tag(run_id, names.TAG_UNSENT)

    fix = f"send {', '.join(here)} from {folder}" + ("; say the rest lost" if len(here) < len(unsent) else "")
    return seen.problem(number, run_id, f"its run ended with artifacts not sent: {', '.join(unsent)}", fix, send)


def _run_problems(seen: _Seen, trials) -> list[Problem]:
    """The parent run left RUNNING by a sweep that is gone, a second parent, runs of no trial."""
    out = []
    parent_id = seen.study.user_attrs.get(names.STUDY_PARENT)
    linked = {r.info.run_id for r in seen.runs_of.values()}
    active = any(t.state == TrialState.RUNNING and t.number not in seen.dead for t in trials)
    for run_id, run in seen.runs.items():
        tags = run.data.tags
        who = tags.get(names.TAG_OWNER, "")
        gone = run.info.status == RUNNING and owner.on_this_host(who) and not owner.alive(who)
        if tags.get(names.TAG_ROLE) == names.ROLE_PARENT:
            if gone and not active:  # (a second sweep of the study may still be running it)
                out.append(seen.problem(
                    None, run_id, "the study's parent run is RUNNING, but its sweep is gone",
                    "end it KILLED (the next sweep reopens it)",
                    lambda run_id=run_id: tracking.end_run(seen.uri, run_id, RunStatus.KILLED,
                                                           {names.TAG_ERROR: "its sweep was gone"})))
            elif run_id != parent_id:
                out.append(seen.problem(None, run_id, "a second parent run for this study"))
        elif run_id not in linked:
            what = f"run of no trial (tag trial={tags.get(names.TAG_TRIAL)}), {run.info.status}"
            if gone:
                out.append(seen.problem(None, run_id, what, "end it FAILED", lambda run_id=run_id: end_trial_run(
                    seen.uri, run_id, TrialState.FAIL, "its trial is gone (charlstm doctor)")))
            elif run.info.status != RUNNING:
                out.append(seen.problem(None, run_id, what))
    return out


def _folder_problems(seen: _Seen, trials) -> list[Problem]:
    """Checkpoint folders (``trial-NNNN``) of no trial of the study."""
    out = []
    numbers = {t.number for t in trials}
    for path in sorted(seen.folder.glob("trial-*")):
        suffix = path.name.removeprefix("trial-")
        if path.is_dir() and not (suffix.isdigit() and int(suffix) in numbers):
            aside = seen.folder / "orphaned" / path.name
            out.append(seen.problem(None, None, f"checkpoint folder of no trial: {path}", f"move it to {aside}",
                                    lambda path=path, aside=aside: _move(path, aside)))
    return out


def _travel_problems(seen: _Seen, trials) -> list[Problem]:
    """Copies of checkpoints sent for a retry elsewhere that no retry will read (``gc.travelled_left``)."""
    return [seen.problem(t.number, run_id, f"{t.state.name}, but its run still keeps the {human_bytes(size)} copy "
                         "of a checkpoint sent for a retry elsewhere", f"delete its {tracking.TRAVELLED}/ (no retry will read it)",
                         lambda run_id=run_id: tracking.delete_artifacts(seen.uri, run_id, tracking.TRAVELLED))
            for t, run_id, size in gc.travelled_left(seen.uri, trials)]


def _runs_by_trial(trials, runs: dict) -> dict:
    """Each trial's run: the one its record names, or, for a trial that died before recording
    it, the run tagged with its number."""
    by_tag = {}
    for run in runs.values():
        number = run.data.tags.get(names.TAG_TRIAL)
        if number is not None and number.isdigit() and run.data.tags.get(names.TAG_ROLE) != names.ROLE_PARENT:
            by_tag.setdefault(int(number), run)
    out = {}
    for t in trials:
        named = t.user_attrs.get(names.ATTR_RUN)
        run = runs.get(named) if named else by_tag.get(t.number)
        if run is not None:
            out[t.number] = run
    return out


def _move(path: Path, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(to))


def format_problems(problems: list[Problem], fixed: bool = False) -> str:
    """A table: study, trial, run, problem, and the repair (made, or --fix would make)."""
    rows = [{"study": p.study, "trial": "-" if p.trial is None else p.trial,
             "run": (p.run_id or "-")[:12], "problem": p.what,
             ("fixed" if fixed else "--fix would"): p.fix or "(left for you: no safe repair)"}
            for p in problems]
    return pd.DataFrame(rows).to_string(index=False)


def study_names(storage_url: str | None) -> list[str]:
    return optuna.get_all_study_names(open_storage(storage_url))


def repair(problems: list[Problem]) -> list[Problem]:
    """Make every safe repair; returns the problems it repaired."""
    done = []
    for p in problems:
        if p.repair is not None:
            p.repair()
            done.append(p)
    return done

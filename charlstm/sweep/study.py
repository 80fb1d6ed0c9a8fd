"""A study's life in its storage: set up (or resumed) with its parent run and trial target, its
corpus checked, its seed baseline, grid and final trial queued, what it needs next, and finished
(the parent run's summary, the registered best, the answer and the leaderboard)."""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState

from charlstm import machine, names, scaling, tracking
from charlstm.config import flatten
from charlstm.errors import ConfigError, TrackingError
from charlstm.schedule import resolve_lr
from charlstm.sweep.kinds import final_attrs, kind_of
from charlstm.sweep.recovery import recover_orphans
from charlstm.sweep.runs import finish_parent_run, study_parent_run
from charlstm.sweep.spec import SEED_BASELINE, SweepSpec, vocab_size
from charlstm.sweep.store import (
    STATE_ORDER,
    best_trial,
    format_leaderboard,
    is_rdb,
    leaderboard,
    load_study,
    make_pruner,
    open_storage,
    started_trials,
    study_lock,
)


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
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study"
    storage = open_storage(storage_url, spec)
    with study_lock(storage_url, spec.study):
        study = optuna.create_study(
            study_name=spec.study,
            storage=storage,
            direction="minimize",  # the metric is a loss
            load_if_exists=True,
            pruner=make_pruner(spec),
        )
        if study.metric_names != [spec.metric]:  # what optuna-dashboard and the plots call it
            with warnings.catch_warnings():  # experimental since Optuna 3.2, public and stable
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([spec.metric])
        stored = study.user_attrs.get(names.STUDY_SPEC)
        fresh = stored is None
        if not fresh and stored["space"] != spec.as_dict()["space"] and not force:
            changed = sorted(set(stored["space"]) ^ set(spec.as_dict()["space"])) or [
                k for k in spec.space if stored["space"].get(k) != spec.as_dict()["space"][k]
            ]
            raise ConfigError(
                f"study {spec.study!r} exists with another search space (changed: {', '.join(changed)}); "
                "resume with --force to accept it, or give the study a new name"
            )
        study.set_user_attr(names.STUDY_SPEC, spec.as_dict())
        check_corpus(study, spec, accept=force)
        uri = tracking.resolve_uri(tracking_uri or spec.base_config.tracking.uri)
        if "@" not in uri:  # never store a URI that could carry a password
            study.set_user_attr(names.STUDY_TRACKING, uri)
        if spec.confirms:  # a confirmation's runs are children of the confirmed study's parent
            parent = load_study(spec.confirms, storage).user_attrs[names.STUDY_PARENT]
        else:
            parent = study_parent_run(uri, spec.base_config.tracking.experiment, spec.study,
                                      spec.as_dict(), study.user_attrs.get(names.STUDY_PARENT))
        study.set_user_attr(names.STUDY_PARENT, parent)
        recover_orphans(study, uri, spec, heartbeats=is_rdb(storage_url))
        _set_target(study, spec, n_trials, timeout)
        if fresh and spec.scaling:  # (its grid is its trials, the seed baseline among them)
            enqueue_grid(study, spec)
        elif fresh and spec.enqueue_baseline:
            enqueue_baseline(study, spec)
    return study, uri


def check_corpus(study, spec: SweepSpec, accept: bool = False) -> None:
    """Every worker of a study trains on the same corpus: the first to set the study up stores
    its digest; a worker (or a later sweep) whose corpus differs refuses, naming both digests
    (``accept``: a sweep told ``--force`` stores its own instead)."""
    ours = spec.corpus.sha256
    theirs = study.user_attrs.get(names.STUDY_CORPUS)
    if theirs is None or accept:
        study.set_user_attr(names.STUDY_CORPUS, ours)
    elif theirs != ours:
        raise ConfigError(f"corpus {spec.base_config.data.corpus} here has sha256 {ours[:16]}..., study {spec.study}'s "
                          f"{theirs[:16]}...: give every worker the study's corpus file")


def _set_target(study, spec: SweepSpec, n_trials: int | None, timeout: float | None) -> None:
    """Without ``n_trials``, join the target a running or interrupted sweep left unreached (and
    its deadline, unless ``timeout`` is given); otherwise aim ``n_trials`` (default: the study
    file's) past the trials started so far, with a deadline ``timeout`` (or the file's) away."""
    trials = study.get_trials(deepcopy=False)
    started = started_trials(trials)
    target = study.user_attrs.get(names.STUDY_TARGET)
    final_pending = any(kind_of(t.user_attrs).final_budget and t.state == TrialState.WAITING for t in trials)
    joining = n_trials is None and target is not None and (started < target or final_pending)
    if not joining:
        n = n_trials if n_trials is not None else spec.n_trials
        study.set_user_attr(names.STUDY_TARGET, started + n if n is not None else None)
    if not joining or timeout is not None:
        timeout = timeout if timeout is not None else spec.timeout
        study.set_user_attr(names.STUDY_DEADLINE, time.time() + timeout if timeout else None)


def enqueue_baseline(study, spec: SweepSpec) -> None:
    """The seed notebook's setting as the study's first trial."""
    study.enqueue_trial(baseline_params(spec), user_attrs={names.ATTR_BASELINE: True}, skip_if_exists=True)


def baseline_params(spec: SweepSpec) -> dict[str, Any]:
    """The seed notebook's setting as params of the space. A number outside the space's bounds
    is trained as it is (Optuna takes a fixed value out of range), so that a space shaped for
    larger models still has the seed baseline as its reference; a categorical value that is not
    among the choices cannot be, and is left to the sampler."""
    baseline = spec.base_config
    baseline = replace(baseline, train=replace(baseline.train, lr=resolve_lr(baseline.train)))  # (lr: auto)
    flat = {k: v for k, v in SEED_BASELINE.items() if k in spec.space}
    flat.update({k: flatten(baseline)[k] for k in spec.space if k not in SEED_BASELINE})
    excluded = sorted(k for k, v in flat.items() if spec.space[k].type == "categorical" and not spec.space[k].contains(v))
    if excluded:
        print(f"note: the space's choices exclude the baseline's {', '.join(excluded)}: trial 0 samples them")
    return {k: v for k, v in flat.items() if k not in excluded}


def enqueue_grid(study, spec: SweepSpec) -> None:
    """A scaling study's trials: each hidden size at each budget, the largest budget first (the
    longest trials first keep workers busy to the end); at the seed's hidden size the trial is
    the seed baseline, so that every budget's profile has it."""
    sc, baseline = spec.scaling, baseline_params(spec)
    for budget in sorted(sc.budgets, reverse=True):
        for h in sorted(sc.hidden_sizes):
            cell = {sc.key: spec.space[sc.key].suggest_value(budget), "model.hidden_size": h}
            seed = h == SEED_BASELINE["model.hidden_size"]
            study.enqueue_trial({**baseline, **cell} if seed else cell,
                                user_attrs={names.ATTR_BASELINE: True} if seed else {}, skip_if_exists=True)


def next_action(study, heartbeats: bool, spec: SweepSpec, storage_url: str | None) -> str:
    """``run`` a trial (a queued one first), ``wait`` for trials running elsewhere (one may yet
    die and need a retry: RDB heartbeats only), or ``done`` (target or deadline reached). Once
    the search is done, a study with a ``final`` budget queues its final trial, then runs it."""
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    target = attrs.get(names.STUDY_TARGET)
    searching = target is None or started_trials(trials) < target
    if searching and not (attrs.get(names.STUDY_DEADLINE) is not None and time.time() >= attrs[names.STUDY_DEADLINE]):
        return "run"
    running = any(t.state == TrialState.RUNNING for t in trials)
    if heartbeats and running:
        return "wait"
    if spec.final and not running and enqueue_final(study, storage_url, spec):
        return "run"
    return "done"


def enqueue_final(study, storage_url: str | None, spec: SweepSpec) -> bool:
    """Queue the final trial (the best complete trial's params, user attrs ``final`` and
    ``final_of``) unless it exists; True while a final trial waits to run."""
    with study_lock(storage_url, study.study_name):
        trials = study.get_trials(deepcopy=False)
        finals = [t for t in trials if kind_of(t.user_attrs).final_budget]
        if any(t.state == TrialState.WAITING for t in finals):
            return True
        best = best_trial(study)
        if finals or best is None:
            return False
        if spec.scaling:
            return enqueue_check(study, spec)
        study.enqueue_trial(best.params, user_attrs=final_attrs(best.number))
        return True


def enqueue_check(study, spec: SweepSpec) -> bool:
    """A scaling study's final trial: the compute-optimal config its laws predict for the final
    budget, with the prediction stored first (the report checks the measurement against what
    was predicted before it). No prediction (a fit that means nothing): no final, one line why."""
    sc = spec.scaling
    frame = scaling.trial_frame(study.get_trials(deepcopy=False), sc.key)
    answer = scaling.analyse(frame, list(sc.budgets), spec.final[sc.budget], sc.interval, sc.bootstrap)
    prediction = answer.prediction
    if not prediction.ok:
        if (study.user_attrs.get(names.STUDY_PREDICTION) or {}).get("reason") != prediction.reason:  # (said once)
            print(f"no check of the scaling laws: {prediction.reason}", file=sys.stderr)
        study.set_user_attr(names.STUDY_PREDICTION, prediction.as_dict())
        return False
    study.set_user_attr(names.STUDY_PREDICTION, prediction.as_dict())
    largest = next(p for p in reversed(answer.profiles) if p.ok).best
    base = spec.base_config.model
    params = scaling.predicted_config(prediction, largest, vocab_size(spec), base.num_layers, base.dropout,
                                      base.embedding_dim)
    params = {k: v for k, v in params.items() if k in spec.space} | {sc.key: spec.final[sc.budget]}
    study.enqueue_trial(params, user_attrs=final_attrs(int(largest["trial"]), check=True))
    return True


def register(uri: str, spec: SweepSpec, best, why: str | None = None) -> str:
    """The best trial's MLflow Model as ``charlstm-<study>@best``, with what it is in its tags
    (and ``why`` it is best, when a confirmation moved the alias)."""
    params = best.user_attrs.get(names.ATTR_PARAMS_TOTAL)
    tags = {"study": spec.study, "trial": best.number, spec.metric: f"{best.value:.6g}",
            **({names.ATTR_PARAMS_TOTAL: params} if params is not None else {}), **({"why": why} if why else {})}
    description = (f"charlstm study {spec.study}: trial {best.number}, {best.value:.4f} {spec.metric}, "
                   f"{params:,} parameters" if params else f"charlstm study {spec.study}: trial {best.number}")
    return tracking.register_best(uri, names.registered_model(spec.study), best.user_attrs[names.ATTR_RUN], tags, description)


def finish_study(spec: SweepSpec, study_name: str, storage_url: str | None, uri: str, quiet: bool = False):
    """Log the study's outcome to its parent run, register the best model, print the leaderboard.

    While trials of other processes still run (a second sweep of the study, say), the study is
    left for the last sweep to end to finish: one registration of the best, at the end."""
    study = load_study(study_name, open_storage(storage_url, spec))
    say = (lambda line: None) if quiet else print
    with study_lock(storage_url, study_name):
        recover_orphans(study, uri, spec, heartbeats=is_rdb(storage_url))
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
                "number": best.number, "run_id": best.user_attrs.get(names.ATTR_RUN),
                "value": best.value, "params": best.params}
            finish_parent_run(uri, study.user_attrs[names.STUDY_PARENT], spec.metric, counts, summary, board)
            if best is not None:
                try:
                    version = register(uri, spec, best)
                    say(f"registered {names.best_model_uri(spec.study)} (version {version}, trial {best.number})")
                except TrackingError as e:  # (its artifacts never reached the store: the study stands)
                    print(f"charlstm: warning: the best, trial {best.number}, is not registered ({e}); "
                          f"`charlstm doctor --fix` sends what waits, then `charlstm sweep` again registers it",
                          file=sys.stderr)
    if spec.scaling:  # the answer first, then the trials behind it
        answer = scaling.study_answer(trials, spec.as_dict(), study.user_attrs.get(names.STUDY_PREDICTION))
        say(f"the answer ({machine.machine_line(study.user_attrs.get(names.STUDY_MACHINE))}):")
        for line in scaling.summary(answer):
            say(f"  {line}")
    say(format_leaderboard(board, spec.metric))
    return study

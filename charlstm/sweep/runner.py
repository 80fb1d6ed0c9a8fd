"""Running a study: set it up (or resume it), the objective Optuna calls, worker processes
and the sweep that supervises them, pausing on a signal, and finishing (the parent run's
summary and the registered best).

The objective reads like optuna-examples: suggest -> config -> ``train()`` (reporting and
pruning at each evaluation) -> the metric; the trainer never knows Optuna called it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch
from mlflow.entities import RunStatus
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from charlstm import checkpoint, interrupt, machine, names, owner, scaling, status, tracking
from charlstm.config import Config, flatten
from charlstm.data import Vocab, load_corpus, prepare
from charlstm.errors import (
    CharlstmError,
    ConfigError,
    StorageError,
    TrackingError,
    first_line,
    redact,
)
from charlstm.model import count_params, flops_per_char
from charlstm.schedule import resolve_lr
from charlstm.sweep.recovery import recover_orphans, stale_trial_handler
from charlstm.sweep.runs import (
    end_parent_run,
    end_trial_run,
    finish_parent_run,
    run_status,
    study_parent_run,
)
from charlstm.sweep.spec import SEED_BASELINE, SweepSpec, trial_config
from charlstm.sweep.store import (
    STATE_ORDER,
    best_trial,
    format_leaderboard,
    is_rdb,
    leaderboard,
    load_study,
    make_pruner,
    make_sampler,
    open_storage,
    requeue,
    retried_as,
    retry_history,
    started_trials,
    study_lock,
    study_progress,
    study_spec,
    tracking_uri_of,
)
from charlstm.tracking import MLflowTracker
from charlstm.train import train

STOP_GRACE = 60  # s a stopped worker gets to save its checkpoint before it is killed
SWEEP_PID = "CHARLSTM_SWEEP_PID"  # told to the workers a sweep spawns: the process they die with

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
        uri = tracking.resolve_uri(tracking_uri or trial_config(spec).tracking.uri)
        if "@" not in uri:  # never store a URI that could carry a password
            study.set_user_attr(names.STUDY_TRACKING, uri)
        if spec.confirms:  # a confirmation's runs are children of the confirmed study's parent
            parent = load_study(spec.confirms, storage).user_attrs[names.STUDY_PARENT]
        else:
            parent = study_parent_run(uri, trial_config(spec).tracking.experiment, spec.study,
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
    cfg = trial_config(spec)
    ours = load_corpus(cfg.data.corpus).sha256
    theirs = study.user_attrs.get(names.STUDY_CORPUS)
    if theirs is None or accept:
        study.set_user_attr(names.STUDY_CORPUS, ours)
    elif theirs != ours:
        raise ConfigError(f"corpus {cfg.data.corpus} here has sha256 {ours[:16]}..., study {spec.study}'s "
                          f"{theirs[:16]}...: give every worker the study's corpus file")


def _set_target(study, spec: SweepSpec, n_trials: int | None, timeout: float | None) -> None:
    """Without ``n_trials``, join the target a running or interrupted sweep left unreached (and
    its deadline, unless ``timeout`` is given); otherwise aim ``n_trials`` (default: the study
    file's) past the trials started so far, with a deadline ``timeout`` (or the file's) away."""
    trials = study.get_trials(deepcopy=False)
    started = started_trials(trials)
    target = study.user_attrs.get(names.STUDY_TARGET)
    final_pending = any(t.user_attrs.get(names.ATTR_FINAL) and t.state == TrialState.WAITING for t in trials)
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
    baseline = trial_config(spec)
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
        finals = [t for t in trials if t.user_attrs.get(names.ATTR_FINAL)]
        if any(t.state == TrialState.WAITING for t in finals):
            return True
        best = best_trial(study)
        if finals or best is None:
            return False
        if spec.scaling:
            return enqueue_check(study, spec)
        study.enqueue_trial(best.params, user_attrs={names.ATTR_FINAL: True, names.ATTR_FINAL_OF: best.number})
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
    base = trial_config(spec).model
    params = scaling.predicted_config(prediction, largest, _vocab_size(spec), base.num_layers, base.dropout,
                                      base.embedding_dim)
    params = {k: v for k, v in params.items() if k in spec.space} | {sc.key: spec.final[sc.budget]}
    study.enqueue_trial(params, user_attrs={names.ATTR_FINAL: True, names.ATTR_FINAL_OF: int(largest["trial"]), names.ATTR_CHECK: True})
    return True


# ---------------------------------------------------------------------------------------------
# One trial


def _vocab_size(spec: SweepSpec) -> int:
    return len(_corpus_vocab(spec)[0])


def _corpus_vocab(spec: SweepSpec) -> tuple[Vocab, int]:
    """The study's vocab and the characters of its training split."""
    cfg = trial_config(spec)
    ds = prepare(load_corpus(cfg.data.corpus), cfg.data.val_fraction, cfg.data.test_fraction)
    return ds.vocab, len(ds.train)


class Objective:
    """The function Optuna calls: suggest -> Config -> train(), reporting and pruning at each
    evaluation -> the metric. A failure ends the trial's run FAILED with the reason (one line
    in the worker's log; a traceback only for a bug); a diverged run never completes."""
    def __init__(self, spec: SweepSpec, tracking_uri: str, parent_run_id: str, threads: int,
                 log: Callable[[str], None], worker: str = "worker 0"):
        self.spec, self.uri, self.parent_run_id, self.threads, self.log, self.worker = (
            spec, tracking_uri, parent_run_id, threads, log, worker)
        self.vocab, self.train_chars = _corpus_vocab(spec)
        self.vocab_size = len(self.vocab)  # (its characters and the unknown id)
        self.trial_number: int | None = None  # the trial being run, for the worker's clean-up
        self.storage_failed: StorageError | None = None  # a full disk or a broken store

    def __call__(self, trial) -> float:
        self.trial_number = trial.number
        trial.set_user_attr(names.ATTR_OWNER, owner.this_process())  # first: whose trial it is
        trial.set_user_attr(names.ATTR_WORKER, self.worker)  # (what a view calls that process)
        try:
            return self._run(trial)
        except KeyboardInterrupt as e:
            trial.set_user_attr(names.ATTR_FAIL_REASON, _reason(e))
            raise
        except (StorageError, OSError) as e:  # not the trial's fault: the worker stops, the trial is queued
            self.storage_failed = e if isinstance(e, StorageError) else StorageError(f"a write failed: {first_line(e)}")
            with suppress(Exception):  # (the storage may be what failed)
                trial.set_user_attr(names.ATTR_FAIL_REASON, str(self.storage_failed))
            raise
        except CharlstmError as e:  # an impossible sampled config, divergence, ...
            self._failed(trial, str(e))
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:
            self._failed(trial, f"{type(e).__name__}: {first_line(e)}")
            traceback.print_exc()  # not a known fault: a bug, whose traceback is worth having
            raise

    def _failed(self, trial, reason: str) -> None:
        trial.set_user_attr(names.ATTR_FAIL_REASON, reason)
        self.log(f"trial {trial.number} failed: {reason}")

    def _run(self, trial) -> float:
        if self.spec.confirms and names.ATTR_CONFIRMS not in trial.user_attrs:  # (its target is what it queued)
            raise optuna.TrialPruned("a confirmation trains only the trials it queued")
        if self.spec.final and not trial.user_attrs.get(names.ATTR_FINAL) and _sampled_after_the_search(trial):
            # (two workers told to run the one queued final: the one that missed it got a new trial)
            raise optuna.TrialPruned("the search is over: only its final trial runs")
        spec, (cfg, counts) = self.spec, self._config(trial)
        final = bool(trial.user_attrs.get(names.ATTR_FINAL))
        tags = {names.TAG_STUDY: spec.study, names.TAG_TRIAL: str(trial.number),
                **({names.TAG_BASELINE: "true"} if trial.user_attrs.get(names.ATTR_BASELINE) else {}),
                **({names.TAG_FINAL_OF: str(trial.user_attrs.get(names.ATTR_FINAL_OF))} if final else {}),
                **{tag: str(trial.user_attrs[attr]) for attr, tag in ((names.ATTR_CONFIRMS, names.TAG_CONFIRMS),
                                                                    (names.ATTR_SEED, names.TAG_SEED))
                   if attr in trial.user_attrs}}
        with MLflowTracker(replace(cfg.tracking, uri=self.uri), run_name=cfg.name,
                           parent_run_id=self.parent_run_id, tags=tags, travel=True) as tracker:
            # until it completes, a failure of any kind ends the run as its trial ends: FAIL
            tracker.end_status, tracker.end_tags = run_status(TrialState.FAIL), {names.TAG_STATE: TrialState.FAIL.name}
            trial.set_user_attr(names.ATTR_RUN, tracker.start())
            url = tracking.run_url(self.uri, tracker.experiment_id, tracker.run_id)
            if url:
                trial.set_user_attr(names.ATTR_RUN_URL, url)
            tracker.set_tags({names.TAG_STATE: TrialState.RUNNING.name})
            if spec.max_params and counts["total"] > spec.max_params:
                _never_trained(trial, tracker, cfg, counts, spec.max_params)
            try:
                result = train(cfg, tracker, _pruning(trial, tracker, spec.metric, prune=not final),
                               resume=_retry_checkpoint(trial, cfg, self.vocab.chars, self.uri, self.log),
                               run_dir=Path(cfg.train.out_dir) / f"trial-{trial.number:04d}", progress=False)
            except BaseException as e:
                if tracker.end_tags[names.TAG_STATE] == TrialState.FAIL.name:  # (a pruned trial set its own)
                    tracker.end_tags[names.TAG_ERROR] = _reason(e)
                raise
            tracker.end_status = run_status(TrialState.COMPLETE)
            tracker.end_tags = {names.TAG_STATE: TrialState.COMPLETE.name}
        for key in (names.CHARS_PER_SEC, names.TRAIN_SECONDS, names.COMPUTE_SECONDS, names.CHARS_SEEN,
                    names.BEST_VAL_LOSS):
            trial.set_user_attr(key, getattr(result, key))
        m = cfg.model  # training FLOP: the portable measure of what a compute budget bought
        trial.set_user_attr(names.ATTR_TRAIN_FLOPS, flops_per_char(self.vocab_size, m.embedding_dim, m.hidden_size,
                                                          m.num_layers) * result.chars_seen)
        trial.set_user_attr(names.ATTR_EPOCHS, result.chars_seen / self.train_chars)  # passes over the training split
        return min(e[spec.metric] for e in result.evals if e.get("full", True))  # (a slice's value is no result)

    def _config(self, trial) -> tuple[Config, dict[str, int]]:
        """The trial's config from its suggested params, and its parameter counts."""
        spec = self.spec
        with warnings.catch_warnings():  # (the baseline's values may lie outside the space, on purpose)
            warnings.filterwarnings("ignore", message="Fixed parameter .* out of range")
            params = {key: dist.suggest(trial, key) for key, dist in spec.space.items()}
        out_dir = str(Path(trial_config(spec).train.out_dir) / spec.study)
        cfg = trial_config(spec, {**params, "name": f"{spec.study}-trial-{trial.number:04d}",
                                  "train.out_dir": out_dir}, final=bool(trial.user_attrs.get(names.ATTR_FINAL)))
        if self.threads and not cfg.train.threads:  # a study may pin train.threads itself
            cfg = replace(cfg, train=replace(cfg.train, threads=self.threads))
        cfg = replace(cfg, train=replace(cfg.train, lr=resolve_lr(cfg.train)))  # (a trial never trained logs it too)
        m = cfg.model
        counts = count_params(self.vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.dropout)
        trial.set_user_attr(names.ATTR_PARAMS_TOTAL, counts["total"])
        return cfg, counts


def _sampled_after_the_search(trial) -> bool:
    """A trial the sampler drew (not queued) once the study's final trial exists, which is only
    once the search is done."""
    trials = trial.study.get_trials(deepcopy=False)
    frozen = next(t for t in trials if t.number == trial.number)
    return names.SYS_FIXED_PARAMS not in frozen.system_attrs and any(t.user_attrs.get(names.ATTR_FINAL) for t in trials)


def _never_trained(trial, tracker: MLflowTracker, cfg: Config, counts: dict[str, int], max_params: int) -> None:
    """A trial over ``max_params`` is not trained: PRUNED in Optuna, KILLED with the reason in
    MLflow (its config and counts logged, so the report can place it)."""
    tracker.log_config(cfg)
    tracker.log_param_counts(counts)
    reason = f"{counts['total']:,} parameters > max_params {max_params:,}"
    trial.set_user_attr(names.ATTR_PRUNED_REASON, reason)
    tracker.end_status = run_status(TrialState.PRUNED)
    tracker.end_tags = {names.TAG_STATE: TrialState.PRUNED.name, names.ATTR_PRUNED_REASON: reason,
                        names.TAG_PRUNED_AT_CHARS: "0"}
    raise optuna.TrialPruned(reason)


def _pruning(trial, tracker: MLflowTracker, metric: str, prune: bool = True) -> Callable[[dict[str, Any]], None]:
    """The eval hook of a trial: report the metric against characters seen, prune if told to
    (never the final trial: its longer schedule is behind the others' at the same characters)."""
    def on_eval(record: dict[str, Any]) -> None:
        trial.report(record[metric], step=record["chars_mark"])
        if prune and trial.should_prune():
            tracker.end_status = run_status(TrialState.PRUNED)
            tracker.end_tags = {names.TAG_STATE: TrialState.PRUNED.name, names.TAG_PRUNED_AT_CHARS: str(record["chars_mark"]),
                                names.TAG_PRUNED_AT_STEP: str(record["step"])}
            raise optuna.TrialPruned(f"pruned at {record['chars_mark']:,} chars")

    return on_eval


def _reason(e: BaseException) -> str:
    if isinstance(e, interrupt.Interrupted):
        return f"interrupted ({e.signal_name}) {e.where}".strip()
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return str(e) if isinstance(e, CharlstmError) else f"{type(e).__name__}: {first_line(e)}"


def _retry_checkpoint(trial, cfg: Config, vocab: str, uri: str, log: Callable[[str], None]) -> Path | None:
    """A retried trial continues from the newest checkpoint it can trust of the trial(s) it
    replaces: each one's ``last.pt`` on this machine, else the copy its run sent to the
    tracking store (the trial ran on another machine), then its ``best.pt`` (an earlier point
    of the same run). One that is missing, cut short, of another charlstm version, corpus or
    config is passed over; when any was, one line says which, why, and what the trial does."""
    trials = trial.study.get_trials(deepcopy=False)
    frozen = next(t for t in trials if t.number == trial.number)
    passed: list[str] = []
    for number in reversed(retry_history(frozen)):
        folder = Path(cfg.train.out_dir) / f"trial-{number:04d}"
        if not (folder / names.LAST_PT).is_file():  # it ran elsewhere: what its run sent
            run_id = next((t.user_attrs.get(names.ATTR_RUN) for t in trials if t.number == number), None)
            if run_id and tracking.fetch_travelled(run_id, uri, folder):
                log(f"trial {trial.number}: fetched trial {number}'s checkpoint from its MLflow run {run_id}")
        for name in (names.LAST_PT, names.BEST_PT):
            path = folder / name
            why = checkpoint.unusable(path, cfg, vocab)
            if why is None:
                trial.set_user_attr(names.ATTR_RESUMED_FROM, number)
                if passed:
                    log(f"trial {trial.number}: {'; '.join(passed)}: resuming from trial {number}'s {name}")
                return path
            if why != "is missing" or name == names.LAST_PT:
                passed.append(f"trial {number}'s {name} {why}")
    if passed and any("missing" not in p for p in passed):
        log(f"trial {trial.number}: {'; '.join(passed)}: starting it over")
    return None


# ---------------------------------------------------------------------------------------------
# Workers, the sweep, pausing and finishing


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
    output = Path(trial_config(spec).train.out_dir) / spec.study / "workers.log" if mode == "live" else None
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


def register(uri: str, spec: SweepSpec, best, why: str | None = None) -> str:
    """The best trial's MLflow Model as ``charlstm-<study>@best``, with what it is in its tags
    (and ``why`` it is best, when a confirmation moved the alias)."""
    params = best.user_attrs.get(names.ATTR_PARAMS_TOTAL)
    tags = {"study": spec.study, "trial": best.number, spec.metric: f"{best.value:.6g}",
            **({names.ATTR_PARAMS_TOTAL: params} if params is not None else {}), **({"why": why} if why else {})}
    description = (f"charlstm study {spec.study}: trial {best.number}, {best.value:.4f} {spec.metric}, "
                   f"{params:,} parameters" if params else f"charlstm study {spec.study}: trial {best.number}")
    return tracking.register_best(uri, f"charlstm-{spec.study}", best.user_attrs[names.ATTR_RUN], tags, description)


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
                    say(f"registered models:/charlstm-{spec.study}@best (version {version}, trial {best.number})")
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

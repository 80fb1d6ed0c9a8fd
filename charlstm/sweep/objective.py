"""The function Optuna calls for one trial, as optuna-examples write it: suggest -> ``Config`` ->
``train()`` (reporting and pruning at each evaluation) -> the metric. The trainer never knows
Optuna called it. A retried trial resumes from the newest checkpoint of the trial it replaces
that it can trust, here or sent by its run from another machine."""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from charlstm import checkpoint, interrupt, names, owner, tracking
from charlstm.config import Config
from charlstm.errors import CharlstmError, StorageError, first_line
from charlstm.model import count_params, flops_per_char
from charlstm.schedule import resolve_lr
from charlstm.sweep.kinds import Kind, kind_of, run_tags
from charlstm.sweep.runs import RUN_STATUS
from charlstm.sweep.spec import SweepSpec, corpus_vocab, trial_config
from charlstm.sweep.store import retry_history
from charlstm.tracking import MLflowTracker
from charlstm.train import train


class Objective:
    """The function Optuna calls: suggest -> Config -> train(), reporting and pruning at each
    evaluation -> the metric. A failure ends the trial's run FAILED with the reason (one line
    in the worker's log; a traceback only for a bug); a diverged run never completes."""
    def __init__(self, spec: SweepSpec, tracking_uri: str, parent_run_id: str, threads: int,
                 log: Callable[[str], None], worker: str = "worker 0"):
        self.spec, self.uri, self.parent_run_id, self.threads, self.log, self.worker = (
            spec, tracking_uri, parent_run_id, threads, log, worker)
        self.vocab, self.train_chars = corpus_vocab(spec)
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
        kind, (frozen, trials) = kind_of(trial.user_attrs), _frozen(trial)  # (the one read of the study a trial)
        stray = self._stray(frozen, trials, kind)
        if stray:
            raise optuna.TrialPruned(stray)
        spec, (cfg, counts) = self.spec, self._config(trial, kind)
        tags = {names.TAG_STUDY: spec.study, names.TAG_TRIAL: str(trial.number), **run_tags(trial.user_attrs)}
        with MLflowTracker(replace(cfg.tracking, uri=self.uri), run_name=cfg.name,
                           parent_run_id=self.parent_run_id, tags=tags, travel=True) as tracker:
            # until it completes, a failure of any kind ends the run as its trial ends: FAIL
            tracker.end_status, tracker.end_tags = RUN_STATUS[TrialState.FAIL], {names.TAG_STATE: TrialState.FAIL.name}
            trial.set_user_attr(names.ATTR_RUN, tracker.start())
            url = tracking.run_url(self.uri, tracker.experiment_id, tracker.run_id)
            if url:
                trial.set_user_attr(names.ATTR_RUN_URL, url)
            tracker.set_tags({names.TAG_STATE: TrialState.RUNNING.name})
            if spec.max_params and counts["total"] > spec.max_params:
                _never_trained(trial, tracker, cfg, counts, spec.max_params)
            replaced: list[str] = []
            try:
                resume, replaced = _retry_checkpoint(trial, frozen, trials, cfg, self.vocab.chars, self.uri, self.log)
                result = train(cfg, tracker, _pruning(trial, tracker, spec.metric, prune=kind.prunable),
                               resume=resume, run_dir=Path(cfg.train.out_dir) / f"trial-{trial.number:04d}",
                               progress=False)
            except BaseException as e:
                if tracker.end_tags[names.TAG_STATE] == TrialState.FAIL.name:  # (a pruned trial set its own)
                    tracker.end_tags[names.TAG_ERROR] = _reason(e)
                if not isinstance(e, KeyboardInterrupt | StorageError | OSError):  # (only those are retried)
                    tracker.no_retry = True
                    self._retire(replaced)
                raise
            tracker.end_status = RUN_STATUS[TrialState.COMPLETE]
            tracker.end_tags = {names.TAG_STATE: TrialState.COMPLETE.name}
        self._record(trial, cfg, result)
        self._retire(replaced)
        return min(e[spec.metric] for e in result.evals if e.get("full", True))  # (a slice's value is no result)

    def _stray(self, frozen, trials, kind: Kind) -> str | None:
        """Why a trial the sampler drew must not run: a confirmation trains only what it queued,
        and once the search is done only its final trial runs (two workers told to run the one
        queued final: the one that missed it got a new trial)."""
        if self.spec.confirms and kind is not Kind.CONFIRM:
            return "a confirmation trains only the trials it queued"
        if self.spec.final and not kind.final_budget and _sampled_after_the_search(frozen, trials):
            return "the search is over: only its final trial runs"
        return None

    def _record(self, trial, cfg: Config, result) -> None:
        """What a completed trial keeps: its totals, its training FLOP, its passes over the data."""
        for key in (names.CHARS_PER_SEC, names.TRAIN_SECONDS, names.COMPUTE_SECONDS, names.CHARS_SEEN,
                    names.BEST_VAL_LOSS):
            trial.set_user_attr(key, getattr(result, key))
        m = cfg.model  # training FLOP: the portable measure of what a compute budget bought
        trial.set_user_attr(names.ATTR_TRAIN_FLOPS, flops_per_char(self.vocab_size, m.embedding_dim, m.hidden_size,
                                                                   m.num_layers) * result.chars_seen)
        trial.set_user_attr(names.ATTR_EPOCHS, result.chars_seen / self.train_chars)  # passes over the training split

    def _retire(self, replaced: list[str]) -> None:
        """The copies of checkpoints that the runs of the trials this one ``replaced`` sent for
        a retry elsewhere go once it has ended on its own terms: no retry will read them now."""
        for run_id in replaced:
            tracking.retire_travelled(self.uri, run_id)

    def _config(self, trial, kind: Kind) -> tuple[Config, dict[str, int]]:
        """The trial's config from its suggested params, and its parameter counts."""
        spec = self.spec
        with warnings.catch_warnings():  # (the baseline's values may lie outside the space, on purpose)
            warnings.filterwarnings("ignore", message="Fixed parameter .* out of range")
            params = {key: dist.suggest(trial, key) for key, dist in spec.space.items()}
        out_dir = str(Path(spec.base_config.train.out_dir) / spec.study)
        cfg = trial_config(spec, {**params, "name": f"{spec.study}-trial-{trial.number:04d}",
                                  "train.out_dir": out_dir}, final=kind.final_budget)
        if self.threads and not cfg.train.threads:  # a study may pin train.threads itself
            cfg = replace(cfg, train=replace(cfg.train, threads=self.threads))
        cfg = replace(cfg, train=replace(cfg.train, lr=resolve_lr(cfg.train)))  # (a trial never trained logs it too)
        m = cfg.model
        counts = count_params(self.vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.dropout)
        trial.set_user_attr(names.ATTR_PARAMS_TOTAL, counts["total"])
        return cfg, counts


def _frozen(trial) -> tuple:
    """(the running trial as the storage has it, every trial of its study): one read."""
    trials = trial.study.get_trials(deepcopy=False)
    return next(t for t in trials if t.number == trial.number), trials


def _sampled_after_the_search(frozen, trials) -> bool:
    """A trial the sampler drew (not queued) once the study's final trial exists, which is only
    once the search is done."""
    return names.SYS_FIXED_PARAMS not in frozen.system_attrs and any(t.user_attrs.get(names.ATTR_FINAL) for t in trials)


def _never_trained(trial, tracker: MLflowTracker, cfg: Config, counts: dict[str, int], max_params: int) -> None:
    """A trial over ``max_params`` is not trained: PRUNED in Optuna, KILLED with the reason in
    MLflow (its config and counts logged, so the report can place it)."""
    tracker.log_config(cfg)
    tracker.log_param_counts(counts)
    reason = f"{counts['total']:,} parameters > max_params {max_params:,}"
    trial.set_user_attr(names.ATTR_PRUNED_REASON, reason)
    tracker.end_status = RUN_STATUS[TrialState.PRUNED]
    tracker.end_tags = {names.TAG_STATE: TrialState.PRUNED.name, names.ATTR_PRUNED_REASON: reason,
                        names.TAG_PRUNED_AT_CHARS: "0"}
    raise optuna.TrialPruned(reason)


def _pruning(trial, tracker: MLflowTracker, metric: str, prune: bool = True) -> Callable[[dict[str, Any]], None]:
    """The eval hook of a trial: report the metric against characters seen, prune if told to
    (never the final trial: its longer schedule is behind the others' at the same characters)."""
    def on_eval(record: dict[str, Any]) -> None:
        trial.report(record[metric], step=record["chars_mark"])
        if prune and trial.should_prune():
            tracker.no_retry = True  # (a pruned trial is never retried)
            tracker.end_status = RUN_STATUS[TrialState.PRUNED]
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


def _retry_checkpoint(trial, frozen, trials, cfg: Config, vocab: str, uri: str,
                      log: Callable[[str], None]) -> tuple[Path | None, list[str]]:
    """A retried trial continues from the newest checkpoint it can trust of the trial(s) it
    replaces: each one's ``last.pt`` on this machine, else the copy its run sent to the
    tracking store (the trial ran on another machine), then its ``best.pt`` (an earlier point
    of the same run). One that is missing, cut short, of another charlstm version, corpus or
    config is passed over; when any was, one line says which, why, and what the trial does.
    Returns (the checkpoint or None, the runs of the trials it replaces)."""
    history = retry_history(frozen)
    runs = {t.number: t.user_attrs.get(names.ATTR_RUN) for t in trials if t.number in history}
    replaced = [r for r in runs.values() if r]
    passed: list[str] = []
    for number in reversed(history):
        folder = Path(cfg.train.out_dir) / f"trial-{number:04d}"
        sent = not (folder / names.LAST_PT).is_file() and runs.get(number)  # it ran elsewhere: what its run sent
        if sent and tracking.fetch_travelled(uri, runs[number], folder):
            log(f"trial {trial.number}: fetched trial {number}'s checkpoint from its MLflow run {runs[number]}")
        for name in (names.LAST_PT, names.BEST_PT):
            path = folder / name
            why = checkpoint.unusable(path, cfg, vocab)
            if why is None:
                trial.set_user_attr(names.ATTR_RESUMED_FROM, number)
                if passed:
                    log(f"trial {trial.number}: {'; '.join(passed)}: resuming from trial {number}'s {name}")
                return path, replaced
            if why != "is missing" or name == names.LAST_PT:
                passed.append(f"trial {number}'s {name} {why}")
    if passed and any("missing" not in p for p in passed):
        log(f"trial {trial.number}: {'; '.join(passed)}: starting it over")
    return None, replaced

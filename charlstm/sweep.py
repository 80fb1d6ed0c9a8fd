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
"""

from __future__ import annotations

import inspect
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from charlstm.config import Config, config_paths, flatten, load_config, read_yaml
from charlstm.errors import CharlstmError, ConfigError, TrackingError

DEFAULT_STORAGE = "studies/journal.log"
# the seed notebook's setting (the config defaults), enqueued as trial 0 of every study
SEED_BASELINE = {
    key: flatten(Config())[key]
    for key in ("model.embedding_dim", "model.hidden_size", "data.seq_length", "data.batch_size")
}
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 30  # seconds; a study file may shorten them (tests)
USER_ATTR_RUN = "mlflow_run_id"

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
    if not isinstance(study, str) or not study or "/" in study:
        raise ConfigError(f"{source}: study must be a name without '/', got {study!r}")
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


def open_storage(url: str | None, spec: SweepSpec | None = None, tracking_uri: str | None = None):
    """A journal file (default) or an RDB storage with heartbeats; unreachable -> one line."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    from charlstm.tracking import redact

    url = url or DEFAULT_STORAGE
    if not is_rdb(url):
        path = Path(url.removeprefix("file:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    interval = spec.heartbeat_interval if spec else HEARTBEAT_INTERVAL
    grace = spec.grace_period if spec else GRACE_PERIOD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental since 2.8"
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry if spec else 2)

    def on_stale(study, trial):  # the worker running `trial` died: say so in MLflow, then retry
        run_id = trial.user_attrs.get(USER_ATTR_RUN)
        if run_id:
            from charlstm.tracking import end_run

            end_run(tracking_uri, run_id, "FAILED", error="worker died (Optuna heartbeat went stale); retried")
        retry(study, trial)

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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(f"optuna storage {redact(url)} is unreachable: {first[:300]}") from None


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


# ---------------------------------------------------------------------------------------------
# Creating, resuming and joining a study


def counted_trials(study) -> int:
    """Trials that count towards n_trials: all but failed ones that were retried."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


def setup_study(
    spec: SweepSpec,
    storage_url: str | None,
    tracking_uri: str | None,
    n_trials: int | None,
    timeout: float | None,
    force: bool = False,
):
    """Create the study (or resume it by name), its parent MLflow run and its trial target."""
    import optuna

    from charlstm import tracking

    storage = open_storage(storage_url, spec, tracking_uri)
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
    parent = tracking.study_parent_run(uri, base_config(spec).tracking.experiment, spec, study)
    study.set_user_attr("mlflow_parent_run_id", parent)
    n = n_trials if n_trials is not None else spec.n_trials
    target = counted_trials(study) + n if n is not None else None
    study.set_user_attr("target_trials", target)
    timeout = timeout if timeout is not None else spec.timeout
    study.set_user_attr("deadline", time.time() + timeout if timeout else None)
    if fresh and spec.enqueue_baseline:
        baseline = base_config(spec)
        flat = {k: v for k, v in SEED_BASELINE.items() if k in spec.space}
        flat.update({k: _get(baseline, k) for k in spec.space if k not in SEED_BASELINE})
        # a value the space excludes is left to the sampler: trial 0 is as close as it allows
        excluded = sorted(k for k, v in flat.items() if not spec.space[k].contains(v))
        if excluded:
            print(f"note: the space excludes the baseline's {', '.join(excluded)}: trial 0 samples them")
        flat = {k: v for k, v in flat.items() if k not in excluded}
        study.enqueue_trial(flat, user_attrs={"baseline": True}, skip_if_exists=True)
    return study, uri


def _get(cfg: Config, path: str):
    section, key = path.split(".", 1)
    return getattr(getattr(cfg, section), key)


# ---------------------------------------------------------------------------------------------
# One trial


def _vocab_size(spec: SweepSpec) -> int:
    from charlstm.data import load_corpus, prepare

    cfg = base_config(spec)
    return len(prepare(load_corpus(cfg.data.corpus), cfg.data.val_fraction, cfg.data.test_fraction).vocab)


def make_objective(spec: SweepSpec, tracking_uri: str, parent_run_id: str, threads: int):
    """The function Optuna calls: suggest -> Config -> train() -> the metric."""
    import optuna

    from charlstm.model import count_params
    from charlstm.tracking import MLflowTracker
    from charlstm.train import train

    vocab_size = _vocab_size(spec)

    def objective(trial: optuna.Trial) -> float:
        params = {key: dist.suggest(trial, key) for key, dist in spec.space.items()}
        name = f"{spec.study}-trial-{trial.number:04d}"
        out_dir = str(Path(base_config(spec).train.out_dir) / spec.study)
        cfg = base_config(spec, {**params, "name": name, "train.out_dir": out_dir})
        if threads:
            cfg = replace(cfg, train=replace(cfg.train, threads=threads))
        m = cfg.model
        counts = count_params(vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.dropout)
        trial.set_user_attr("params_total", counts["total"])
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        tags = {"charlstm.study": spec.study, "charlstm.trial": str(trial.number)}
        if trial.user_attrs.get("baseline"):
            tags["charlstm.baseline"] = "true"
        tracking_cfg = replace(cfg.tracking, uri=tracking_uri)
        tracker = MLflowTracker(tracking_cfg, run_name=name, parent_run_id=parent_run_id, tags=tags)
        run_id = tracker.start()
        trial.set_user_attr(USER_ATTR_RUN, run_id)

        if spec.max_params and counts["total"] > spec.max_params:
            # never trained: recorded as PRUNED in Optuna, KILLED with the reason in MLflow
            tracker.log_config(cfg)
            tracker.log_param_counts(counts)
            reason = f"{counts['total']:,} parameters > max_params {spec.max_params:,}"
            trial.set_user_attr("pruned_reason", reason)
            tracker.end("KILLED", state="PRUNED", pruned_reason=reason, pruned_at_chars="0")
            raise optuna.TrialPruned(reason)

        resume = _retry_checkpoint(trial, out_dir)

        def on_eval(record: dict[str, Any]) -> None:
            value = record[spec.metric]
            trial.report(value, step=record["chars_mark"])
            if trial.should_prune():
                tracker.end_status = "KILLED"
                tracker.end_tags = {"state": "PRUNED", "pruned_at_chars": str(record["chars_mark"]),
                                    "pruned_at_step": str(record["step"])}
                raise optuna.TrialPruned(f"pruned at {record['chars_mark']:,} chars")

        with tracker:
            tracker.set_tags({"state": "RUNNING"})
            try:
                result = train(cfg, tracker, on_eval, resume=resume, run_dir=Path(out_dir) / f"trial-{trial.number:04d}",
                               progress=False)
            except optuna.TrialPruned:
                raise
            except CharlstmError as e:  # an impossible sampled config: the trial fails, the study goes on
                tracker.end_tags = {"state": "FAIL"}
                raise optuna.exceptions.OptunaError(str(e)) from None
            except Exception:  # out of memory, a bug: FAIL this trial, keep the worker alive
                tracker.end_tags = {"state": "FAIL"}
                raise
            tracker.end_tags = {"state": "COMPLETE"}
        trial.set_user_attr("chars_per_sec", result.chars_per_sec)
        trial.set_user_attr("train_seconds", result.train_seconds)
        trial.set_user_attr("chars_seen", result.chars_seen)
        trial.set_user_attr("best_val_loss", result.best_val_loss)
        best = min(e[spec.metric] for e in result.evals)
        return best

    return objective


def _retry_checkpoint(trial, out_dir: str) -> Path | None:
    """A retried trial continues from the newest checkpoint of the trial(s) it replaces."""
    frozen = trial.study._storage.get_trial(trial._trial_id)  # Trial has no system_attrs
    history = frozen.system_attrs.get("retry_history") or []
    for number in reversed(history):
        path = Path(out_dir) / f"trial-{number:04d}" / "last.pt"
        if path.is_file():
            trial.set_user_attr("resumed_from_trial", number)
            return path
    return None


# ---------------------------------------------------------------------------------------------
# Workers


def run_worker(
    study_name: str,
    storage_url: str | None,
    tracking_uri: str | None = None,
    threads: int = 0,
    worker_index: int = 0,
) -> int:
    """Join a study and run trials until its target count or deadline. Returns trials run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url, None, tracking_uri)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ConfigError(f"no study {study_name!r} in that storage: start it with 'charlstm sweep'") from None
    attrs = study.user_attrs
    spec = parse_sweep(attrs["sweep"], f"study {study_name}")
    if is_rdb(storage_url or DEFAULT_STORAGE):  # now with this study's heartbeat settings
        storage = open_storage(storage_url, spec, tracking_uri or attrs.get("tracking_uri"))
    uri = tracking_uri or attrs.get("tracking_uri")
    if uri is None:
        raise ConfigError("this study's tracking URI was not stored: pass --tracking-uri")
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=make_sampler(spec, worker_index, len(study.trials)),
        pruner=make_pruner(spec),
    )
    if threads:
        import torch

        torch.set_num_threads(threads)
    objective = make_objective(spec, uri, attrs["mlflow_parent_run_id"], threads)
    heartbeats = is_rdb(storage_url or DEFAULT_STORAGE)
    ran = 0
    while True:
        target, deadline = study.user_attrs.get("target_trials"), study.user_attrs.get("deadline")
        if deadline is not None and time.time() >= deadline:
            break
        if target is not None and counted_trials(study) >= target:
            states = {t.state.name for t in study.get_trials(deepcopy=False)}
            if "WAITING" not in states:  # no retry queued...
                if not (heartbeats and "RUNNING" in states):
                    break
                # ...but a trial running elsewhere may yet die and need one: wait and see
                optuna.storages.fail_stale_trials(study)
                time.sleep(min(spec.heartbeat_interval, 5))
                continue
        study.optimize(objective, n_trials=1, catch=(Exception,))
        ran += 1
    return ran


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
    """Set the study up, run ``workers`` local processes on it, then summarise. Returns the study."""
    study, uri = setup_study(spec, storage_url, tracking_uri, n_trials, timeout, force)
    cores = os.cpu_count() or 1
    workers = max(1, workers)
    threads = max(1, cores // workers)
    say = (lambda *a: None) if quiet else print
    say(f"study {spec.study}: {counted_trials(study)} trials so far, target {study.user_attrs['target_trials']}, "
        f"{workers} worker(s) x {threads} thread(s)")
    if workers == 1:
        run_worker(spec.study, storage_url, uri, threads, 0)
    else:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "charlstm", "worker", "--study", spec.study,
                 "--storage", storage_url or DEFAULT_STORAGE, "--tracking-uri", uri,
                 "--threads", str(threads), "--worker-index", str(i)],
            )
            for i in range(workers)
        ]
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
            raise
        if any(codes):
            say(f"warning: worker exit codes {codes}")
            fail_orphans(study, {p.pid for p in procs}, uri)
    return finish_study(spec, study.study_name, storage_url, uri, quiet=quiet)


def fail_orphans(study, dead_pids: set[int], uri: str) -> None:
    """Trials left RUNNING by local workers that have exited: FAIL in Optuna, FAILED in MLflow
    (RDB storage does this itself through heartbeats; a journal file cannot)."""
    from optuna.trial import TrialState

    from charlstm.tracking import end_run

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker", "")
        if owner.rsplit(":", 1)[0] == host and int(owner.rsplit(":", 1)[1]) in dead_pids:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.user_attrs.get(USER_ATTR_RUN):
                end_run(uri, t.user_attrs[USER_ATTR_RUN], "FAILED", error="worker process died")


def finish_study(spec: SweepSpec, study_name: str, storage_url: str | None, uri: str, quiet: bool = False):
    """Log the study's outcome to its parent run, register the best model, print the leaderboard."""
    import optuna

    from charlstm import tracking

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, spec, uri))
    board = leaderboard(study)
    tracking.finish_parent_run(uri, study.user_attrs["mlflow_parent_run_id"], study, board, spec.metric)
    best = _best_trial(study)
    if best is not None:
        version = tracking.register_best(uri, f"charlstm-{spec.study}", best.user_attrs[USER_ATTR_RUN])
        if not quiet:
            print(f"registered models:/charlstm-{spec.study}@best (version {version}, trial {best.number})")
    if not quiet:
        print(format_leaderboard(board, spec.metric))
    return study


def _best_trial(study):
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(done, key=lambda t: t.value) if done else None


# ---------------------------------------------------------------------------------------------
# Leaderboard


def leaderboard(study):
    """One row per trial, best first: params, parameter count, metric, speed, state, run id."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name, "value": t.value}
        row.update(t.params)
        row["params_total"] = t.user_attrs.get("params_total")
        row["chars_per_sec"] = t.user_attrs.get("chars_per_sec")
        row["train_seconds"] = t.user_attrs.get("train_seconds")
        row["baseline"] = bool(t.user_attrs.get("baseline"))
        if t.state.name == "PRUNED" and t.intermediate_values:
            row["value"] = t.intermediate_values[max(t.intermediate_values)]
        row["mlflow_run_id"] = t.user_attrs.get(USER_ATTR_RUN)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
    df["_o"] = df["state"].map(order)
    return df.sort_values(["_o", "value"], na_position="last").drop(columns="_o").reset_index(drop=True)


def format_leaderboard(df, metric: str = "val_bpc", top: int = 10) -> str:
    if df.empty:
        return "no trials"
    cols = [c for c in df.columns if c not in ("mlflow_run_id",)]
    shown = df[cols].head(top).copy()
    shown = shown.rename(columns={"value": metric})
    counts = df["state"].value_counts().to_dict()
    summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    with_fmt = shown.to_string(
        index=False,
        float_format=lambda v: f"{v:,.4f}" if abs(v) < 100 else f"{v:,.0f}",
        na_rep="-",
    )
    return f"leaderboard (top {min(top, len(df))} of {len(df)}: {summary}; PRUNED shows its last report)\n{with_fmt}"

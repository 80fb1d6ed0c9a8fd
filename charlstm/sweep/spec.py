"""Study files (``sweeps/*.yaml``): their typed shape, validation, and the config of a trial.

A study file names a base experiment, fixed overrides, a search space keyed by dotted config
paths, a sampler, a pruner, a trial count / timeout and a per-trial budget. It is read with the
config's own typed machinery (``charlstm.config.build``: unknown keys and wrong types refused),
then checked for what types cannot say: bounds, names Optuna knows, and that every value the
space can propose makes a valid config.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import optuna

from charlstm import names
from charlstm.config import Config, build, config_paths, find_file, flatten, load_config, read_yaml
from charlstm.data import Corpus, Vocab, load_corpus, prepare
from charlstm.errors import ConfigError

# the seed notebook's setting (the config defaults), enqueued as trial 0 of every study
SEED_BASELINE = {
    key: flatten(Config())[key]
    for key in ("model.embedding_dim", "model.hidden_size", "model.num_layers", "data.seq_length",
                "data.batch_size")
}
# seconds; a study file may shorten them (tests). The grace outlasts a minute's storage outage
# (store.STORAGE_PATIENCE) by three heartbeats: when the link comes back, a worker must not take
# the others' trials for dead because their heartbeats could not be written meanwhile
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 90
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DISTRIBUTIONS = ("int", "float", "categorical")
BUDGET_KEYS = {"max_chars", "max_seconds", "max_steps", "max_wall_seconds"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler"}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "none": "NopPruner",
}


@dataclass(frozen=True)
class Dist:
    """One search-space dimension."""

    type: Literal["int", "float", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial, name: str):
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def suggest_value(self, value: Any) -> Any:
        """``value`` as this dimension's type (a whole number of seconds stays a float)."""
        return float(value) if self.type == "float" else int(value) if self.type == "int" else value

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high

    def values(self) -> tuple:
        """The values that stand for all it proposes: its choices, or its bounds."""
        return self.choices if self.type == "categorical" else (self.low, self.high)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None and not (k == "log" and not v)}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d


@dataclass(frozen=True)
class ScalingSpec:
    """An iso-compute study: every hidden size trained at every budget (one trial each, the
    other searched settings from the sampler), then the compute-optimal config predicted for
    ``predict`` x the largest budget and trained there as the final trial, which checks it.

    ::

        budgets (train.<budget>)    3 s    9 s   27 s  | predict x 27 s
        hidden_sizes   48 ... 720   x     x      x     | the predicted optimum, once
    """

    budgets: tuple[float, ...]
    hidden_sizes: tuple[int, ...]
    budget: Literal["max_seconds", "max_steps", "max_chars"] = "max_seconds"
    predict: float = 4.0
    interval: float = 0.9  # the intervals' coverage (bootstrap percentiles)
    bootstrap: int = 1000

    @property
    def key(self) -> str:
        return f"train.{self.budget}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budgets": list(self.budgets), "hidden_sizes": list(self.hidden_sizes)}


@dataclass(frozen=True)
class SweepSpec:
    """A study definition, validated. The metric (a loss) is minimised."""

    study: str
    base: str
    space: dict[str, Dist]
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: Literal[names.VAL_BPC, names.VAL_LOSS] = names.VAL_BPC
    sampler: dict[str, Any] | str = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] | str = field(default_factory=lambda: {"name": "median"})
    n_trials: int | None = None
    timeout: float | None = None
    trial_budget: dict[str, int | float] = field(default_factory=dict)
    # after the search (target or deadline reached, nothing running): the best complete
    # trial's config trained once more with this budget, as one more trial that is never pruned
    final: dict[str, int | float] = field(default_factory=dict)
    max_params: int | None = None
    enqueue_baseline: bool = True
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    max_retry: int = 2
    confirms: str | None = None  # set on a confirmation's companion study: the study it confirms
    scaling: ScalingSpec | None = None

    @functools.cached_property
    def base_config(self) -> Config:
        """The config every trial starts from: the base experiment with the fixed overrides and
        the trial budget (``trial_config`` without params; the files are read once)."""
        return trial_config(self)

    @functools.cached_property
    def corpus(self) -> Corpus:
        """The corpus every trial trains on (read, and its digest taken, once a process)."""
        return load_corpus(self.base_config.data.corpus)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["space"] = {k: v.as_dict() for k, v in self.space.items()}
        d["scaling"] = self.scaling.as_dict() if self.scaling else None
        return d


def parse_sweep(raw: Any, source: str = "study file") -> SweepSpec:
    """A validated ``SweepSpec`` from a study file's mapping; one ConfigError line otherwise."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    for required in ("study", "base", "space"):
        if required not in raw:
            raise ConfigError(f"{source}: missing {required!r}")
    space = raw["space"]
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{source}: space must map config paths to distributions")
    for key, dist in space.items():  # the type first: its message says what the key is
        if isinstance(dist, dict) and dist.get("type") not in DISTRIBUTIONS:
            raise ConfigError(f"{source}: space.{key}: unknown distribution {dist.get('type')!r} "
                              "(int, float or categorical)")
    try:
        spec = build(SweepSpec, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    spec = replace(spec, sampler=_check_named("sampler", SAMPLERS, spec.sampler),
                   pruner=_check_named("pruner", PRUNERS, spec.pruner),
                   space={k: _check_dist(k, d) for k, d in spec.space.items()})
    if spec.scaling:
        spec = _with_scaling(spec, source)
    _check_settings(spec, source)
    trial_config(spec)  # the base experiment and fixed overrides must load on their own
    if spec.final:
        trial_config(spec, final=True)
    for key, dist in spec.space.items():  # ... and so must every value the space can propose
        for value in dist.values():
            try:
                trial_config(spec, {key: value})
            except ConfigError as e:
                why = str(e).removeprefix(f"{spec.base}: ")
                raise ConfigError(f"{source}: space.{key}: the value {value!r} does not fit: {why}") from None
    return spec


def _check_settings(spec: SweepSpec, source: str) -> None:
    if not STUDY_NAME.match(spec.study):
        raise ConfigError(
            f"{source}: study {spec.study!r} must be letters, digits, '.', '_' or '-' (it names MLflow "
            "filters, a registered model and a folder)"
        )
    paths = set(config_paths()) - {"name"}
    for key in spec.space:
        if key not in paths:
            raise ConfigError(f"{source}: space key {key!r} is not a config path (e.g. model.hidden_size)")
    if not spec.trial_budget or set(spec.trial_budget) - BUDGET_KEYS:
        raise ConfigError(f"{source}: trial_budget needs one or more of {', '.join(sorted(BUDGET_KEYS))}")
    if set(spec.final) - BUDGET_KEYS:
        raise ConfigError(f"{source}: final needs one or more of {', '.join(sorted(BUDGET_KEYS))}")
    for key in ("n_trials", "max_params", "heartbeat_interval", "grace_period"):
        v = getattr(spec, key)
        if v is not None and v < 1:
            raise ConfigError(f"{source}: {key} must be a positive integer, got {v!r}")
    if spec.max_retry < 0:
        raise ConfigError(f"{source}: max_retry must be 0 or more, got {spec.max_retry!r}")
    if spec.timeout is not None and spec.timeout <= 0:
        raise ConfigError(f"{source}: timeout must be a positive number of seconds")
    if spec.n_trials is None and spec.timeout is None:
        raise ConfigError(f"{source}: set n_trials and/or timeout")


def _with_scaling(spec: SweepSpec, source: str) -> SweepSpec:
    """A scaling study's grid as two dimensions of its space, the budget and hidden_size over
    their ranges (every cell is queued; a stored spec that has them already is read back as it
    is), its default trial count (one per cell) and its final budget (``predict`` x the largest)."""
    sc = spec.scaling
    if len(sc.budgets) < 1 or len(sc.hidden_sizes) < 1 or min(sc.budgets) <= 0 or min(sc.hidden_sizes) < 1:
        raise ConfigError(f"{source}: scaling needs positive budgets and hidden_sizes")
    if len(set(sc.budgets)) != len(sc.budgets) or len(set(sc.hidden_sizes)) != len(sc.hidden_sizes):
        raise ConfigError(f"{source}: scaling.budgets and scaling.hidden_sizes must not repeat a value")
    if sc.predict < 1 or not 0.5 <= sc.interval < 1 or sc.bootstrap < 100:
        raise ConfigError(f"{source}: scaling needs predict >= 1, interval in [0.5, 1) and bootstrap >= 100")
    if sc.budget != "max_seconds" and any(not float(b).is_integer() for b in sc.budgets):
        raise ConfigError(f"{source}: scaling.budgets of {sc.budget} must be whole numbers")
    cast = float if sc.budget == "max_seconds" else int
    # ranges, not choices: the final trial's values lie beyond them (Optuna takes a fixed value
    # out of range), and every cell is queued, so the sampler never draws these two
    grid = {sc.key: Dist("float" if cast is float else "int", cast(min(sc.budgets)), cast(max(sc.budgets)), True),
            "model.hidden_size": Dist("int", min(sc.hidden_sizes), max(sc.hidden_sizes), True)}
    for key, dist in grid.items():
        if key in spec.space and spec.space[key] != dist:
            raise ConfigError(f"{source}: space.{key}: a scaling study sets it from scaling (leave it out)")
    largest = cast(max(sc.budgets) * sc.predict)
    return replace(spec, space={**spec.space, **grid},
                   n_trials=spec.n_trials or len(sc.budgets) * len(sc.hidden_sizes),
                   trial_budget=spec.trial_budget or {sc.budget: cast(max(sc.budgets))},
                   final={sc.budget: largest, **spec.final})  # (the check runs at the scaling budget)


def _check_dist(key: str, d: Dist) -> Dist:
    """Bounds, scale and step that make sense for the distribution's type."""
    if d.type == "categorical":
        if not d.choices:
            raise ConfigError(f"space.{key}: categorical needs a non-empty list of choices")
        return Dist("categorical", choices=d.choices)
    for name, v in (("low", d.low), ("high", d.high)):
        if v is None:
            raise ConfigError(f"space.{key}: {name} must be a number, got None")
    if d.type == "int" and not (float(d.low).is_integer() and float(d.high).is_integer()):
        raise ConfigError(f"space.{key}: int bounds must be whole numbers")
    if d.low > d.high:
        raise ConfigError(f"space.{key}: low ({d.low}) > high ({d.high})")
    if d.log and d.low <= 0:
        raise ConfigError(f"space.{key}: a log scale needs low > 0, got {d.low}")
    if d.step is not None and (d.log or d.step <= 0 or (d.type == "int" and not float(d.step).is_integer())):
        raise ConfigError(f"space.{key}: step must be a positive number (whole for int), not used with log")
    cast = float if d.type == "float" else int
    return Dist(d.type, cast(d.low), cast(d.high), d.log, d.step)


def _check_named(kind: str, table: dict[str, str], raw: dict[str, Any] | str) -> dict[str, Any]:
    """Sampler / pruner settings: a known name and keyword arguments its class accepts."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if "name" not in raw:
        raise ConfigError(f"{kind}: expected {{name: ..., <settings>}}")
    name = raw["name"]
    if name not in table:
        raise ConfigError(f"{kind}: unknown {kind} {name!r} (known: {', '.join(table)})")
    module = optuna.samplers if kind == "sampler" else optuna.pruners
    accepted = set(inspect.signature(getattr(module, table[name])).parameters)
    unknown = sorted(set(raw) - {"name"} - accepted)
    if unknown:
        raise ConfigError(f"{kind}.{unknown[0]}: not a setting of {table[name]}")
    return dict(raw)


def load_sweep(path: str | Path) -> SweepSpec:
    """A study file: a path, or the name of a shipped one (``default``, ``tinyshakespeare``)."""
    try:
        path = find_file(path, "sweeps")
        return parse_sweep(read_yaml(path), str(path))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def stored_spec(stored: dict[str, Any], study_name: str) -> SweepSpec:
    """The spec a study stored for its workers (``direction`` came from an older charlstm)."""
    return parse_sweep({k: v for k, v in stored.items() if k != "direction"}, f"study {study_name}")


def trial_config(spec: SweepSpec, params: dict[str, Any] | None = None, final: bool = False) -> Config:
    """A trial's config: the base experiment with the fixed overrides, the trial budget (the
    ``final`` budget for the final trial) and the trial's ``params`` (dotted paths) applied."""
    budget = {f"train.{k}": None for k in BUDGET_KEYS}
    budget.update({f"train.{k}": v for k, v in (spec.final if final else spec.trial_budget).items()})
    return load_config(spec.base, {**spec.overrides, **budget, **(params or {})})


def vocab_size(spec: SweepSpec) -> int:
    return len(corpus_vocab(spec)[0])


def corpus_vocab(spec: SweepSpec) -> tuple[Vocab, int]:
    """The study's vocab and the characters of its training split."""
    cfg = spec.base_config
    ds = prepare(spec.corpus, cfg.data.val_fraction, cfg.data.test_fraction)
    return ds.vocab, len(ds.train)

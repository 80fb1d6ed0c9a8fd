"""Reading results back: MLflow runs and Optuna studies as pandas frames, the Pareto front,
power-law fits, and the plots the notebooks (``analysis/*.py``) and the sweep report share.

Nothing here writes to MLflow or Optuna. Every plot helper takes a frame from ``load_runs`` /
``load_curves`` and returns a matplotlib Figure, so a notebook shows it and the report embeds it.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charlstm.errors import CharlstmError, ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# optuna imports tqdm.auto, which in a notebook without ipywidgets warns once per kernel
warnings.filterwarnings("ignore", message="IProgress not found")

LN2 = math.log(2.0)
# A trial's state, from Optuna's side; single runs (no study) get theirs from the run status.
STATUS_TO_STATE = {"FINISHED": "COMPLETE", "KILLED": "KILLED", "FAILED": "FAIL", "RUNNING": "RUNNING",
                   "SCHEDULED": "RUNNING"}
STATE_ORDER = ["COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL", "KILLED"]
STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "RUNNING": "#7f7f7f",
                "WAITING": "#bcbd22", "FAIL": "#d62728", "KILLED": "#9467bd"}
SEED = {"model.embedding_dim": 48, "model.hidden_size": 96, "data.seq_length": 48,
        "data.batch_size": 36, "model.num_layers": 1}
# Config fields a sweep usually searches, in the order plots show them.
SIZE_KEYS = ["data.seq_length", "model.hidden_size", "model.embedding_dim"]


# ---------------------------------------------------------------------------------------------
# Loading


def load_study(study: str, storage: str | None = None):
    """An existing Optuna study by name (``storage`` as for ``charlstm sweep``)."""
    import optuna

    from charlstm.sweep import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=open_storage(storage))
    except KeyError:
        raise ConfigError(f"no study {study!r} in that storage: run 'charlstm sweep' first") from None


def study_tracking_uri(study, tracking_uri: str | None = None) -> str:
    """The MLflow URI a study's trials were logged to: given > stored by the study > default."""
    from charlstm.tracking import resolve_uri

    return resolve_uri(tracking_uri or study.user_attrs.get("tracking_uri"))


def _numeric(series: pd.Series) -> pd.Series:
    import pandas as pd

    converted = pd.to_numeric(series, errors="coerce")
    # keep text columns (optimizer names, paths) as they are
    return converted if converted.notna().sum() >= series.notna().sum() else series


def load_runs(experiment: str = "charlstm", study: str | None = None, tracking_uri: str | None = None,
              include_parents: bool = False) -> pd.DataFrame:
    """One row per run of ``experiment`` (only the trials of ``study`` if given).

    Columns: ``run_id``, ``run_name``, ``trial``, ``state`` (COMPLETE / PRUNED / FAIL / RUNNING,
    KILLED for an interrupted single run), ``status`` (MLflow's), every config field by its dotted
    name (numeric where it is a number), ``params_total``, ``val_bpc`` (the last evaluation),
    ``best_val_bpc``, ``chars_seen``, ``chars_per_sec``, ``train_seconds``, ``wall_seconds``,
    ``vocab_size``, ``train_flops`` (training compute so far) and ``baseline``.
    """
    import mlflow
    import pandas as pd

    from charlstm.model import flops_per_char
    from charlstm.tracking import client_for, redact

    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} at {redact(client.tracking_uri)}")
    raw = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=f"tags.`charlstm.study` = '{study}'" if study is not None else "",
        output_format="pandas",
        max_results=50_000,
    )
    if raw.empty:
        return pd.DataFrame(columns=["run_id", "trial", "state", "val_bpc", "params_total", "baseline"])
    if not include_parents and "tags.charlstm.role" in raw:  # (a != filter in MLflow would
        raw = raw[raw["tags.charlstm.role"].fillna("") != "parent"]  # drop untagged runs too)
    now = pd.Timestamp.now(tz="UTC")

    def col(name: str, default=None) -> pd.Series:
        return raw[name] if name in raw else pd.Series(default, index=raw.index)

    df = pd.DataFrame({"run_id": raw["run_id"], "run_name": col("tags.mlflow.runName"), "status": raw["status"]})
    df["trial"] = pd.to_numeric(col("tags.charlstm.trial"), errors="coerce").astype("Int64")
    state = col("tags.state").where(col("tags.state").notna(), raw["status"].map(STATUS_TO_STATE))
    # a run still RUNNING in MLflow is running, whatever its last tag said
    df["state"] = state.where(raw["status"] != "RUNNING", "RUNNING")
    for name in raw.columns:
        if name.startswith("params.") and not name.startswith("params.params."):
            df[name.removeprefix("params.")] = _numeric(raw[name])
    df["params_total"] = pd.to_numeric(col("params.params.total"), errors="coerce")
    df["val_bpc"] = col("metrics.val_bpc")
    df["best_val_bpc"] = col("metrics.best_val_loss") / LN2
    df["chars_seen"] = col("metrics.chars_seen")
    df["chars_per_sec"] = col("metrics.final_chars_per_sec").fillna(col("metrics.chars_per_sec"))
    df["train_seconds"] = col("metrics.train_seconds")
    end = col("end_time").where(raw["status"] != "RUNNING", now)
    df["start_time"] = raw["start_time"]
    df["wall_seconds"] = (pd.to_datetime(end, utc=True) - pd.to_datetime(raw["start_time"], utc=True)).dt.total_seconds()
    df["vocab_size"] = pd.to_numeric(col("tags.data.vocab_size"), errors="coerce")
    df["train_flops"] = [
        flops_per_char(int(v), int(e), int(h), int(n)) * c
        if all(pd.notna(x) for x in (v, e, h, n, c)) else float("nan")
        for v, e, h, n, c in zip(df["vocab_size"], col("params.model.embedding_dim"),
                                 col("params.model.hidden_size"), col("params.model.num_layers"),
                                 df["chars_seen"], strict=True)
    ]
    df["baseline"] = col("tags.charlstm.baseline").eq("true") | _is_seed(df)
    df = df.sort_values(["trial", "start_time"], na_position="last").reset_index(drop=True)
    return df


def _is_seed(df: pd.DataFrame) -> pd.Series:
    """Runs with the seed notebook's setting (E48 H96 T48 B36, one layer)."""
    import pandas as pd

    out = pd.Series(True, index=df.index)
    for key, value in SEED.items():
        out &= pd.to_numeric(df[key], errors="coerce").eq(value) if key in df else False
    return out


def load_curves(runs: pd.DataFrame, metric: str = "val_bpc", tracking_uri: str | None = None) -> pd.DataFrame:
    """Every evaluation of ``runs``: ``run_id``, ``trial``, ``state``, ``step``, ``chars_seen``,
    ``wall_seconds`` (since the run started), ``metric``; one row per logged value."""
    import pandas as pd

    from charlstm.tracking import client_for

    client = client_for(tracking_uri)
    rows = []
    for r in runs.itertuples(index=False):
        values = client.get_metric_history(r.run_id, metric)
        chars = {m.step: m.value for m in client.get_metric_history(r.run_id, "chars_seen")}
        start = pd.Timestamp(r.start_time).timestamp() * 1000
        rows += [
            {"run_id": r.run_id, "trial": r.trial, "state": r.state, "baseline": r.baseline,
             "step": m.step, "chars_seen": chars.get(m.step, float("nan")),
             "wall_seconds": (m.timestamp - start) / 1000, metric: m.value}
            for m in values
        ]
    cols = ["run_id", "trial", "state", "baseline", "step", "chars_seen", "wall_seconds", metric]
    return pd.DataFrame(rows, columns=cols).sort_values(["run_id", "step"]).reset_index(drop=True)


def trial_table(study, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The study's leaderboard (``charlstm.sweep.leaderboard``) with what MLflow knows of each
    trial's run: characters seen, wall time, compute. Running trials get their progress so far."""
    import pandas as pd

    from charlstm.sweep import leaderboard

    board = leaderboard(study)
    if board.empty or runs is None or runs.empty:
        return board
    extra = runs.set_index("run_id")[["chars_seen", "chars_per_sec", "train_seconds", "wall_seconds",
                                      "train_flops", "val_bpc"]]
    merged = board.join(extra.rename(columns=lambda c: f"run_{c}"), on="mlflow_run_id")
    for name in ("chars_per_sec", "train_seconds"):
        merged[name] = pd.to_numeric(merged[name], errors="coerce").fillna(merged[f"run_{name}"])
    # a running trial has reported nothing to Optuna yet: show its last MLflow evaluation
    merged["value"] = pd.to_numeric(merged["value"], errors="coerce").fillna(merged["run_val_bpc"])
    return merged.rename(columns={"run_chars_seen": "chars_seen", "run_wall_seconds": "wall_seconds",
                                  "run_train_flops": "train_flops"}).drop(
        columns=["run_chars_per_sec", "run_train_seconds", "run_val_bpc"])


def state_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Trials and the compute they spent, per state (from ``trial_table`` or ``load_runs``)."""
    import pandas as pd

    rows = []
    for state in [s for s in STATE_ORDER if s in set(table["state"])]:
        part = table[table["state"] == state]

        def total(name: str, part=part) -> float:
            return float(pd.to_numeric(part[name], errors="coerce").sum()) if name in part else float("nan")

        rows.append({"state": state, "trials": len(part), "train_seconds": total("train_seconds"),
                     "wall_seconds": total("wall_seconds"), "chars_seen": total("chars_seen"),
                     "train_pflop": total("train_flops") / 1e15})
    out = pd.DataFrame(rows, columns=["state", "trials", "train_seconds", "wall_seconds", "chars_seen", "train_pflop"])
    if not out.empty:
        out.loc[len(out)] = {"state": "all", **{c: out[c].sum() for c in out.columns if c != "state"}}
    return out


# ---------------------------------------------------------------------------------------------
# Fronts and fits


def pareto_front(df: pd.DataFrame, x: str = "params_total", y: str = "val_bpc") -> pd.Series:
    """True for the rows no other row beats on both ``x`` and ``y`` (lower is better for both).
    With a ``state`` column only COMPLETE rows count: a pruned trial's last value is not final."""
    import pandas as pd

    ok = df[[x, y]].notna().all(axis=1)
    if "state" in df:
        ok &= df["state"] == "COMPLETE"
    front = pd.Series(False, index=df.index)
    best = math.inf
    for idx, yv in df[ok].sort_values([x, y])[y].items():
        if yv < best:
            front[idx] = True
            best = yv
    return front


@dataclass(frozen=True)
class PowerLaw:
    """``y = coef * x ** exponent``, fitted by least squares in log-log space."""

    coef: float
    exponent: float
    r2: float
    n: int
    x_max: float  # the largest x fitted: extrapolations are quoted as multiples of it

    def __call__(self, x):
        import numpy as np

        return self.coef * np.asarray(x, dtype=float) ** self.exponent

    def describe(self, x_name: str = "x", y_name: str = "y") -> str:
        return f"{y_name} = {self.coef:.4g} * {x_name}^{self.exponent:+.4f} (R^2 {self.r2:.3f}, {self.n} points)"


def fit_power_law(x, y) -> PowerLaw:
    """Fit ``y = a x^b`` to the positive, finite points; at least two distinct x are needed."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log(x[keep]), np.log(y[keep])
    if len(np.unique(x)) < 2:
        raise CharlstmError(f"a power law needs at least two distinct points, got {len(np.unique(x))}")
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return PowerLaw(coef=float(np.exp(a)), exponent=float(b), r2=r2, n=int(len(x)), x_max=float(np.exp(x.max())))


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib; the Agg backend unless a notebook chose one)


def _plt():
    import matplotlib

    if "inline" not in matplotlib.get_backend():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_label(metric: str) -> str:
    return {"val_bpc": "val bits/char", "val_loss": "val loss (nats/char)"}.get(metric, metric)


def _mark_states(ax, df: pd.DataFrame, x: str, y: str, label_trials: bool = True) -> None:
    """Scatter ``df`` coloured by state, the baseline as a black star."""
    for state in [s for s in STATE_ORDER if s in set(df["state"])]:
        part = df[(df["state"] == state) & df[[x, y]].notna().all(axis=1)]
        ax.scatter(part[x], part[y], s=36, color=STATE_COLORS[state], label=state.lower(), alpha=0.85,
                   edgecolor="white", linewidth=0.5, zorder=3)
    base = df[df["baseline"].fillna(False).astype(bool) & df[[x, y]].notna().all(axis=1)]
    if not base.empty:
        ax.scatter(base[x], base[y], marker="*", s=220, color="black", label="seed baseline", zorder=4)
    if label_trials and "trial" in df:
        for _, row in df[df[[x, y]].notna().all(axis=1)].iterrows():
            if not _isna(row["trial"]):
                ax.annotate(str(row["trial"]), (row[x], row[y]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points", color="#444")


def _legend(ax, fontsize: int = 8) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty frame draws nothing to label
        ax.legend(fontsize=fontsize)


def _isna(v) -> bool:
    try:
        return v is None or math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def plot_curves(curves: pd.DataFrame, x: str = "chars_seen", metric: str = "val_bpc",
                title: str | None = None) -> Figure:
    """Every run's evaluation curve, coloured by state, the baseline thick and black."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    seen = set()
    for _, part in curves.groupby("run_id", sort=False):
        state, base = part["state"].iloc[0], bool(part["baseline"].iloc[0])
        label = "seed baseline" if base else state.lower()
        ax.plot(part[x], part[metric], marker="o", ms=3, lw=2.5 if base else 1.2,
                color="black" if base else STATE_COLORS.get(state, "#333"), alpha=1 if base else 0.75,
                label=None if label in seen else label, zorder=3 if base else 2)
        seen.add(label)
    ax.set_xlabel({"chars_seen": "characters seen", "wall_seconds": "wall-clock seconds since start"}.get(x, x))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title or f"validation curves against {ax.get_xlabel()}")
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return fig


def plot_vs_params(runs: pd.DataFrame, y: str = "val_bpc") -> Figure:
    """Final val bits/char against parameter count (log axis), the Pareto front drawn."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _mark_states(ax, runs, "params_total", y)
    front = runs[pareto_front(runs, "params_total", y)].sort_values("params_total")
    if not front.empty:
        ax.step(front["params_total"], front[y], where="post", color="#2ca02c", lw=1.5, ls="--",
                label="Pareto front (complete)", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log)")
    ax.set_ylabel(f"{metric_label(y)} (last evaluation)")
    ax.set_title("quality against size: lower left wins")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    fig.tight_layout()
    return fig


def plot_vs_config(runs: pd.DataFrame, keys: list[str] | None = None, y: str = "val_bpc") -> Figure:
    """Final val bits/char against each of ``keys`` (default: seq_length, hidden, embedding)."""
    plt = _plt()
    keys = [k for k in (keys or SIZE_KEYS) if k in runs and runs[k].notna().any()]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.2 * max(1, len(keys)), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        _mark_states(ax, runs, key, y, label_trials=False)
        if runs[key].dropna().gt(0).all() and runs[key].max() / max(runs[key].min(), 1e-12) > 4:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric_label(y))
    _legend(axes[0][0], fontsize=7)
    fig.suptitle("quality against each size and context setting")
    fig.tight_layout()
    return fig


def plot_states(runs: pd.DataFrame, y: str = "val_bpc") -> Figure:
    """Pruned against complete: where each trial stopped (chars seen) and how good it was then;
    beside it, trials and training hours per state."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    _mark_states(ax, runs, "chars_seen", y)
    ax.set_xlabel("characters seen when the trial stopped")
    ax.set_ylabel(f"{metric_label(y)} (last evaluation)")
    ax.set_title("where trials stopped")
    ax.grid(alpha=0.3)
    _legend(ax)
    summary = state_summary(runs)
    summary = summary[summary["state"] != "all"]
    bars = bx.bar(summary["state"].str.lower(), summary["wall_seconds"] / 60,
                  color=[STATE_COLORS.get(s, "#333") for s in summary["state"]])
    for bar, n in zip(bars, summary["trials"], strict=True):
        bx.annotate(f"{int(n)} trial(s)", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    bx.set_ylabel("wall-clock minutes spent")
    bx.set_title("compute per state")
    fig.tight_layout()
    return fig


def plot_scaling(runs: pd.DataFrame, x: str = "params_total", y: str = "val_bpc",
                 scale: float = 10.0) -> tuple[Figure, PowerLaw | None]:
    """``y`` against ``x`` (log-log) over COMPLETE runs with the power-law fit extrapolated to
    ``scale`` times the largest ``x``. Returns the figure and the fit (None with fewer than 2 points)."""
    import numpy as np

    plt = _plt()
    done = runs[(runs["state"] == "COMPLETE") & runs[[x, y]].notna().all(axis=1)]
    fig, ax = plt.subplots(figsize=(7, 4.3))
    _mark_states(ax, done, x, y)
    try:
        law = fit_power_law(done[x], done[y])
    except CharlstmError as e:
        law = None
        ax.text(0.5, 0.5, str(e), transform=ax.transAxes, ha="center", fontsize=9)
    if law is not None:
        lo, hi = float(done[x].min()), law.x_max * scale
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, law(xs), color="#2ca02c", lw=1.5, label=f"fit: exponent {law.exponent:+.3f}")
        ax.scatter([hi], [float(law(hi))], marker="x", s=80, color="#2ca02c",
                   label=f"{scale:g}x largest: {float(law(hi)):.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    names = {"params_total": "parameters", "train_flops": "training compute (FLOP)"}
    ax.set_xlabel(names.get(x, x) + " (log)")
    ax.set_ylabel(f"{metric_label(y)} (log)")
    ax.set_title(f"{metric_label(y)} against {names.get(x, x)}, complete trials")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    fig.tight_layout()
    return fig, law


OPTUNA_VIEWS = ("optimization history", "hyperparameter importances", "parallel coordinates", "contour",
                "slices")


def optuna_figure(study, view: str, pair: tuple[str, str] = ("model.hidden_size", "data.seq_length")):
    """One of Optuna's own views of a study (matplotlib; ``view`` from ``OPTUNA_VIEWS``): the
    Figure, or the reason it cannot be drawn yet (too few complete trials, a parameter not in
    the search space...) as a string."""
    import optuna.visualization.matplotlib as ov

    _plt()
    draw = {
        "optimization history": lambda: ov.plot_optimization_history(study),
        "hyperparameter importances": lambda: ov.plot_param_importances(study),
        "parallel coordinates": lambda: ov.plot_parallel_coordinate(study),
        "contour": lambda: ov.plot_contour(study, params=list(pair)),
        "slices": lambda: ov.plot_slice(study),
    }[view]
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        return "not drawn: no complete trial yet"
    missing = [p for p in pair if view == "contour" and p not in {k for t in study.trials for k in t.params}]
    if missing:
        return f"not drawn: {', '.join(missing)} not in this study's search space"
    try:
        with warnings.catch_warnings():  # "experimental" and "too few trials" warnings
            warnings.simplefilter("ignore")
            ax = draw()
    except Exception as e:  # Optuna raises plain ValueError/RuntimeError for thin studies
        return f"not drawn: {e}"
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    if fig.get_size_inches()[0] < 7:
        fig.set_size_inches(8, 4.5)
    with warnings.catch_warnings():  # colour bars are "not compatible with tight_layout"
        warnings.simplefilter("ignore")
        fig.tight_layout()
    return fig


def explain(fig_or_reason) -> None:
    """In a notebook: a figure shows itself (inline backend); a reason is printed instead."""
    if isinstance(fig_or_reason, str):
        print(fig_or_reason)


def scaling_note(law: PowerLaw | None, scale: float = 10.0, x_name: str = "parameters",
                 y_name: str = "val bits/char") -> str:
    """One sentence: the fitted exponent and what it predicts at ``scale`` x the largest x."""
    if law is None:
        return f"too few complete trials to fit {y_name} against {x_name}"
    x = law.x_max * scale
    return (f"{law.describe(x_name, y_name)}; at {scale:g}x the largest ({x:,.3g} {x_name}) "
            f"it predicts {float(law(x)):.4f} (a fit over {law.n} short trials: a trend, "
            "not a promise)")


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Samples side by side


def top_samples(table: pd.DataFrame, tracking_uri: str | None, k: int = 3,
                primes: tuple[str, ...] = ("\n", "ROMEO:"), temperatures: tuple[float, ...] = (0.5, 1.0),
                length: int = 200, seed: int = 0) -> pd.DataFrame:
    """Text from the ``k`` best COMPLETE trials for the same primes, temperatures and seed.
    Rows: (prime, temperature); columns: ``trial N``. A prime outside a model's vocab says so."""
    import pandas as pd

    from charlstm.sample import generate, load_model

    best = table[(table["state"] == "COMPLETE") & table["mlflow_run_id"].notna()].sort_values("value").head(k)
    columns: dict[str, list[str]] = {}
    for r in best.itertuples():
        try:
            model, vocab, _ = load_model(r.mlflow_run_id, "cpu", tracking_uri)
        except CharlstmError as e:
            columns[f"trial {r.trial}"] = [f"(no model: {e})"] * (len(primes) * len(temperatures))
            continue
        cells = []
        for prime in primes:
            for temp in temperatures:
                try:
                    cells.append(generate(model, vocab, prime, length, temp, seed=seed)[0])
                except CharlstmError as e:
                    cells.append(f"({e})")
        columns[f"trial {r.trial}"] = cells
    index = pd.MultiIndex.from_tuples([(p, t) for p in primes for t in temperatures],
                                      names=["prime", "temperature"])
    return pd.DataFrame(columns, index=index)


def study_experiment(study, tracking_uri: str) -> str:
    """The MLflow experiment a study's runs live in (that of its parent run)."""
    from charlstm.tracking import client_for

    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        client = client_for(tracking_uri)
        try:
            return client.get_experiment(client.get_run(parent).info.experiment_id).name
        except Exception:  # the parent run was deleted: fall back to the default experiment
            pass
    return "charlstm"


# ---------------------------------------------------------------------------------------------
# Notebooks: jupytext percent-format sources in analysis/, executed by papermill


def notebook_sources(folder: str | Path = "analysis") -> list[Path]:
    """The notebooks, in order: ``analysis/NN-name.py`` (jupytext percent format)."""
    return sorted(Path(folder).glob("[0-9][0-9]-*.py"))


def run_notebooks(parameters: dict[str, Any], folder: str | Path = "analysis",
                  out_dir: str | Path = "analysis/out", only: list[str] | None = None,
                  progress: bool = True) -> list[Path]:
    """Execute every notebook of ``folder`` with ``parameters`` injected after its
    ``parameters`` cell; the executed copies go to ``out_dir/<name>.ipynb``."""
    import jupytext
    import papermill as pm

    sources = [p for p in notebook_sources(folder) if not only or any(p.stem.startswith(o) for o in only)]
    if not sources:
        raise ConfigError(f"no notebooks (NN-name.py) in {folder}" + (f" matching {only}" if only else ""))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        out = out_dir / f"{src.stem}.ipynb"
        try:
            pm.execute_notebook(jupytext.read(src), str(out), parameters=parameters, kernel_name="python3",
                                cwd=str(Path.cwd()), progress_bar=progress, log_output=False)
        except pm.PapermillExecutionError as e:
            raise CharlstmError(f"{src.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                                f"(the executed notebook is {out})") from None
        written.append(out)
    return written

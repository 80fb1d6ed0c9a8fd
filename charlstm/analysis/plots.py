"""The plots the notebooks and the report share. Each takes a frame from ``frames`` and
returns a matplotlib Figure (pyplot picks a headless backend where there is no display, and
the inline one in a notebook), so a notebook shows it and the report embeds it as PNG."""

from __future__ import annotations

import base64
import io
import math
import warnings

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import optuna.visualization.matplotlib as ov
import pandas as pd
from matplotlib.figure import Figure
from optuna.trial import TrialState

from charlstm import names
from charlstm.analysis.fits import Scaling, pareto_front
from charlstm.analysis.frames import KILLED, STATE_ORDER, state_summary
from charlstm.errors import CharlstmError
from charlstm.names import LN2
from charlstm.scaling import Answer

STATE_COLORS = {TrialState.COMPLETE.name: "#1f77b4", TrialState.PRUNED.name: "#ff7f0e",
                TrialState.RUNNING.name: "#7f7f7f", TrialState.WAITING.name: "#bcbd22",
                TrialState.FAIL.name: "#d62728", KILLED: "#9467bd"}
# Config fields a sweep usually searches, in the order plots show them.
SIZE_KEYS = ["data.seq_length", "model.hidden_size", "model.embedding_dim"]
OPTUNA_VIEWS = ("optimization history", "hyperparameter importances", "parallel coordinates", "contour",
                "slices")


def metric_label(metric: str) -> str:
    """'val bits/char', 'val loss (nats/char)'; another metric by its name."""
    if metric == names.VAL_BPC:
        return f"val {names.unit(metric)}"
    if metric == names.VAL_LOSS:
        return f"val loss ({names.unit(metric)})"
    return metric


def _mark_states(ax, df: pd.DataFrame, x: str, y: str, label_trials: bool = True) -> None:
    """Scatter ``df`` coloured by state, the baseline as a black star."""
    for state in [s for s in STATE_ORDER if s in set(df[names.STATE])]:
        part = df[(df[names.STATE] == state) & df[[x, y]].notna().all(axis=1)]
        ax.scatter(part[x], part[y], s=36, color=STATE_COLORS[state], label=state.lower(), alpha=0.85,
                   edgecolor="white", linewidth=0.5, zorder=3)
    base = df[df[names.ATTR_BASELINE].fillna(False).astype(bool) & df[[x, y]].notna().all(axis=1)]
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


def _draw_curves(ax, curves: pd.DataFrame, x: str, y: str, marker: str | None = None) -> None:
    """One line per run, coloured by state, the seed baseline thick and black; one legend
    entry per kind."""
    seen = set()
    for _, part in curves.groupby("run_id", sort=False):
        state, base = part[names.STATE].iloc[0], bool(part[names.ATTR_BASELINE].iloc[0])
        label = "seed baseline" if base else state.lower()
        ax.plot(part[x], part[y], marker=marker, ms=3, lw=2.5 if base else 1.2,
                color="black" if base else STATE_COLORS.get(state, "#333"), alpha=1 if base else 0.75,
                label=None if label in seen else label, zorder=3 if base else 2)
        seen.add(label)


def plot_curves(curves: pd.DataFrame, x: str = names.CHARS_SEEN, metric: str = names.VAL_BPC,
                title: str | None = None) -> Figure:
    """Every run's evaluation curve, coloured by state, the baseline thick and black."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _draw_curves(ax, curves, x, metric, marker="o")
    ax.set_xlabel({names.CHARS_SEEN: "characters seen", "wall_seconds": "wall-clock seconds since start"}.get(x, x))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title or f"validation curves against {ax.get_xlabel()}")
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return fig


def plot_train_and_val(train: pd.DataFrame, val: pd.DataFrame, metric: str = names.VAL_BPC) -> Figure:
    """Train loss (left, bits/char, from ``load_curves(runs, "train_loss")``) beside the
    validation curves (right), both against characters seen (each on its own y scale: the
    first train logs would flatten the validation curves)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    train = train.assign(train_bpc=train[names.TRAIN_LOSS] / LN2)
    for ax, df, y, what in ((left, train, "train_bpc", "train"), (right, val, metric, "validation")):
        _draw_curves(ax, df, names.CHARS_SEEN, y)
        ax.set_xlabel("characters seen")
        ax.set_title(f"{what} curves")
        ax.grid(alpha=0.3)
    left.set_ylabel("train bits/char (mean since the last log)")
    right.set_ylabel(metric_label(metric))
    _legend(right)
    fig.tight_layout()
    return fig


def plot_vs_params(runs: pd.DataFrame, y: str = names.VAL_BPC) -> Figure:
    """Final val bits/char against parameter count (log axis), the Pareto front drawn."""
    size = names.ATTR_PARAMS_TOTAL
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _mark_states(ax, runs, size, y)
    front = runs[pareto_front(runs, size, y)].sort_values(size)
    if not front.empty:
        ax.step(front[size], front[y], where="post", color="#2ca02c", lw=1.5, ls="--",
                label="Pareto front (complete)", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log)")
    ax.set_ylabel(f"{metric_label(y)} (last evaluation)")
    ax.set_title("quality against size: lower left wins")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    fig.tight_layout()
    return fig


def plot_vs_config(runs: pd.DataFrame, keys: list[str] | None = None, y: str = names.VAL_BPC) -> Figure:
    """Final val bits/char against each of ``keys`` (default: seq_length, hidden, embedding)."""
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


def plot_states(runs: pd.DataFrame, y: str = names.VAL_BPC) -> Figure:
    """Pruned against complete: where each trial stopped (chars seen) and how good it was then;
    beside it, trials and training hours per state."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    _mark_states(ax, runs, names.CHARS_SEEN, y)
    ax.set_xlabel("characters seen when the trial stopped")
    ax.set_ylabel(f"{metric_label(y)} (last evaluation)")
    ax.set_title("where trials stopped")
    ax.grid(alpha=0.3)
    _legend(ax)
    summary = state_summary(runs)
    summary = summary[summary[names.STATE] != "all"]
    bars = bx.bar(summary[names.STATE].str.lower(), summary["wall_seconds"] / 60,
                  color=[STATE_COLORS.get(s, "#333") for s in summary[names.STATE]])
    for bar, n in zip(bars, summary["trials"], strict=True):
        bx.annotate(f"{int(n)} trial(s)", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    bx.set_ylabel("wall-clock minutes spent")
    bx.set_title("compute per state")
    fig.tight_layout()
    return fig


def plot_scaling(runs: pd.DataFrame, fit: Scaling, x: str = names.ATTR_PARAMS_TOTAL, y: str = names.VAL_BPC,
                 scale: float = 10.0) -> Figure:
    """``y`` against ``x`` (log-log) over COMPLETE runs with the power law ``fit`` (from
    ``scaling_fit``, which decides whether there is one to show) extrapolated to ``scale``
    times the largest ``x``."""
    law = fit.law
    if law is None:
        raise CharlstmError(f"no scaling fit to draw: {fit.reason}")
    done = runs[(runs[names.STATE] == TrialState.COMPLETE.name)
                & runs[[x, y, names.CHARS_SEEN]].notna().all(axis=1)]  # as fitted
    fig, ax = plt.subplots(figsize=(7, 4.3))
    _mark_states(ax, done, x, y)
    lo, hi = float(done[x].min()), law.x_max * scale
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, law(xs), color="#2ca02c", lw=1.5, label=f"fit: exponent {law.exponent:+.3f}")
    ax.scatter([hi], [float(law(hi))], marker="x", s=80, color="#2ca02c",
               label=f"{scale:g}x largest: {float(law(hi)):.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.yaxis)
    labels = {names.ATTR_PARAMS_TOTAL: "parameters", names.ATTR_TRAIN_FLOPS: "training compute (FLOP)"}
    ax.set_xlabel(labels.get(x, x) + " (log)")
    ax.set_ylabel(f"{metric_label(y)} (log)")
    ax.set_title(f"{metric_label(y)} against {labels.get(x, x)}, complete trials")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    fig.tight_layout()
    return fig


def _plain_ticks(axis) -> None:
    """A log axis over less than a decade: a few plain numbers instead of crowded 2x10^0 labels."""
    axis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_minor_locator(mticker.LogLocator(subs="auto"))
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(mticker.NullFormatter())


def plot_confirmation(rows: list[dict], metric: str = names.VAL_BPC) -> Figure:
    """A confirmation (``study.user_attrs["confirm"]["table"]``): per config its mean over seeds
    with the 95% interval, each seed's value, and the single-seed value the study ranked it by."""
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.6))
    for i, r in enumerate(rows):
        color = "black" if r[names.ATTR_BASELINE] else STATE_COLORS[TrialState.COMPLETE.name]
        ax.errorbar(r["mean"], i, xerr=r["ci95"], fmt="o", color=color, capsize=4, lw=1.5, zorder=3,
                    label="mean, 95% interval" if i == 0 else None)
        seeds = [float(v) for v in str(r["values"]).split()]
        ax.scatter(seeds, [i] * len(seeds), s=14, color=color, alpha=0.45, zorder=2,
                   label="each seed" if i == 0 else None)
        ax.scatter([r["original"]], [i], marker="x", s=50, color="#d62728", zorder=4,
                   label="the study's single seed" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [f"trial {r['trial']}" + (" (baseline)" if r[names.ATTR_BASELINE] else "")
                                     for r in rows])
    ax.invert_yaxis()  # the winner on top
    ax.set_xlabel(metric_label(metric))
    ax.set_title("confirmed over fresh seeds: lower is better")
    ax.grid(alpha=0.3, axis="x")
    _legend(ax)
    fig.tight_layout()
    return fig


def optuna_figure(study, view: str, pair: tuple[str, str] = ("model.hidden_size", "data.seq_length")):
    """One of Optuna's own views of a study (matplotlib; ``view`` from ``OPTUNA_VIEWS``): the
    Figure, or the reason it cannot be drawn yet (too few complete trials, a parameter not in
    the search space...) as a string."""
    name = metric_label((study.metric_names or ["Objective Value"])[0])  # the study names its metric
    draw = {
        "optimization history": lambda: ov.plot_optimization_history(study, target_name=name),
        "hyperparameter importances": lambda: ov.plot_param_importances(study, target_name=name),
        "parallel coordinates": lambda: ov.plot_parallel_coordinate(study, target_name=name),
        "contour": lambda: ov.plot_contour(study, params=list(pair), target_name=name),
        "slices": lambda: ov.plot_slice(study, target_name=name),
    }[view]
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
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
    for a in fig.axes:  # a log-scaled parameter (embedding_dim, lr) gets plain, sparse labels
        for axis in (a.xaxis, a.yaxis):
            if axis.get_scale() == "log":
                _plain_ticks(axis)
    with warnings.catch_warnings():  # colour bars are "not compatible with tight_layout"
        warnings.simplefilter("ignore")
        fig.tight_layout()
    return fig


def explain(fig_or_reason) -> None:
    """In a notebook: a figure shows itself (inline backend); a reason is printed instead."""
    if isinstance(fig_or_reason, str):
        print(fig_or_reason)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _answer_profiles(ax, answer: Answer, y: str) -> None:
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, max(1, len(answer.profiles))))
    for p, color in zip(answer.profiles, colors, strict=True):
        d = p.trials
        ax.scatter(d[names.ATTR_PARAMS_TOTAL], d["value"], s=22, color=color, alpha=0.8, zorder=3,
                   label=f"{p.budget:g} s" + ("" if p.ok else " (no optimum)"))
        base = d[d[names.ATTR_BASELINE]]
        ax.scatter(base[names.ATTR_PARAMS_TOTAL], base["value"], marker="*", s=140, color="black", zorder=4,
                   label="seed baseline" if p is answer.profiles[0] else None)
        if p.coef is not None:
            ns = np.geomspace(*p.window, 60)
            ax.plot(ns, p.curve(ns), color=color, lw=1.3, ls="-" if p.ok else ":")
        if p.ok:
            ax.errorbar([p.n_opt], [p.l_opt], xerr=[[max(0.0, p.n_opt - p.n_interval[0])], [max(0.0, p.n_interval[1] - p.n_opt)]],
                        fmt="o", ms=7, mfc="white", color=color, capsize=3, zorder=5)
    pr = answer.prediction
    if pr.ok:
        ax.add_patch(plt.Rectangle((pr.n_interval[0], pr.val_interval[0]), pr.n_interval[1] - pr.n_interval[0],
                                   pr.val_interval[1] - pr.val_interval[0], color="#d62728", alpha=0.15,
                                   label=f"predicted at {pr.budget:g} s"))
    if answer.final is not None:
        ax.scatter([answer.final[names.ATTR_PARAMS_TOTAL]], [answer.measured], marker="D", s=60, color="#d62728",
                   zorder=6, label="measured there")
    ax.set_xscale("log")
    values = pd.concat([p.trials["value"] for p in answer.profiles if not p.trials.empty] or [pd.Series([0.0])])
    low = min(float(values.min()), answer.measured or math.inf, pr.val_interval[0] if pr.ok else math.inf)
    top = max(p.trials["value"].min() for p in answer.profiles if not p.trials.empty) if len(values) > 1 else low
    ax.set_ylim(low - 0.05, top * 1.12)  # the bottoms, not the far-off large models of short budgets
    ax.set_xlabel("parameters (log)")
    ax.set_ylabel(f"{metric_label(y)} (far-off trials above the axis)")
    ax.set_title("iso-compute profiles: val against size at each budget")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def _answer_law(ax, answer: Answer, which: str) -> None:
    law = answer.n_law if which == "N_opt" else answer.l_law
    ok = [p for p in answer.profiles if p.ok]
    get = (lambda p: (p.n_opt, p.n_interval)) if which == "N_opt" else (lambda p: (p.l_opt, p.l_interval))
    for p in ok:
        v, (lo, hi) = get(p)
        ax.errorbar([p.budget], [v], yerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], fmt="o", color="#1f77b4",
                    capsize=3, zorder=3)
    pr = answer.prediction
    if law.ok:
        cs = np.geomspace(min(p.budget for p in ok), pr.budget, 50)
        ax.plot(cs, law(cs), color="#1f77b4", lw=1.2, label=f"C^{law.exponent:+.3f}")
    if pr.ok:
        v, (lo, hi) = (pr.n_opt, pr.n_interval) if which == "N_opt" else (pr.val, pr.val_interval)
        ax.errorbar([pr.budget], [v], yerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], fmt="s", color="#d62728", capsize=3,
                    label="predicted", zorder=4)
    if answer.final is not None:
        got = answer.final[names.ATTR_PARAMS_TOTAL] if which == "N_opt" else answer.measured
        ax.scatter([pr.budget], [got], marker="D", s=50, color="black", zorder=5, label="trained / measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if which == "L_opt":
        _plain_ticks(ax.yaxis)
    ax.set_xlabel("compute budget, seconds (log)")
    ax.set_ylabel("parameters at the optimum" if which == "N_opt" else "val at the optimum")
    ax.set_title(f"{which}(C)" + ("" if law.ok else ": no law (see the text)"))
    ax.grid(alpha=0.3, which="both")
    _legend(ax, 7)


def plot_scaling_answer(answer: Answer, y: str = names.VAL_BPC) -> Figure:
    """A scaling study's answer in one picture: the iso-compute profiles with their fitted
    minima and intervals, N_opt(C) and L_opt(C) with the prediction and what the check measured."""
    if all(p.trials.empty for p in answer.profiles):
        raise CharlstmError("no complete trial to draw yet")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    _answer_profiles(axes[0], answer, y)
    _answer_law(axes[1], answer, "N_opt")
    _answer_law(axes[2], answer, "L_opt")
    fig.tight_layout()
    return fig


def plot_at_equal_compute(answer: Answer, y: str = names.VAL_BPC) -> Figure:
    """Each of hidden_size, seq_length and embedding_dim at equal compute, one row per budget:
    val against hidden_size (the profile); seq_length and embedding_dim with size taken out
    (each trial's residual from its budget's fitted profile; below 0: better than its size
    predicts), the other settings marginalised by the sampler's spread."""
    keys = ["model.hidden_size", "data.seq_length", "model.embedding_dim"]
    rows = max(1, len(answer.profiles))
    fig, axes = plt.subplots(rows, 3, figsize=(13, 2.9 * rows), squeeze=False)
    for r, p in enumerate(answer.profiles):
        d = p.trials
        for c, key in enumerate(keys):
            ax = axes[r][c]
            if key not in d or d.empty:
                ax.set_axis_off()
                continue
            if c == 0 or p.coef is None:
                yy, label = d["value"], metric_label(y)
            else:
                d = d[d[names.ATTR_PARAMS_TOTAL].between(*p.window)]
                yy, label = d["value"] - p.curve(d[names.ATTR_PARAMS_TOTAL].to_numpy(float)), "residual vs its size"
                ax.axhline(0, color="#999", lw=0.8)
            ax.scatter(d[key], yy, s=26, color="#1f77b4", zorder=3)
            base = d[names.ATTR_BASELINE].to_numpy(bool)
            ax.scatter(d[key][base], yy[base], marker="*", s=120, color="black", zorder=4)
            ax.set_xscale("log")
            _plain_ticks(ax.xaxis)
            if key == "data.seq_length":  # (a few choices: each its own tick)
                ax.set_xticks(sorted(set(d[key])))
            if c == 0 and len(yy):
                ax.set_ylim(float(yy.min()) - 0.03, float(yy.min()) * 1.15)  # far-off trials above the axis
            ax.set_xlabel(key)
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(f"{p.budget:g} s of compute", fontsize=9)
            ax.grid(alpha=0.3)
            d = p.trials
    fig.tight_layout()
    return fig

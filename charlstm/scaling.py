"""Iso-compute scaling, after Hoffmann et al. 2022 (approach 2): at each compute budget the
profile of val bits/char against parameters, its minimum (the compute-optimal size) with a
bootstrap interval; across budgets the power laws N_opt(C) and L_opt(C); and what they predict
for a larger budget, which a scaling study then trains to check. Every fit says in one sentence
when it means nothing, and what to change.

::

    val |  budget C1      C2        C3             a parabola in log10 N through the best
        |   \\_*_/    \\__*__/    \\___*___/         trial and its neighbours; * its minimum
        +--------------------------------- N       N_opt(C) = a C^b across the *'s

Pure numbers in, numbers and sentences out: the sweep (to queue the check) and the read side
(report, notebooks) call the same functions on the same trials and get the same answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from charlstm import names
from charlstm.model import count_params

# a profile's parabola is fitted near its bottom: the trials within WINDOW (relative) of its best
# val (widened by the next best until MIN_SIZES sizes are in), its minimum held between the next
# sizes out on each side. A whole profile is not a
# parabola: a model too large for a short budget sees a few hundred steps and lies far above,
# a steep wall the bottom does not follow.
WINDOW = 0.06
MIN_SIZES = 4  # distinct sizes a profile needs: a parabola has three parameters, and one to spare
MIN_BUDGETS = 3  # a power law through two points fits any two numbers
SEED = 0  # the bootstrap's: the same trials always give the same intervals
SIZE_STEP = 8  # a predicted hidden_size is a multiple of this (odd sizes run slower in bfloat16)


def _pct(values: np.ndarray, level: float) -> tuple[float, float]:
    # (sample values, not interpolations: a resample with no minimum is an infinite one)
    return (float(np.percentile(values, 50 * (1 - level), method="lower")),
            float(np.percentile(values, 50 * (1 + level), method="higher")))


@dataclass(frozen=True)
class Profile:
    """One budget's trials (val against parameters) and its fitted minimum, or why none."""

    budget: float
    trials: pd.DataFrame  # params_total, value and the trial's settings, smallest first
    n_opt: float | None = None  # parameters at the fitted minimum
    n_interval: tuple[float, float] = (math.nan, math.nan)
    l_opt: float | None = None  # the fitted val there
    l_interval: tuple[float, float] = (math.nan, math.nan)
    coef: tuple[float, float, float] | None = None  # val = c0 + c1 x + c2 x^2, x = log10 N
    window: tuple[float, float] = (math.nan, math.nan)  # the N range the parabola was fitted to
    noise: float = math.nan  # the residuals' sd: what one trial scatters around the profile
    reason: str = ""
    samples: tuple[np.ndarray, np.ndarray] = field(default=(np.array([]), np.array([])), repr=False)

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def best(self) -> pd.Series:
        """The best trial measured at this budget."""
        return self.trials.loc[self.trials["value"].idxmin()]

    def curve(self, n: np.ndarray) -> np.ndarray:
        c0, c1, c2 = self.coef
        x = np.log10(n)
        return c0 + c1 * x + c2 * x * x

    def describe(self, unit: str = names.unit(names.VAL_BPC)) -> str:
        head = f"budget {self.budget:g}"
        if not self.ok:
            return f"{head}: no optimum is shown: {self.reason}"
        lo, hi = self.n_interval
        return (f"{head}: optimum {self.n_opt:,.0f} parameters ({lo:,.0f} to {hi:,.0f}), "
                f"val {self.l_opt:.4f} {unit} ({self.l_interval[0]:.4f} to {self.l_interval[1]:.4f})")


def _parabola(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    c2, c1, c0 = np.polyfit(x, y, 2)
    return float(c0), float(c1), float(c2)


def _minimum(coef: tuple[float, float, float], x_mid: float) -> float:
    """The parabola's minimum, or +-inf toward where it falls when it has none."""
    c0, c1, c2 = coef
    if c2 > 0:
        return -c1 / (2 * c2)
    return -math.inf if c1 + 2 * c2 * x_mid > 0 else math.inf


def _window(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Which trials the parabola is fitted to (those within WINDOW of the best val, widened by
    the next best until MIN_SIZES sizes are in), and the bracket the optimum must lie in: from
    the size below the window to the size above it, both measured worse (the range's own ends
    where the window reaches them)."""
    inside = y <= y.min() * (1 + WINDOW)
    for i in np.argsort(y):
        if len(np.unique(x[inside])) >= MIN_SIZES:
            break
        inside[i] = True
    sizes = np.unique(x)
    below = sizes[sizes < x[inside].min()]
    above = sizes[sizes > x[inside].max()]
    return inside, (below[-1] if len(below) else sizes[0], above[0] if len(above) else sizes[-1])


def fit_profile(budget: float, trials: pd.DataFrame, interval: float = 0.9, bootstrap: int = 1000) -> Profile:
    """The minimum of val against log10(parameters) at one budget: a parabola through the trials
    near the best, its minimum held within the bracket of sizes measured worse (``_window``),
    its interval from a residual bootstrap (refits to the fitted values plus resampled
    residuals). Refused, in one sentence, when it means nothing."""
    size = names.ATTR_PARAMS_TOTAL
    d = trials[np.isfinite(trials[size]) & np.isfinite(trials["value"])].sort_values(size)
    d = d.reset_index(drop=True)
    p = Profile(budget, d)
    sizes = np.log10(np.unique(d[size]))
    if len(sizes) < MIN_SIZES:
        return _refused(p, f"{len(sizes)} size(s) complete, a profile needs {MIN_SIZES} or more: add "
                           "scaling.hidden_sizes (or let the queued trials finish)")
    x, y = np.log10(d[size].to_numpy(float)), d["value"].to_numpy(float)
    j = int(np.searchsorted(sizes, x[int(np.argmin(y))]))
    if j in (0, len(sizes) - 1):
        side = "smallest" if j == 0 else "largest"
        return _refused(p, f"the best trial is at the {side} size searched ({10 ** sizes[j]:,.0f} parameters), so the "
                           f"optimum may lie beyond it: extend scaling.hidden_sizes {'below' if j == 0 else 'above'} it")
    inside, (lo, hi) = _window(x, y)
    xw, yw = x[inside], y[inside]
    coef = _parabola(xw, yw)
    p = Profile(budget, d, coef=coef, window=(10 ** xw.min(), 10 ** xw.max()))
    if not coef[2] > 0:
        return _refused(p, "the profile has no minimum (val does not rise on both sides of any size): widen "
                           "scaling.hidden_sizes on both sides, or add trials where it is flat")
    fitted = np.polyval(coef[::-1], xw)
    resid = yw - fitted
    noise = float(np.sqrt((resid**2).sum() / max(len(xw) - 3, 1)))
    rng = np.random.default_rng(SEED)
    inflate = math.sqrt(len(xw) / max(len(xw) - 3, 1))  # residuals of a fit understate its noise
    xs, ls = np.empty(bootstrap), np.empty(bootstrap)
    for b in range(bootstrap):
        cb = _parabola(xw, fitted + inflate * rng.choice(resid, len(resid)))
        xs[b] = np.clip(_minimum(cb, (xw.min() + xw.max()) / 2), lo, hi)
        ls[b] = np.polyval(cb[::-1], xs[b])
    n_lo, n_hi = _pct(xs, interval)
    # the estimate: the resamples' median (the fit's own minimum can lie past a bracket's end,
    # where it is held; the median is not)
    x_opt = float(np.median(xs))
    p = Profile(budget, d, 10**x_opt, (10**n_lo, 10**n_hi), float(np.median(ls)),
                _pct(ls, interval), coef, p.window, noise, "", (xs, ls))
    if n_lo <= sizes[0] and n_hi >= sizes[-1]:  # (held within the range, it can be no wider)
        return _refused(p, f"the optimum's interval is as wide as the searched range ({10**n_lo:,.3g} to {10**n_hi:,.3g} "
                           "parameters): add trials per size, or sizes near the optimum")
    for end, side, where in ((sizes[0], "smallest", "below"), (sizes[-1], "largest", "above")):
        if end in (n_lo, n_hi):
            return _refused(p, f"the optimum's interval ({10**n_lo:,.3g} to {10**n_hi:,.3g} parameters) reaches the "
                               f"{side} size searched: extend scaling.hidden_sizes {where} it")
    return p


def _refused(p: Profile, reason: str) -> Profile:
    return replace(p, reason=reason)


@dataclass(frozen=True)
class Law:
    """``y = coef * C^exponent`` across budgets, with the exponent's bootstrap interval, or why none."""

    name: str  # N_opt or L_opt
    coef: float = math.nan
    exponent: float = math.nan
    exponent_interval: tuple[float, float] = (math.nan, math.nan)
    budgets: tuple[float, ...] = ()
    reason: str = ""
    samples: tuple[np.ndarray, np.ndarray] = field(default=(np.array([]), np.array([])), repr=False)

    @property
    def ok(self) -> bool:
        return not self.reason

    def __call__(self, c):
        return self.coef * np.asarray(c, dtype=float) ** self.exponent

    def describe(self) -> str:
        if not self.ok:
            return f"no {self.name}(C) law is shown: {self.reason}"
        lo, hi = self.exponent_interval
        text = (f"{self.name}(C) = {self.coef:.4g} * C^{self.exponent:+.3f} (exponent {lo:+.3f} to {hi:+.3f}, "
                f"{len(self.budgets)} budgets)")
        if lo <= 0 <= hi:
            text += f"; the interval includes 0: {self.name} does not measurably move with compute here"
        return text


def fit_law(name: str, profiles: list[Profile], interval: float = 0.9) -> Law:
    """A power law through the profiles' minima (``N_opt``: their sizes, ``L_opt``: their val),
    its interval from the profiles' bootstrap samples taken together."""
    ok = [p for p in profiles if p.ok]
    if len(ok) < MIN_BUDGETS:
        failed = "; ".join(f"budget {p.budget:g}" for p in profiles if not p.ok)
        return Law(name, reason=f"{len(ok)} budget(s) have an optimum and a law needs {MIN_BUDGETS}"
                                + (f" (none at {failed}: see above)" if failed else ": add scaling.budgets"))
    c = np.log10([p.budget for p in ok])
    if name == "N_opt":
        y, ys = np.log10([p.n_opt for p in ok]), np.array([p.samples[0] for p in ok])
    else:
        y, ys = np.log10([p.l_opt for p in ok]), np.log10(np.array([p.samples[1] for p in ok]))
    slope, icpt = np.polyfit(c, y, 1)
    keep = np.isfinite(ys).all(axis=0)
    fits = np.array([np.polyfit(c, ys[:, b], 1) for b in np.flatnonzero(keep)])
    return Law(name, float(10**icpt), float(slope), _pct(fits[:, 0], interval), tuple(p.budget for p in ok), "",
               (10 ** fits[:, 1], fits[:, 0]))


@dataclass(frozen=True)
class Prediction:
    """The compute-optimal size and its val at a budget beyond those searched."""

    budget: float
    n_opt: float = math.nan
    n_interval: tuple[float, float] = (math.nan, math.nan)
    val: float = math.nan
    val_interval: tuple[float, float] = (math.nan, math.nan)  # one trial's at n_opt (see ``predict``)
    reason: str = ""
    caveat: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    def as_dict(self) -> dict:
        return {"budget": self.budget, "n_opt": self.n_opt, "n_interval": list(self.n_interval), "val": self.val,
                "val_interval": list(self.val_interval), "reason": self.reason, "caveat": self.caveat}

    @classmethod
    def from_dict(cls, d: dict) -> Prediction:
        return cls(d["budget"], d["n_opt"], tuple(d["n_interval"]), d["val"], tuple(d["val_interval"]),
                   d.get("reason", ""), d.get("caveat", ""))

    def check(self, measured: float | None) -> str:
        """Whether one trial at the predicted optimum fell inside the predicted interval."""
        if not self.ok:
            return "no prediction to check"
        if measured is None or not math.isfinite(measured):
            return "not checked yet (the final trial has not completed)"
        lo, hi = self.val_interval
        where = "inside" if lo <= measured <= hi else ("above" if measured > hi else "below")
        verdict = "held" if where == "inside" else "did not hold"
        return f"{verdict}: measured {measured:.4f}, {where} the predicted {lo:.4f} to {hi:.4f}"


def predict(n_law: Law, l_law: Law, profiles: list[Profile], budget: float, interval: float = 0.9) -> Prediction:
    """N_opt and L_opt at ``budget``: the laws' bootstrap fits evaluated there. The val is that
    of one trial at the predicted size, so on top of L_opt it carries what missing the true
    optimum costs (the largest budget's profile curvature times the squared distance, in
    log10 parameters, from each resample's optimum) and one trial's scatter (the profiles'
    pooled residual sd)."""
    if not (n_law.ok and l_law.ok):
        return Prediction(budget, reason=n_law.describe() if not n_law.ok else l_law.describe())
    n_b = n_law.samples[0] * budget ** n_law.samples[1]
    ok = [p for p in profiles if p.ok]
    noise = float(np.sqrt(np.mean([p.noise**2 for p in ok])))
    curvature = max(ok, key=lambda p: p.budget).coef[2]
    rng = np.random.default_rng(SEED + 1)
    l_b = l_law.samples[0] * budget ** l_law.samples[1]
    l_b = l_b + curvature * np.log10(float(n_law(budget)) / n_b) ** 2 + noise * rng.standard_normal(len(l_b))
    n_lo, n_hi = _pct(n_b, interval)
    searched = [n for p in profiles for n in p.trials[names.ATTR_PARAMS_TOTAL]]
    caveat = ""
    if n_hi / n_lo > max(searched) / min(searched):
        caveat = (f"the predicted size's interval ({n_lo:,.3g} to {n_hi:,.3g}) is wider than the searched range: "
                  "the check tests the val, not the size")
    # (the val is the median of the same draws as its interval: the cost of missing the optimum
    # is never negative, so the laws' own L_opt could lie below the interval)
    return Prediction(budget, float(n_law(budget)), (n_lo, n_hi), float(np.median(l_b)), _pct(l_b, interval), "", caveat)


@dataclass(frozen=True)
class Answer:
    """A scaling study's answer: each budget's profile, the two laws and the checked prediction."""

    profiles: list[Profile]
    n_law: Law
    l_law: Law
    prediction: Prediction
    measured: float | None = None  # the final trial's val, when it ran
    final: pd.Series | None = None  # its row
    unit: str = names.unit(names.VAL_BPC)  # the metric's
    budget_unit: str = "s"

    @property
    def check(self) -> str:
        return self.prediction.check(self.measured) + self.repetition()

    def repetition(self) -> str:
        """A caveat when the check read its training text more than once where each budget's
        best trial read it less than once: repeated text is worth less than new (Muennighoff et
        al. 2023), a regime the laws never saw."""
        epochs = names.ATTR_EPOCHS
        if self.final is None or not math.isfinite(self.final.get(epochs, math.nan)):
            return ""
        searched = max((float(p.best.get(epochs, math.nan)) for p in self.profiles if p.ok), default=math.nan)
        if not self.final[epochs] > 1 >= searched:
            return ""
        return (f" (the check read the training split {self.final[epochs]:.1f} times, each budget's best trial at "
                f"most {searched:.1f} times: laws fitted below one pass promise the gains of new text)")


def analyse(frame: pd.DataFrame, budgets: list[float], predict_at: float, interval: float = 0.9,
            bootstrap: int = 1000, stored: dict | None = None) -> Answer:
    """The whole answer from a ``trial_frame``; ``stored``: the prediction the study made when it
    queued its check (the report shows that one, made before the measurement)."""
    search = frame[~frame[names.ATTR_FINAL]]
    profiles = [fit_profile(b, search[search["budget"] == b], interval, bootstrap) for b in sorted(budgets)]
    n_law, l_law = fit_law("N_opt", profiles, interval), fit_law("L_opt", profiles, interval)
    prediction = Prediction.from_dict(stored) if stored else predict(n_law, l_law, profiles, predict_at, interval)
    finals = frame[frame[names.ATTR_FINAL]]
    final = finals.iloc[0] if not finals.empty else None
    return Answer(profiles, n_law, l_law, prediction, None if final is None else float(final["value"]), final)


BUDGET_UNITS = {"max_seconds": "s", "max_steps": "steps", "max_chars": "chars"}


def study_answer(trials, settings: dict, stored: dict | None = None) -> Answer:
    """A study's answer from its trials and its stored settings (``SweepSpec.as_dict()``), in
    the units of its metric and budgets."""
    sc = settings["scaling"]
    frame = trial_frame(trials, f"train.{sc['budget']}")
    answer = analyse(frame, sc["budgets"], settings["final"][sc["budget"]], sc["interval"], sc["bootstrap"], stored)
    unit = names.unit(settings.get("metric", names.VAL_BPC))
    return replace(answer, unit=unit, budget_unit=BUDGET_UNITS[sc["budget"]])


# what a trial's user attrs measured, each a column of ``trial_frame`` (NaN where a trial has none)
MEASURED = (names.ATTR_PARAMS_TOTAL, names.ATTR_TRAIN_FLOPS, names.CHARS_SEEN, names.ATTR_EPOCHS)


def trial_frame(trials, budget_key: str) -> pd.DataFrame:
    """The COMPLETE trials of a study as rows: trial, budget, final, baseline, value,
    params_total, train_flops, chars_seen and each param by its dotted name."""
    rows = []
    for t in trials:
        if t.state != TrialState.COMPLETE or t.value is None:
            continue
        flags = {k: bool(t.user_attrs.get(k)) for k in (names.ATTR_FINAL, names.ATTR_BASELINE)}
        totals = {k: t.user_attrs.get(k, math.nan) for k in MEASURED}
        rows.append({"trial": t.number, "budget": t.params.get(budget_key), **flags, "value": float(t.value),
                     **totals, **t.params})
    cols = ["trial", "budget", names.ATTR_FINAL, names.ATTR_BASELINE, "value", *MEASURED]
    df = pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r} - set(cols)))
    return df.astype({names.ATTR_FINAL: bool, names.ATTR_BASELINE: bool, names.ATTR_PARAMS_TOTAL: float,
                      "value": float})


def predicted_config(prediction: Prediction, like: pd.Series, vocab_size: int, num_layers: int = 1,
                     dropout: float = 0.0, embedding_dim: int = 48) -> dict:
    """The params of the check: ``like``'s (the largest budget's best trial: its context and
    embedding) with the hidden_size whose parameter count is nearest the predicted optimum
    (the other shape settings ``like``'s where it has them, else the ones given)."""
    get = lambda key, default: like[key] if key in like and not pd.isna(like[key]) else default  # noqa: E731
    e, num_layers, dropout = int(get("model.embedding_dim", embedding_dim)), int(get("model.num_layers", num_layers)), \
        float(get("model.dropout", dropout))
    sizes = range(SIZE_STEP, 16 * 1024 + 1, SIZE_STEP)
    h = min(sizes, key=lambda h: abs(math.log(count_params(vocab_size, e, h, num_layers, dropout)["total"] / prediction.n_opt)))
    keys = [k for k in like.index if k.startswith(("model.", "data.", "train.")) and not pd.isna(like[k])]
    return {**{k: like[k].item() if hasattr(like[k], "item") else like[k] for k in keys}, "model.hidden_size": h}


def context_table(profile: Profile, key: str) -> pd.DataFrame:
    """How a setting did at one budget with size taken out: each value's trials and their mean
    residual from the profile's parabola (negative: better than its size predicts)."""
    d = profile.trials
    if profile.coef is None or key not in d:
        return pd.DataFrame(columns=[key, "trials", "mean_residual"])
    d = d[d[names.ATTR_PARAMS_TOTAL].between(*profile.window)]  # (the parabola means little outside it)
    resid = d["value"] - profile.curve(d[names.ATTR_PARAMS_TOTAL].to_numpy(float))
    out = pd.DataFrame({key: d[key], "resid": resid}).groupby(key)["resid"].agg(["count", "mean"]).reset_index()
    return out.rename(columns={"count": "trials", "mean": "mean_residual"})


def _short(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else f"{n:.0f}"


def _config(row: pd.Series) -> str:
    letters = {"model.embedding_dim": "E", "model.hidden_size": "H", "data.seq_length": "T"}
    return " ".join(f"{short}{int(row[k])}" for k, short in letters.items() if k in row and not pd.isna(row[k]))


def best_context(profile: Profile, key: str) -> str:
    """The value of ``key`` that did best at this budget with size taken out (mean residual)."""
    table = context_table(profile, key).sort_values("mean_residual")
    if table.empty:
        return ""
    top = table.iloc[0]
    value = int(top[key]) if float(top[key]).is_integer() else top[key]
    return f"{key.split('.')[-1]} {value} ({top['mean_residual']:+.3f} vs its size, {int(top['trials'])} trial(s))"


def summary(answer: Answer) -> list[str]:
    """The answer in sentences, the most important first: each budget's optimum and best trial,
    the two laws, the prediction and whether its check held."""
    unit, budget_unit = answer.unit, answer.budget_unit
    lines = []
    for p in answer.profiles:
        head = f"at {p.budget:g} {budget_unit}:"
        if p.trials.empty:
            lines.append(f"{head} no complete trial yet")
            continue
        best, base = p.best, p.trials[p.trials[names.ATTR_BASELINE]]
        text = (f"{head} optimum {_short(p.n_opt)} parameters ({_short(p.n_interval[0])} to {_short(p.n_interval[1])}), "
                f"val {p.l_opt:.3f} ({p.l_interval[0]:.3f} to {p.l_interval[1]:.3f})" if p.ok
                else f"{head} no optimum: {p.reason}")
        text += (f"; best trial {int(best['trial'])} ({_config(best)}, {_short(best[names.ATTR_PARAMS_TOTAL])}) "
                 f"{best['value']:.3f} {unit}")
        if not base.empty:
            text += f", seed baseline {base['value'].iloc[0]:.3f}"
        context = "; ".join(c for c in (best_context(p, k) for k in ("data.seq_length",)) if c)
        lines.append(text + (f"; with size taken out, best {context}" if context else ""))
    lines += [answer.n_law.describe(), answer.l_law.describe()]
    flops = [f"{p.budget:g} {budget_unit} = {np.nanmedian(p.trials[names.ATTR_TRAIN_FLOPS]):.2g}"
             for p in answer.profiles if not p.trials.empty and p.trials[names.ATTR_TRAIN_FLOPS].notna().any()]
    if flops:
        lines.append(f"in training FLOP (each budget's median trial): {', '.join(flops)}")
    pr = answer.prediction
    if pr.ok:
        text = (f"predicted for {pr.budget:g} {budget_unit}: {_short(pr.n_opt)} parameters ({_short(pr.n_interval[0])} to "
                f"{_short(pr.n_interval[1])}), val {pr.val:.3f} ({pr.val_interval[0]:.3f} to {pr.val_interval[1]:.3f})")
        if answer.final is not None:
            final = answer.final
            text += (f"; trained as trial {int(final['trial'])} ({_config(final)}, "
                     f"{_short(final[names.ATTR_PARAMS_TOTAL])})")
        lines.append(f"{text}: {answer.check}" + (f" ({pr.caveat})" if pr.caveat else ""))
    else:
        lines.append(f"no prediction for {pr.budget:g} {budget_unit}: {pr.reason}")
    return lines

"""Fronts and fits over a frame of runs: the Pareto front of size against quality, and power
laws in log-log space with what they predict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from charlstm import names
from charlstm.errors import CharlstmError


def pareto_front(df: pd.DataFrame, x: str = names.ATTR_PARAMS_TOTAL, y: str = names.VAL_BPC) -> pd.Series:
    """True for the rows no other row beats on both ``x`` and ``y`` (lower is better for both).
    With a ``state`` column only COMPLETE rows count: a pruned trial's last value is not final."""
    ok = df[[x, y]].notna().all(axis=1)
    if names.STATE in df:
        ok &= df[names.STATE] == TrialState.COMPLETE.name
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
        return self.coef * np.asarray(x, dtype=float) ** self.exponent

    def describe(self, x_name: str = "x", y_name: str = "y") -> str:
        return f"{y_name} = {self.coef:.4g} * {x_name}^{self.exponent:+.4f} (R^2 {self.r2:.3f}, {self.n} points)"


def fit_power_law(x, y) -> PowerLaw:
    """Fit ``y = a x^b`` to the positive, finite points; at least two distinct x are needed."""
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


# When a scaling fit means something: enough complete trials that saw the same text, a
# falling curve and a good fit (charlstm.report and the 03-scaling notebook apply it alike)
MIN_POINTS = 5
SAME_TEXT = 1.1  # the most characters a trial saw over the fewest, for "the same amount of text"
MIN_R2 = 0.8


@dataclass(frozen=True)
class Scaling:
    """A power law worth showing, or the reason none is shown."""
    law: PowerLaw | None
    reason: str = ""


def scaling_fit(runs: pd.DataFrame, x: str = names.ATTR_PARAMS_TOTAL, y: str = names.VAL_BPC,
                x_name: str = "parameters") -> Scaling:
    """Fit ``y`` against ``x`` over the COMPLETE runs only when the fit means something. Trials
    of equal *seconds* are refused: larger models see less text in them, so the fit would
    measure the budget, not the size (a study with a ``train.max_chars`` budget passes)."""
    if not {names.STATE, x, y, names.CHARS_SEEN} <= set(runs.columns):
        return Scaling(None, "no complete trial has been evaluated")
    done = runs[(runs[names.STATE] == TrialState.COMPLETE.name)
                & runs[[x, y, names.CHARS_SEEN]].notna().all(axis=1)]
    if len(done) < MIN_POINTS:
        return Scaling(None, f"{len(done)} complete trial(s); a fit needs {MIN_POINTS} or more")
    lo, hi = float(done[names.CHARS_SEEN].min()), float(done[names.CHARS_SEEN].max())
    if hi > SAME_TEXT * lo:
        return Scaling(None, f"the complete trials saw different amounts of text ({lo:,.0f} to {hi:,.0f} "
                             "characters), so a fit would mix model size with training length; give the "
                             "study a train.max_chars budget")
    try:
        law = fit_power_law(done[x], done[y])
    except CharlstmError as e:
        return Scaling(None, str(e))
    if law.exponent >= 0:
        return Scaling(None, f"{y} does not fall with {x_name} here (exponent {law.exponent:+.3f}, "
                             f"R^2 {law.r2:.2f}): no law to extrapolate")
    if law.r2 < MIN_R2:
        return Scaling(None, f"the fit is poor (R^2 {law.r2:.2f} < {MIN_R2}, exponent {law.exponent:+.3f})")
    return Scaling(law)


def scaling_note(fit: Scaling, scale: float = 10.0, x_name: str = "parameters",
                 y_name: str = "val bits/char") -> str:
    """One sentence: the fitted exponent and what it predicts at ``scale`` x the largest x, or
    why no fit is shown."""
    law = fit.law
    if law is None:
        return f"no fit of {y_name} against {x_name} is shown: {fit.reason}"
    x = law.x_max * scale
    return (f"{law.describe(x_name, y_name)}; at {scale:g}x the largest ({x:,.3g} {x_name}) "
            f"it predicts {float(law(x)):.4f} (trials of one budget: a trend, not a promise)")

"""Fronts and fits over a frame of runs: the Pareto front of size against quality, and power
laws in log-log space with what they predict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from charlstm.errors import CharlstmError


def pareto_front(df: pd.DataFrame, x: str = "params_total", y: str = "val_bpc") -> pd.Series:
    """True for the rows no other row beats on both ``x`` and ``y`` (lower is better for both).
    With a ``state`` column only COMPLETE rows count: a pruned trial's last value is not final."""
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


def scaling_note(law: PowerLaw | None, scale: float = 10.0, x_name: str = "parameters",
                 y_name: str = "val bits/char") -> str:
    """One sentence: the fitted exponent and what it predicts at ``scale`` x the largest x."""
    if law is None:
        return f"too few complete trials to fit {y_name} against {x_name}"
    x = law.x_max * scale
    return (f"{law.describe(x_name, y_name)}; at {scale:g}x the largest ({x:,.3g} {x_name}) "
            f"it predicts {float(law(x)):.4f} (a fit over {law.n} short trials: a trend, "
            "not a promise)")

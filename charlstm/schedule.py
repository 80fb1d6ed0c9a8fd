"""A run's schedule: the clocks its budget is counted on, how far through it a run is, when it
evaluates and when it ends, and the learning rate at each step (``train.lr: auto`` follows the
budget). ``train`` asks; the run's counters live in ``train.RunState``.

::

    progress   0 ........................................... 1   (budget_progress: the budget's clock)
    lr         /^^^^^^^^^^--..__                                (lr_at: warm-up, then cosine to the floor)
    evals           |      |      |      |      |      |         (eval_clock: every 1/eval_points)
    end                                                  ^       (budget_spent: the first budget reached)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import torch

from charlstm.config import Config, TrainConfig


class Progress(Protocol):
    """Where a run is (``train.RunState`` carries it): steps, characters, wall and compute seconds."""

    step: int
    chars: int
    train_time: float
    compute_time: float


WALL_CAP = 4.0  # without max_wall_seconds, a max_seconds run ends by 4x its budget of wall-clock


# train.lr: auto. The best peak lr of the default schedule falls with the budget: measured at the
# seed size (benchmarks/lr_budget.py; docs/training.md: Learning rate per budget), it is about
# AUTO_LR * (seconds / 60) ** -AUTO_LR_POWER, held within AUTO_LR_RANGE. A budget of steps or
# characters alone gets the lr of AUTO_LR_SECONDS (the baseline's budget).
AUTO_LR, AUTO_LR_POWER, AUTO_LR_RANGE, AUTO_LR_SECONDS = 7.6e-3, 0.64, (1e-3, 3e-2), 300.0


def auto_lr(tc: TrainConfig) -> float:
    """The peak learning rate ``train.lr: auto`` means for this budget (compute seconds, else
    the wall-clock cap, else AUTO_LR_SECONDS)."""
    seconds = tc.max_seconds or tc.max_wall_seconds or AUTO_LR_SECONDS
    lo, hi = AUTO_LR_RANGE
    return float(min(max(AUTO_LR * (seconds / 60.0) ** -AUTO_LR_POWER, lo), hi))


def resolve_lr(tc: TrainConfig) -> float:
    """``train.lr`` as a number (``auto`` resolved); the schedule's peak is this x ``lr_scale``."""
    return auto_lr(tc) if tc.lr == "auto" else tc.lr


def peak_lr(tc: TrainConfig) -> float:
    return resolve_lr(tc) * tc.lr_scale


def lr_at(cfg: Config, step: int, progress: float) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio * lr`` over the budget."""
    tc = cfg.train
    peak = peak_lr(tc)
    if tc.warmup_steps and step < tc.warmup_steps:
        return peak * (step + 1) / tc.warmup_steps
    if tc.schedule == "constant":
        return peak
    progress = min(max(progress, 0.0), 1.0)
    return peak * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def compute_clock(device: torch.device) -> Callable[[], float]:
    """The clock of a ``max_seconds`` budget: on a CPU the process's CPU time (all its threads)
    over torch's thread count, which a busy machine does not inflate the way it does the
    wall-clock (a run that gets half a core runs twice as long, not half as far); on a GPU,
    whose work the host's CPU time does not see, the wall-clock."""
    if device.type != "cpu":
        return time.perf_counter
    threads = torch.get_num_threads()
    return lambda: time.process_time() / threads


def wall_cap(tc: TrainConfig) -> float | None:
    """``max_wall_seconds``, or 4 x ``max_seconds`` (a run whose threads mostly wait, or a
    machine far too busy, must still end)."""
    return tc.max_wall_seconds or (WALL_CAP * tc.max_seconds if tc.max_seconds else None)


def budget_spent(tc: TrainConfig, s: Progress, replay: list[float] | None = None) -> bool:
    """The first budget reached ends the run; a replayed one, where its recorded clock ends (a
    replay's own wall-clock never cuts it short)."""
    cap = wall_cap(tc) if replay is None else None
    return bool((tc.max_steps and s.step >= tc.max_steps) or (tc.max_chars and s.chars >= tc.max_chars)
                or (tc.max_seconds and s.compute_time >= tc.max_seconds) or (cap and s.train_time >= cap)
                or (replay is not None and s.step >= len(replay)))


def budget_progress(tc: TrainConfig, s: Progress) -> float:
    """How far through its budget the run is, 0..1 (the schedule's clock)."""
    fractions = [0.0]
    if tc.max_steps:
        fractions.append(s.step / tc.max_steps)
    if tc.max_chars:
        fractions.append(s.chars / tc.max_chars)
    if tc.max_seconds:
        fractions.append(s.compute_time / tc.max_seconds)
    if tc.max_wall_seconds:  # (the implied cap is a safety net, not the schedule's clock)
        fractions.append(s.train_time / tc.max_wall_seconds)
    return max(fractions)


def eval_clock(tc: TrainConfig, s: Progress) -> float:
    """Where a run is on its evaluation schedule: characters seen, or with ``eval_points`` the
    budget's progress in points (``eval_points`` at its end, which the last evaluation marks)."""
    return budget_progress(tc, s) * tc.eval_points if tc.eval_points else s.chars

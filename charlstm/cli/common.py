"""What the commands share: how a stopped command says how to resume, the study argument, the live view's flags."""

from __future__ import annotations

import argparse
import shlex
import sys

from charlstm import names

INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C


# What a charlstm process sets before MLflow is imported (MLflow reads both at import time):
# no telemetry from a research tool, no artifact progress bars between our own lines.
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def stopped(what: str, resume: str) -> int:
    """One line for a command a signal stopped, and the command that carries on."""
    print(f"charlstm: {what}; resume with: {resume}", file=sys.stderr)
    return INTERRUPTED


def command(*words: str, **options: str | list[str] | None) -> str:
    """A command line to type again: ``--set`` repeated, options left out when unset."""
    parts = ["charlstm", *words]
    for name, value in options.items():
        for v in value if isinstance(value, list) else [value] if value else []:
            parts += [f"--{name.replace('_', '-')}", v]
    return shlex.join(parts)


def study_name(arg: str) -> str:
    """``STUDY`` may be a study name or the study file that names it."""
    if arg.endswith((".yaml", ".yml")):
        from charlstm.sweep.spec import load_sweep

        return load_sweep(arg).study
    return arg


def study_args(p: argparse.ArgumentParser) -> None:
    """What the commands that read a finished (or running) study take."""
    p.add_argument("study", help="study name, or the study file (sweeps/*.yaml) that names it")
    p.add_argument("--storage", default=None, help=f"Optuna storage (default {names.DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the one the study stored)")


def view_args(p: argparse.ArgumentParser) -> None:
    """How a sweep shows itself: a live view on a terminal, timestamped lines in a log."""
    p.add_argument("-q", "--quiet", action="store_true", help="print only the end (the answer, the leaderboard)")
    p.add_argument("-v", "--verbose", action="store_true", help="also a line for every evaluation of every trial")

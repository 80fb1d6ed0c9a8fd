"""Command line: ``charlstm train | generate | sweep | worker | launch | status | confirm |
tracking-server | report | notebooks | reproduce | doctor | gc``. Each command's parser stands
beside its handler::

    train.py     train, generate
    sweep.py     sweep, worker, launch, status, confirm, tracking-server
    results.py   report, notebooks, reproduce
    upkeep.py    doctor, gc
    common.py    what they share

Bad input ends with one line on stderr and exit code 2, never a traceback. Ctrl-C or SIGTERM
pauses: the work in hand is saved at its next step, one line says how to resume, exit 130.

The commands import charlstm's modules when they run, not at the top: those pull in torch and
MLflow, whose imports take seconds (docs/benchmarks.md), which ``--help`` and a mistyped
argument should not wait for.
"""

from __future__ import annotations

import argparse
import os
import sys

from charlstm import __version__, interrupt
from charlstm.cli import results, sweep, train, upkeep
from charlstm.cli.common import INTERRUPTED, MLFLOW_ENV
from charlstm.errors import CharlstmError
from charlstm.server import use_credentials_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="charlstm",
        description="Character-level LSTM language models: train, sample, sweep, report.",
    )
    p.add_argument("--version", action="version", version=f"charlstm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (train.add_train, train.add_generate, sweep.add_sweep, sweep.add_worker, sweep.add_status,
                sweep.add_tracking_server, sweep.add_launch, upkeep.add_doctor, sweep.add_confirm, upkeep.add_gc,
                results.add_reproduce, results.add_report, results.add_notebooks):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    try:
        use_credentials_file()  # (a tracking server's login, for MLflow's client)
        # train, sweep, worker and confirm stop at their next safe point; the rest stop at once
        with interrupt.handled(defer=getattr(args, "defer", False)):
            return args.func(args)
    except CharlstmError as e:
        print(f"charlstm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("charlstm: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `charlstm ... | head`: the reader left; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

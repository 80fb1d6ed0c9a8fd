"""The commands that look after a study's stores: ``doctor`` (Optuna, MLflow and the checkpoints
agree; ``--fix`` repairs) and ``gc`` (the checkpoints a study no longer needs)."""

from __future__ import annotations

import argparse

from charlstm import names
from charlstm.cli.common import study_args, study_name
from charlstm.errors import human_bytes


def add_doctor(sub) -> None:
    d = sub.add_parser(
        "doctor",
        help="check that Optuna, MLflow and the checkpoints agree about a study; --fix repairs",
        description="Reconcile a study's Optuna trials with their MLflow runs: trials whose state "
        "disagrees with their run's status or state tag, RUNNING trials or runs whose process is "
        "gone, runs of no trial, trials of no run, checkpoint folders of no trial. Prints a table; "
        "--fix makes the safe repairs (a dead worker's trial is failed and queued to resume, a "
        "run follows its trial's final state, a folder of no trial is moved aside). Exit 0 only "
        "when all is consistent.",
        epilog=f"examples:\n  charlstm doctor              # every study in {names.DEFAULT_STORAGE}\n"
        "  charlstm doctor default --fix\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("study", nargs="?", help="study name or file (default: every study in the storage)")
    d.add_argument("--storage", default=None, help=f"Optuna storage (default {names.DEFAULT_STORAGE})")
    d.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the one the study stored)")
    d.add_argument("--fix", action="store_true", help="make the safe repairs, then check again")
    d.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from charlstm import doctor

    studies = [study_name(args.study)] if args.study else doctor.study_names(args.storage)
    problems = [p for name in studies for p in doctor.check(name, args.storage, args.tracking_uri)]
    if not problems:
        print(f"all consistent: {', '.join(studies) or 'no studies'} (Optuna, MLflow, checkpoints)")
        return 0
    if not args.fix:
        print(doctor.format_problems(problems))
        print(f"{len(problems)} problem(s); 'charlstm doctor --fix' makes the repairs listed")
        return 1
    done = doctor.repair(problems)
    if done:
        print(doctor.format_problems(done, fixed=True))
    left = [p for name in studies for p in doctor.check(name, args.storage, args.tracking_uri)]
    if left:
        print(doctor.format_problems(left))
        print(f"{len(done)} repaired; {len(left)} problem(s) left for you")
        return 1
    print(f"{len(done)} repaired; all consistent now")
    return 0


def add_gc(sub) -> None:
    g = sub.add_parser(
        "gc",
        help="delete the checkpoints of a study's trials outside the best (dry run by default)",
        description="List, then with --yes delete, the local checkpoints (best.pt, last.pt) and the "
        "MLflow checkpoint artifacts of every trial outside what --keep names. Never a registered "
        "version's, a running or queued trial's, or a failed trial's whose retry has not finished. "
        "Every trial keeps its record, its curves and its MLflow Model.",
        epilog="examples:\n  charlstm gc default                  # what --keep top:3 would delete\n"
        "  charlstm gc default --keep pareto --yes\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    study_args(g)
    g.add_argument("--keep", default="top:3", help="top:K (the K best complete trials) or pareto (top:3)")
    g.add_argument("--yes", action="store_true", help="delete; without it, only list")
    g.set_defaults(func=cmd_gc)


def cmd_gc(args: argparse.Namespace) -> int:
    from charlstm import gc

    gc.parse_keep(args.keep)  # a mistyped rule is one line before anything is read
    garbage, kept, uri = gc.collect(study_name(args.study), args.keep, args.storage, args.tracking_uri)
    print(gc.describe(garbage, kept))
    if not garbage:
        return 0
    if not args.yes:
        print("dry run: nothing deleted; add --yes to delete these checkpoints")
        return 0
    print(f"freed {human_bytes(gc.delete(garbage, uri))}")
    return 0

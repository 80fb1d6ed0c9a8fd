"""The commands that read a study's results: ``report`` (HTML and Markdown), ``notebooks``
(the analysis notebooks, executed) and ``reproduce`` (a run trained again from its record)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charlstm import names
from charlstm.cli.common import study_args, study_name
from charlstm.config import shipped_dir
from charlstm.errors import CharlstmError


def add_report(sub) -> None:
    r = sub.add_parser(
        "report",
        help="write a study's report: HTML (self-contained) and Markdown",
        description=f"Write {names.DEFAULT_REPORTS}/STUDY/report.html (plots embedded, opens offline) and "
        "report.md with its plots, from the study (Optuna) and its runs (MLflow); both are also "
        "logged to the study's parent run.",
        epilog="examples:\n  charlstm report default\n  charlstm report sweeps/default.yaml "
        "--prime 'JULIET:' --temperature 0.8\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    study_args(r)
    r.add_argument("--out", default=names.DEFAULT_REPORTS, help=f"reports folder ({names.DEFAULT_REPORTS})")
    r.add_argument("--prime", action="append", help="sample prime (repeatable; default a newline and 'ROMEO:')")
    r.add_argument("--temperature", action="append", type=float, help="sampling temperature (repeatable; 0.5 and 1.0)")
    r.add_argument("--length", type=int, default=200, help="characters per sample (200)")
    r.add_argument("--top", type=int, default=3, help="sample from this many best trials (3)")
    r.add_argument("--no-samples", action="store_true", help="skip the generated text")
    r.add_argument("--no-log", action="store_true", help="do not attach the report to the parent run")
    r.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from charlstm.report import SampleSettings, build_report, log_report, write_report

    samples = None if args.no_samples else SampleSettings(
        primes=tuple(args.prime or SampleSettings.primes), temperatures=tuple(args.temperature or
        SampleSettings.temperatures), length=args.length, top=args.top)
    study = study_name(args.study)
    report = build_report(study, args.storage, args.tracking_uri, samples,
                          progress=(lambda msg: print(f"report {study}: {msg}", file=sys.stderr)))
    folder = write_report(report, args.out).resolve()
    logged = not args.no_log and log_report(report, folder, report.tracking_uri)
    print(f"report: {(folder / 'report.html').as_uri()} and {folder / 'report.md'}"
          + (f" (also on MLflow run {report.parent_run_id}, artifacts {names.ARTIFACT_REPORT}/)" if logged else ""))
    return 0


def add_notebooks(sub) -> None:
    n = sub.add_parser(
        "notebooks",
        help=f"execute the analysis notebooks for a study into {names.DEFAULT_NOTEBOOKS_OUT}/",
        description="Run analysis/NN-*.py (jupytext percent notebooks) headlessly with papermill, "
        "parameterised by study, experiment, storage and tracking URI; the executed notebooks go "
        "to OUT/STUDY/*.ipynb.",
    )
    study_args(n)
    n.add_argument("--experiment", default=names.DEFAULT_EXPERIMENT, help=f"MLflow experiment ({names.DEFAULT_EXPERIMENT})")
    n.add_argument("--folder", default=None, help="where the notebook sources are (charlstm's analysis/)")
    n.add_argument("--out", default=names.DEFAULT_NOTEBOOKS_OUT,
                   help=f"executed notebooks go here, per study ({names.DEFAULT_NOTEBOOKS_OUT})")
    n.add_argument("--only", action="append", help="run only notebooks whose name starts with this (e.g. 01)")
    n.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=cmd_notebooks)


def cmd_notebooks(args: argparse.Namespace) -> int:
    try:
        from charlstm.analysis.notebooks import run_notebooks
    except ModuleNotFoundError as e:  # the notebook tools are an extra: charlstm[notebooks]
        raise CharlstmError(f"charlstm notebooks needs {e.name}: pip install 'charlstm[notebooks]'") from None

    study = study_name(args.study)
    params = {"study": study, "experiment": args.experiment, "storage": args.storage,
              "tracking_uri": args.tracking_uri}
    folder = args.folder or shipped_dir("analysis")
    out = run_notebooks(params, folder, Path(args.out) / study, args.only, progress=not args.quiet)
    for path in out:
        print(f"executed: {path}")
    return 0


def add_reproduce(sub) -> None:
    r = sub.add_parser(
        "reproduce",
        help="re-run a trial or run from its MLflow record and compare the curves",
        description="Re-train a run from what it recorded (resolved config with its seed and "
        "precision) into a new run tagged reproduces=<run id>, then compare the validation curves "
        "point by point. Exit 0 when identical; 1 with one line naming the first point that "
        "differs and what changed since (commit, corpus digest, torch version, device).",
        epilog="examples:\n  charlstm reproduce default 5           # trial 5 of study default\n"
        "  charlstm reproduce 3f2a...c9 --budget 2  # a run id; only its first 2 evaluations\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("target", help="a study (name or file) followed by a trial number, or an MLflow run id")
    r.add_argument("trial", nargs="?", type=int, help="the trial number, when TARGET is a study")
    r.add_argument("--budget", type=int, default=None, metavar="K", help="re-run only the first K evaluations")
    r.add_argument("--storage", default=None, help=f"Optuna storage (default {names.DEFAULT_STORAGE})")
    r.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the study's, or as train)")
    r.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from charlstm import reproduce, tracking

    if args.budget is not None and args.budget < 1:
        raise CharlstmError(f"--budget {args.budget}: give 1 or more evaluations")
    if args.trial is None:  # a run id
        if not tracking.RUN_ID.match(args.target):
            raise CharlstmError(f"{args.target}: not an MLflow run id (or give STUDY TRIAL)")
        run_id, uri = args.target, tracking.resolve_uri(args.tracking_uri)
    else:
        from charlstm.sweep.store import load_study, open_storage, tracking_uri_of, trial_run

        study = load_study(study_name(args.target), open_storage(args.storage))
        run_id, uri = trial_run(study, args.trial), tracking.resolve_uri(tracking_uri_of(study, args.tracking_uri))
    record = reproduce.read_record(uri, run_id)
    print(f"re-running run {run_id} ({record.cfg.name}) from its record...")
    new_run, curve = reproduce.rerun(record, uri, args.budget)
    agree, line = reproduce.compare(record, curve, reproduce.context_now(record.cfg), args.budget)
    if agree:
        print(f"reproduced run {run_id} as {new_run}: {line}")
        return 0
    print(f"charlstm: run {run_id} does not reproduce (new run {new_run}): {line}", file=sys.stderr)
    return 1

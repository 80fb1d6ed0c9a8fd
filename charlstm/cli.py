"""Command line: ``charlstm train | generate | sweep | worker | status | confirm | doctor | gc | reproduce | report | notebooks``.

Bad input ends with one line on stderr and exit code 2, never a traceback. Ctrl-C or SIGTERM
pauses: the work in hand is saved at its next step, one line says how to resume, exit 130.

The commands import charlstm's modules when they run, not here: those pull in torch and MLflow,
whose imports take seconds (docs/benchmarks.md), which ``--help`` and a mistyped argument should
not wait for.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

from charlstm import __version__, interrupt, names
from charlstm.config import shipped_dir
from charlstm.errors import CharlstmError, human_bytes
from charlstm.server import use_credentials_file

EPILOG_TRAIN = """examples:
  charlstm train baseline                                      # a shipped experiment, by name
  charlstm train experiments/baseline.yaml
  charlstm train experiments/baseline.yaml --set train.lr=3e-3 --set model.hidden_size=256
  charlstm train experiments/baseline.yaml --resume            # newest run of this experiment
  charlstm train experiments/smoke.yaml --dry-run              # a few steps, nothing tracked
"""

EPILOG_GENERATE = """examples:
  charlstm generate checkpoints/baseline/20261124-101500/best.pt --prime "ROMEO:"
  charlstm generate 3f2a...c9 --length 1000 --temperature 0.8 --top-k 20 --num-samples 3
"""

INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
# What a charlstm process sets before MLflow is imported (MLflow reads both at import time):
# no telemetry from a research tool, no artifact progress bars between our own lines.
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def _stopped(what: str, resume: str) -> int:
    """One line for a command a signal stopped, and the command that carries on."""
    print(f"charlstm: {what}; resume with: {resume}", file=sys.stderr)
    return INTERRUPTED


def _command(*words: str, **options: str | list[str] | None) -> str:
    """A command line to type again: ``--set`` repeated, options left out when unset."""
    parts = ["charlstm", *words]
    for name, value in options.items():
        for v in value if isinstance(value, list) else [value] if value else []:
            parts += [f"--{name.replace('_', '-')}", v]
    return shlex.join(parts)


def cmd_train(args: argparse.Namespace) -> int:
    from charlstm import checkpoint
    from charlstm.config import load_config, parse_set_args
    from charlstm.train import train

    overrides = parse_set_args(args.set)
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        cfg = replace(
            cfg,
            train=replace(
                cfg.train, max_steps=3, max_chars=None, max_seconds=None, sample_length=20,
                out_dir=args.dry_run_dir,
            ),
            tracking=replace(cfg.tracking, enabled=False),
        )
    resume = None
    if args.resume is not None:
        resume = checkpoint.latest_run_dir(cfg.train.out_dir, cfg.name) if args.resume == "latest" else args.resume
        checkpoint.load(resume)  # fail early, before any tracking run is touched

    try:
        if not cfg.tracking.enabled:
            result = train(cfg, resume=resume, progress=not args.quiet)
        else:
            from charlstm.tracking import MLflowTracker

            with MLflowTracker(cfg.tracking, run_name=cfg.name) as tracker:
                result = train(cfg, tracker, resume=resume, progress=not args.quiet)
            print(f"mlflow run: {tracker.run_id}")
    except interrupt.Interrupted as e:  # raised at a step boundary, once last.pt is saved
        return _stopped(f"interrupted by {e.signal_name} {e.where}, {e.checkpoint} saved",
                        _command("train", args.config, set=args.set, resume=str(e.checkpoint.parent)))
    print(
        f"best val loss {result.best_val_loss:.4f} nats/char ({result.best_val_bpc:.4f} bits/char) "
        f"after {result.step} steps, {result.chars_seen:,} chars, "
        f"{result.chars_per_sec:,.0f} chars/s; checkpoints in {result.run_dir}"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from charlstm.device import resolve_device
    from charlstm.sample import generate
    from charlstm.tracking import load_model

    model, vocab, _ = load_model(args.tracking_uri, args.source, resolve_device(args.device))
    prime = args.prime.encode("utf-8").decode("unicode_escape") if args.escapes else args.prime
    texts = generate(
        model, vocab, prime, args.length, args.temperature, args.top_k, args.num_samples, args.seed
    )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from charlstm.sweep.spec import load_sweep
    from charlstm.sweep.workers import StudyPaused, run_sweep

    spec = load_sweep(args.sweep)
    if args.sampler_seed is not None:  # (a stored spec keeps it: the study's workers draw with it)
        spec = replace(spec, sampler={**spec.sampler, "seed": args.sampler_seed})
    try:
        run_sweep(
            spec,
            storage_url=args.storage,
            tracking_uri=args.tracking_uri,
            n_trials=args.n_trials,
            timeout=args.timeout,
            workers=args.workers,
            force=args.force,
            watch=not args.quiet,
            verbose=args.verbose,
        )
    except StudyPaused as e:
        return _stopped(e.where, _command("sweep", args.sweep, storage=args.storage, tracking_uri=args.tracking_uri,
                                          workers=str(args.workers) if args.workers != 1 else None))
    return 0


def _die_with_parent(sweep_pid: int) -> None:
    """A worker a sweep spawned gets SIGTERM (a clean pause) if that sweep dies, even by SIGKILL
    (Linux; elsewhere the next sweep recovers its trial)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != sweep_pid:  # it died before the line above ran
        interrupt.request("SIGTERM")


def cmd_worker(args: argparse.Namespace) -> int:
    from charlstm.sweep.workers import SWEEP_PID, run_worker

    if args.spawned:
        _die_with_parent(int(os.environ.get(SWEEP_PID, os.getppid())))
    try:
        ran = run_worker(args.study, args.storage, args.tracking_uri, args.threads, args.worker_index)
    except KeyboardInterrupt as e:
        if args.spawned:  # the sweep that started this worker says it once for all of them
            return INTERRUPTED
        return _stopped(f"worker {args.worker_index} stopped by {interrupt.signal_name(e)}; its trial is queued to "
                        "resume", _command("worker", study=args.study, storage=args.storage,
                                           tracking_uri=args.tracking_uri))
    print(f"worker {args.worker_index}: ran {ran} trial(s) of study {args.study}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from charlstm.status import watch_study

    if args.interval <= 0:
        raise CharlstmError(f"--interval must be a positive number of seconds, got {args.interval}")
    return watch_study(_study_name(args.study), args.storage, args.tracking_uri, args.watch, args.interval,
                       args.verbose)


def cmd_tracking_server(args: argparse.Namespace) -> int:
    from charlstm.server import server_command

    argv, env, line = server_command(args.host, args.port, args.backend_store_uri, args.artifacts_destination,
                                     args.workers, args.credentials, args.allowed_hosts)
    print(line, flush=True)
    os.execvpe(argv[0], argv, env)  # (the server is this process from here: Ctrl-C stops it)
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from charlstm.sweep.launch import launch

    slurm = {"partition": args.partition, "time_min": args.time_min, "mem_gb": args.mem_gb}
    jobs = launch(_study_name(args.study), args.storage, args.tracking_uri, args.workers, args.cluster,
                  args.folder, args.threads, slurm)
    print(f"submitted {len(jobs)} worker job(s) of study {_study_name(args.study)}: "
          f"{', '.join(j.job_id for j in jobs)}; their logs: {args.folder}/<job id>/")
    if args.wait:
        ran = [j.result() for j in jobs]  # (a job that failed raises its error here, in one line below)
        print(f"done: the workers ran {sum(ran)} trial(s) ({', '.join(map(str, ran))})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from charlstm import doctor

    studies = [_study_name(args.study)] if args.study else doctor.study_names(args.storage)
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


def cmd_confirm(args: argparse.Namespace) -> int:
    from charlstm.sweep.confirm import run_confirm
    from charlstm.sweep.workers import StudyPaused

    study = _study_name(args.study)
    try:
        summary = run_confirm(study, args.storage, args.tracking_uri, args.top, args.seeds, args.workers,
                              quiet=args.quiet, verbose=args.verbose)
    except StudyPaused as e:
        return _stopped(e.where, _command("confirm", args.study, storage=args.storage, tracking_uri=args.tracking_uri,
                                          top=str(args.top), seeds=str(args.seeds), workers=str(args.workers)))
    print(format_confirmation(summary))
    return 0


def format_confirmation(summary: dict) -> str:
    """The confirmation as a researcher reads it: per config, then the verdicts."""
    unit = names.unit(summary["metric"])
    lines = [f"confirmed over seeds {', '.join(map(str, summary['seeds']))} - {summary['test']}:"]
    for r in summary["table"]:
        who = f"trial {r['trial']}" + (" (seed baseline)" if r[names.ATTR_BASELINE] else "")
        lines.append(f"  {who:<26} single seed {r['original']:.4f}  mean {r['mean']:.4f} ± {r['ci95']:.4f} "
                     f"{unit} (sd {r['std']:.4f}, N={r['n']})")
    lines += [f"  {v}" for v in summary["verdicts"]]
    if summary.get("alias"):
        lines.append(summary["alias"])
    return "\n".join(lines)


def cmd_gc(args: argparse.Namespace) -> int:
    from charlstm import gc

    gc.parse_keep(args.keep)  # a mistyped rule is one line before anything is read
    garbage, kept, uri = gc.collect(_study_name(args.study), args.keep, args.storage, args.tracking_uri)
    print(gc.describe(garbage, kept))
    if not garbage:
        return 0
    if not args.yes:
        print("dry run: nothing deleted; add --yes to delete these checkpoints")
        return 0
    print(f"freed {human_bytes(gc.delete(garbage, uri))}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from charlstm import reproduce, tracking

    if args.budget is not None and args.budget < 1:
        raise CharlstmError(f"--budget {args.budget}: give 1 or more evaluations")
    if args.trial is None:  # a run id
        if not tracking.RUN_ID.match(args.target):
            raise CharlstmError(f"{args.target}: not an MLflow run id (or give STUDY TRIAL)")
        run_id, uri = args.target, tracking.resolve_uri(args.tracking_uri)
    else:
        from charlstm.sweep.store import USER_ATTR_RUN, load_study, open_storage, tracking_uri_of

        study = load_study(_study_name(args.target), open_storage(args.storage))
        trial = next((t for t in study.trials if t.number == args.trial), None)
        if trial is None or not trial.user_attrs.get(USER_ATTR_RUN):
            raise CharlstmError(f"study {study.study_name} has no trial {args.trial} with a run")
        run_id, uri = trial.user_attrs[USER_ATTR_RUN], tracking.resolve_uri(tracking_uri_of(study, args.tracking_uri))
    record = reproduce.read_record(uri, run_id)
    print(f"re-running run {run_id} ({record.cfg.name}) from its record...")
    new_run, curve = reproduce.rerun(record, uri, args.budget)
    agree, line = reproduce.compare(record, curve, reproduce.context_now(record.cfg), args.budget)
    if agree:
        print(f"reproduced run {run_id} as {new_run}: {line}")
        return 0
    print(f"charlstm: run {run_id} does not reproduce (new run {new_run}): {line}", file=sys.stderr)
    return 1


def _study_name(arg: str) -> str:
    """``STUDY`` may be a study name or the study file that names it."""
    if arg.endswith((".yaml", ".yml")):
        from charlstm.sweep.spec import load_sweep

        return load_sweep(arg).study
    return arg


def cmd_report(args: argparse.Namespace) -> int:
    from charlstm.report import SampleSettings, build_report, log_report, write_report

    samples = None if args.no_samples else SampleSettings(
        primes=tuple(args.prime or SampleSettings.primes), temperatures=tuple(args.temperature or
        SampleSettings.temperatures), length=args.length, top=args.top)
    study = _study_name(args.study)
    report = build_report(study, args.storage, args.tracking_uri, samples,
                          progress=(lambda msg: print(f"report {study}: {msg}", file=sys.stderr)))
    folder = write_report(report, args.out).resolve()
    logged = not args.no_log and log_report(report, folder, report.tracking_uri)
    print(f"report: {(folder / 'report.html').as_uri()} and {folder / 'report.md'}"
          + (f" (also on MLflow run {report.parent_run_id}, artifacts {names.ARTIFACT_REPORT}/)" if logged else ""))
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    try:
        from charlstm.analysis.notebooks import run_notebooks
    except ModuleNotFoundError as e:  # the notebook tools are an extra: charlstm[notebooks]
        raise CharlstmError(f"charlstm notebooks needs {e.name}: pip install 'charlstm[notebooks]'") from None

    study = _study_name(args.study)
    params = {"study": study, "experiment": args.experiment, "storage": args.storage,
              "tracking_uri": args.tracking_uri}
    folder = args.folder or shipped_dir("analysis")
    out = run_notebooks(params, folder, Path(args.out) / study, args.only, progress=not args.quiet)
    for path in out:
        print(f"executed: {path}")
    return 0


EPILOG_SWEEP = """examples:
  charlstm sweep default                                      # a shipped study, by name; or: make sweep
  charlstm sweep sweeps/default.yaml --n-trials 4             # add 4 trials to the same study
  charlstm sweep sweeps/default.yaml --workers 2              # 2 processes x 1 thread each
  charlstm sweep sweeps/default.yaml --storage postgresql://user@db-host/optuna \\
      --tracking-uri http://mlflow-host:5000                  # shared by many machines
"""


def _study_args(p: argparse.ArgumentParser) -> None:
    """What the commands that read a finished (or running) study take."""
    p.add_argument("study", help="study name, or the study file (sweeps/*.yaml) that names it")
    p.add_argument("--storage", default=None, help=f"Optuna storage (default {names.DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the one the study stored)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="charlstm",
        description="Character-level LSTM language models: train, sample, sweep, report.",
    )
    p.add_argument("--version", action="version", version=f"charlstm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_generate(sub)
    _add_sweep(sub)
    _add_worker(sub)
    _add_status(sub)
    _add_tracking_server(sub)
    _add_launch(sub)
    _add_doctor(sub)
    _add_confirm(sub)
    _add_gc(sub)
    _add_reproduce(sub)
    _add_report(sub)
    _add_notebooks(sub)
    return p


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train one experiment (tracked in MLflow)",
        description="Train one experiment config; the run is tracked in MLflow.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", help="experiment YAML, or the name of a shipped one (baseline, large, smoke)")
    t.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override one config field by its dotted path, e.g. model.hidden_size=256 (repeatable)",
    )
    t.add_argument(
        "--resume", nargs="?", const="latest", metavar="CHECKPOINT",
        help="continue from a checkpoint file or run dir (default: this experiment's newest run)",
    )
    t.add_argument("--dry-run", action="store_true", help="3 steps, no tracking: a smoke test")
    t.add_argument("--dry-run-dir", default="/tmp/charlstm-dry-run", help=argparse.SUPPRESS)
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


def _add_generate(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="sample text from a checkpoint or MLflow run",
        description="Sample text from a trained model.",
        epilog=EPILOG_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("source", help="checkpoint file / run dir, MLflow run id, or models:/NAME@ALIAS")
    g.add_argument("--prime", default=names.GEN_PRIME, help="text to start from (default: a newline)")
    g.add_argument("--escapes", action="store_true", help="read \\n etc. in --prime as escapes")
    g.add_argument("--length", type=int, default=names.GEN_LENGTH, help=f"characters to generate ({names.GEN_LENGTH})")
    g.add_argument("--temperature", type=float, default=names.GEN_TEMPERATURE,
                   help=f"softmax temperature; 0 = greedy ({names.GEN_TEMPERATURE})")
    g.add_argument("--top-k", type=int, default=None, help="sample only from the K likeliest chars")
    g.add_argument("--num-samples", type=int, default=1, help="independent samples, run as one batch")
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda (auto)")
    g.add_argument("--tracking-uri", default=None, help="MLflow URI for run ids (default: as train)")
    g.set_defaults(func=cmd_generate)


def _add_sweep(sub) -> None:
    w = sub.add_parser(
        "sweep",
        help="run (or resume) an Optuna study of experiment configs",
        description="Create or resume the study named in SWEEP.yaml and run its trials; every "
        "trial is a child MLflow run of the study's parent run. Ends with a leaderboard.",
        epilog=EPILOG_SWEEP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("sweep", help="study file (sweeps/*.yaml), or the name of a shipped one (default, tinyshakespeare)")
    w.add_argument("--n-trials", type=int, default=None,
                   help="trials to run (default: the file's n_trials, or what an interrupted sweep left)")
    w.add_argument("--timeout", type=float, default=None, help="stop starting trials after S seconds")
    w.add_argument("--storage", default=None,
                   help=f"Optuna storage: a journal file path (default {names.DEFAULT_STORAGE}) or a "
                   "postgresql:// URL shared by many workers")
    w.add_argument("--tracking-uri", default=None, help="MLflow URI (default: as train)")
    w.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine; each gets cores/workers threads (1)")
    w.add_argument("--force", action="store_true", help="resume even if the search space or the corpus changed")
    w.add_argument("--sampler-seed", type=int, default=None, metavar="N",
                   help="the sampler's seed instead of the study file's (a second, independent run of a "
                   "study: give it its own --storage and tracking store, or a copy of the file with another name)")
    _view_args(w)
    w.set_defaults(func=cmd_sweep)


def _view_args(p: argparse.ArgumentParser) -> None:
    """How a sweep shows itself: a live view on a terminal, timestamped lines in a log."""
    p.add_argument("-q", "--quiet", action="store_true", help="print only the end (the answer, the leaderboard)")
    p.add_argument("-v", "--verbose", action="store_true", help="also a line for every evaluation of every trial")


def _add_launch(sub) -> None:
    c = sub.add_parser(
        "launch",
        help="start N workers of a study on a Slurm cluster (submitit; a job array), or locally",
        description="Submit N jobs that each run 'charlstm worker' on a study that exists (charlstm sweep FILE "
        "--n-trials 0 sets one up). Its storage must reach every node: postgresql://..., or a journal file on a "
        "shared file system. Logs: FOLDER/<job id>/.",
        epilog="examples:\n  charlstm launch default --storage postgresql://optuna@db/optuna --workers 16 "
        "--partition cpu --time-min 120\n  charlstm launch default --workers 2 --cluster local --wait   # no scheduler\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _study_args(c)
    c.add_argument("--workers", type=int, default=4, help="worker jobs (4)")
    c.add_argument("--threads", type=int, default=1, help="CPUs (torch threads) per worker (1)")
    c.add_argument("--cluster", choices=["slurm", "local"], default=None,
                   help="where: slurm, or local processes (default: slurm where sbatch is found, else local)")
    c.add_argument("--partition", default=None, help="Slurm partition")
    c.add_argument("--time-min", type=int, default=240, help="each job's time limit in minutes (240)")
    c.add_argument("--mem-gb", type=int, default=None, help="each job's memory (Slurm)")
    c.add_argument("--folder", default="logs/submitit", help="where the jobs' logs go (logs/submitit)")
    c.add_argument("--wait", action="store_true", help="wait for the jobs and say what they ran")
    c.set_defaults(func=cmd_launch)


def _add_tracking_server(sub) -> None:
    t = sub.add_parser(
        "tracking-server",
        help="the shared MLflow tracking server; beyond loopback only with a login (make mlflow-server)",
        description="Run 'mlflow server' for a study's machines. Bound to 127.0.0.1 it needs no login; bound "
        "to any other address it runs MLflow's basic-auth app with the login from MLFLOW_TRACKING_USERNAME / "
        "MLFLOW_TRACKING_PASSWORD or a file (--credentials, or CHARLSTM_MLFLOW_CREDENTIALS: one line "
        "user:password, mode 600), or refuses to start. Workers log in the same way.",
    )
    t.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    t.add_argument("--port", type=int, default=5001, help="port (5001)")
    t.add_argument("--backend-store-uri", required=True, help="runs' database, e.g. postgresql://...")
    t.add_argument("--artifacts-destination", required=True, help="where artifacts are kept (a folder)")
    t.add_argument("--workers", type=int, default=2, help="server processes (2)")
    t.add_argument("--credentials", default=None, help="file holding user:password (mode 600)")
    t.add_argument("--allowed-hosts", default=None,
                   help="Host names workers reach it by, comma-separated (MLflow's default: localhost and private IPs)")
    t.set_defaults(func=cmd_tracking_server)


def _add_status(sub) -> None:
    s = sub.add_parser(
        "status",
        help="what a study is doing now, wherever its workers run (read-only)",
        description="Read a study's Optuna storage and MLflow runs and show it: trials done against the "
        "target, the best so far beside the seed baseline, each running trial (its params, how far "
        "through its budget, latest val, chars/s, worker) and the time left. Never changes the study.",
        epilog="examples:\n  charlstm status default                  # once, then exit 0\n"
        "  charlstm status default --watch          # follow it until it ends (Ctrl-C leaves)\n"
        "  charlstm status default --storage postgresql://user@db-host/optuna --watch\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _study_args(s)
    s.add_argument("-w", "--watch", action="store_true", help="keep showing it until the study ends")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between looks with --watch (2)")
    s.add_argument("-v", "--verbose", action="store_true", help="with --watch, a line for every evaluation")
    s.set_defaults(func=cmd_status)


def _add_worker(sub) -> None:
    k = sub.add_parser(
        "worker",
        help="join a running study (e.g. from another machine)",
        description="Run trials of a study that 'charlstm sweep' created, until its target "
        "trial count or deadline. The study definition is read from the storage.",
    )
    k.add_argument("--study", required=True, help="study name")
    k.add_argument("--storage", required=True, help="the study's storage (journal path or URL)")
    k.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the one the study stored)")
    k.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    k.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    k.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)  # by charlstm sweep
    k.set_defaults(func=cmd_worker)


def _add_doctor(sub) -> None:
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


def _add_confirm(sub) -> None:
    c = sub.add_parser(
        "confirm",
        help="re-train a study's top trials and its seed baseline over fresh seeds; verdicts",
        description="Is the winner real? Re-train the top-K complete trials and the seed baseline with "
        "N fresh train.seed values each (same config and budget), on local workers like a sweep "
        "(Ctrl-C pauses; run it again to resume). Prints mean, sd and a 95% interval per config and "
        "Welch's t verdicts (winner vs seed baseline, winner vs runner-up); stores them in the study "
        "and its parent run (confirm.csv); moves models:/charlstm-<study>@best when the confirmed "
        "winner is not the single-seed best.",
        epilog="examples:\n  charlstm confirm default                    # or: make confirm\n"
        "  charlstm confirm default --top 3 --seeds 5 --workers 2\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _study_args(c)
    c.add_argument("--top", type=int, default=2, help="complete trials to confirm, best first (2)")
    c.add_argument("--seeds", type=int, default=3, help="fresh seeds per config (3)")
    c.add_argument("--workers", type=int, default=1, help="local worker processes (1)")
    _view_args(c)
    c.set_defaults(func=cmd_confirm)


def _add_gc(sub) -> None:
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
    _study_args(g)
    g.add_argument("--keep", default="top:3", help="top:K (the K best complete trials) or pareto (top:3)")
    g.add_argument("--yes", action="store_true", help="delete; without it, only list")
    g.set_defaults(func=cmd_gc)


def _add_reproduce(sub) -> None:
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


def _add_report(sub) -> None:
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
    _study_args(r)
    r.add_argument("--out", default=names.DEFAULT_REPORTS, help=f"reports folder ({names.DEFAULT_REPORTS})")
    r.add_argument("--prime", action="append", help="sample prime (repeatable; default a newline and 'ROMEO:')")
    r.add_argument("--temperature", action="append", type=float, help="sampling temperature (repeatable; 0.5 and 1.0)")
    r.add_argument("--length", type=int, default=200, help="characters per sample (200)")
    r.add_argument("--top", type=int, default=3, help="sample from this many best trials (3)")
    r.add_argument("--no-samples", action="store_true", help="skip the generated text")
    r.add_argument("--no-log", action="store_true", help="do not attach the report to the parent run")
    r.set_defaults(func=cmd_report)


def _add_notebooks(sub) -> None:
    n = sub.add_parser(
        "notebooks",
        help=f"execute the analysis notebooks for a study into {names.DEFAULT_NOTEBOOKS_OUT}/",
        description="Run analysis/NN-*.py (jupytext percent notebooks) headlessly with papermill, "
        "parameterised by study, experiment, storage and tracking URI; the executed notebooks go "
        "to OUT/STUDY/*.ipynb.",
    )
    _study_args(n)
    n.add_argument("--experiment", default=names.DEFAULT_EXPERIMENT, help=f"MLflow experiment ({names.DEFAULT_EXPERIMENT})")
    n.add_argument("--folder", default=None, help="where the notebook sources are (charlstm's analysis/)")
    n.add_argument("--out", default=names.DEFAULT_NOTEBOOKS_OUT,
                   help=f"executed notebooks go here, per study ({names.DEFAULT_NOTEBOOKS_OUT})")
    n.add_argument("--only", action="append", help="run only notebooks whose name starts with this (e.g. 01)")
    n.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=cmd_notebooks)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    try:
        use_credentials_file()  # (a tracking server's login, for MLflow's client)
        # train, sweep and worker stop at their next safe point; the rest stop at once
        with interrupt.handled(defer=args.func in (cmd_train, cmd_sweep, cmd_worker, cmd_confirm)):
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


if __name__ == "__main__":
    sys.exit(main())

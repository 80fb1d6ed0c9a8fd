"""The commands that run a study: ``sweep`` (set up, local workers, the summary), ``worker``
(join one from any machine), ``launch`` (workers on a cluster), ``status`` (watch it, read-only),
``confirm`` (the top trials again over fresh seeds) and ``tracking-server`` (the shared MLflow
server, with a login beyond loopback)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
from dataclasses import replace

from charlstm import interrupt, names
from charlstm.cli.common import INTERRUPTED, command, stopped, study_args, study_name, view_args
from charlstm.errors import CharlstmError

EPILOG_SWEEP = """examples:
  charlstm sweep default                                      # a shipped study, by name; or: make sweep
  charlstm sweep sweeps/default.yaml --n-trials 4             # add 4 trials to the same study
  charlstm sweep sweeps/default.yaml --workers 2              # 2 processes x 1 thread each
  charlstm sweep sweeps/default.yaml --storage postgresql://user@db-host/optuna \\
      --tracking-uri http://mlflow-host:5000                  # shared by many machines
"""


def add_sweep(sub) -> None:
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
    view_args(w)
    w.set_defaults(func=cmd_sweep, defer=True)


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
        return stopped(e.where, command("sweep", args.sweep, storage=args.storage, tracking_uri=args.tracking_uri,
                                          workers=str(args.workers) if args.workers != 1 else None))
    return 0


def add_worker(sub) -> None:
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
    k.set_defaults(func=cmd_worker, defer=True)


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
        return stopped(f"worker {args.worker_index} stopped by {interrupt.signal_name(e)}; its trial is queued to "
                        "resume", command("worker", study=args.study, storage=args.storage,
                                           tracking_uri=args.tracking_uri))
    print(f"worker {args.worker_index}: ran {ran} trial(s) of study {args.study}")
    return 0


def add_launch(sub) -> None:
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
    study_args(c)
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


def cmd_launch(args: argparse.Namespace) -> int:
    from charlstm.sweep.launch import launch

    slurm = {"partition": args.partition, "time_min": args.time_min, "mem_gb": args.mem_gb}
    jobs = launch(study_name(args.study), args.storage, args.tracking_uri, args.workers, args.cluster,
                  args.folder, args.threads, slurm)
    print(f"submitted {len(jobs)} worker job(s) of study {study_name(args.study)}: "
          f"{', '.join(j.job_id for j in jobs)}; their logs: {args.folder}/<job id>/")
    if args.wait:
        ran = [j.result() for j in jobs]  # (a job that failed raises its error here, in one line below)
        print(f"done: the workers ran {sum(ran)} trial(s) ({', '.join(map(str, ran))})")
    return 0


def add_status(sub) -> None:
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
    study_args(s)
    s.add_argument("-w", "--watch", action="store_true", help="keep showing it until the study ends")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between looks with --watch (2)")
    s.add_argument("-v", "--verbose", action="store_true", help="with --watch, a line for every evaluation")
    s.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from charlstm.status import watch_study

    if args.interval <= 0:
        raise CharlstmError(f"--interval must be a positive number of seconds, got {args.interval}")
    return watch_study(study_name(args.study), args.storage, args.tracking_uri, args.watch, args.interval,
                       args.verbose)


def add_confirm(sub) -> None:
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
    study_args(c)
    c.add_argument("--top", type=int, default=2, help="complete trials to confirm, best first (2)")
    c.add_argument("--seeds", type=int, default=3, help="fresh seeds per config (3)")
    c.add_argument("--workers", type=int, default=1, help="local worker processes (1)")
    view_args(c)
    c.set_defaults(func=cmd_confirm, defer=True)


def cmd_confirm(args: argparse.Namespace) -> int:
    from charlstm.sweep.confirm import format_summary, run_confirm
    from charlstm.sweep.workers import StudyPaused

    study = study_name(args.study)
    try:
        summary = run_confirm(study, args.storage, args.tracking_uri, args.top, args.seeds, args.workers,
                              quiet=args.quiet, verbose=args.verbose)
    except StudyPaused as e:
        return stopped(e.where, command("confirm", args.study, storage=args.storage, tracking_uri=args.tracking_uri,
                                          top=str(args.top), seeds=str(args.seeds), workers=str(args.workers)))
    print(format_summary(summary))
    return 0


def add_tracking_server(sub) -> None:
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


def cmd_tracking_server(args: argparse.Namespace) -> int:
    from charlstm.server import server_command

    argv, env, line = server_command(args.host, args.port, args.backend_store_uri, args.artifacts_destination,
                                     args.workers, args.credentials, args.allowed_hosts)
    print(line, flush=True)
    os.execvpe(argv[0], argv, env)  # (the server is this process from here: Ctrl-C stops it)
    return 0

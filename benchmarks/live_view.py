"""What the live view of ``charlstm sweep`` costs the trials it shows.

    python benchmarks/live_view.py            # ~3 minutes; writes benchmarks/results/live_view.json
    python benchmarks/live_view.py --tiny     # seconds: the smoke mode a test runs

The same study (the default study's base, space and 3-s trials, a fixed sampler seed, so both
sides run the same trials) is swept with the live view on a pseudo-terminal and with
``--quiet``, alternately, in one run. Reported per side: trials/hour (trials over the span from
the first trial's start to the last one's end), the trials' median training chars/s, and the
sweep process's own CPU seconds (the view's thread lives there). The ratios are view / quiet,
medians over the paired rounds; and the sweep process's own CPU while its trials run, the
view's cost measured directly (trials/hour on a shared host moves by a few % between rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from charlstm.machine import cpu_name  # noqa: E402
from charlstm.sweep.store import load_study, open_storage  # noqa: E402


def study_file(tmp: Path, tiny: bool, trials: int) -> Path:
    """The default study's trials at its smallest budget, as a plain study of ``trials`` trials."""
    default = yaml.safe_load((REPO / "sweeps" / "default.yaml").read_text())
    space = {k: v for k, v in default["space"].items()}
    space["model.hidden_size"] = {"type": "int", "low": 48, "high": 384, "log": True}
    study = {"study": "live-view", "base": default["base"], "overrides": dict(default.get("overrides") or {}),
             "trial_budget": {"max_seconds": 3}, "space": space, "sampler": {"name": "random", "seed": 0},
             "pruner": {"name": "none"}, "n_trials": trials, "enqueue_baseline": False}
    if tiny:
        corpus = tmp / "tiny.txt"
        corpus.write_text("ROMEO:\nBut, soft! what light through yonder window breaks?\n\n" * 200)
        study["base"] = str(REPO / "experiments" / "smoke.yaml")
        study["overrides"] = {"data.corpus": str(corpus), "train.sample_length": 0, "train.eval_points": 2}
        study["trial_budget"] = {"max_seconds": 0.5}
        study["space"] = {"model.hidden_size": {"type": "int", "low": 8, "high": 32}}
    path = tmp / "live-view.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def sweep(path: Path, folder: Path, view: bool, workers: int) -> dict[str, float]:
    """One sweep into its own stores; returns trials/hour, median chars/s, its own CPU seconds."""
    folder.mkdir(parents=True)
    cmd = [sys.executable, "-m", "charlstm", "sweep", str(path), "--workers", str(workers),
           "--storage", str(folder / "journal.log"), "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "140", "LINES": "40"}
    if view:
        master, slave = pty.openpty()
        proc = subprocess.Popen(cmd, stdout=slave, stderr=slave, cwd=folder, env=env)
        os.close(slave)
        drain = threading.Thread(target=_drain, args=(master,), daemon=True)
        drain.start()
    else:
        proc = subprocess.Popen([*cmd, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=folder, env=env)
    own, status, usage = _own_cpu(proc)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the sweep in {folder} exited with {proc.returncode}")
    study = load_study("live-view", open_storage(str(folder / "journal.log")))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    workers_cpu = sum(t.user_attrs.get("compute_seconds", 0) for t in done)
    return {"trials": len(done), "trials_per_hour": len(done) / span * 3600,
            "chars_per_sec": statistics.median(t.user_attrs["chars_per_sec"] for t in done),
            "compute_share": statistics.median(t.user_attrs["compute_seconds"] / t.user_attrs["train_seconds"]
                                               for t in done),
            # (wait4's usage is the sweep's and its waited-for workers': less the trials' own compute)
            "sweep_and_workers_cpu_s": usage.ru_utime + usage.ru_stime, "trials_compute_s": workers_cpu,
            "sweep_process_cpu_s": own["total"], "sweep_process_steady_core_share": own["steady"]}


def _own_cpu(proc: subprocess.Popen):
    """The sweep process's own CPU seconds (not its workers'), sampled until it exits: in all,
    and as a share of one core between its 15th second and 10 s before its end (set-up, the
    first trials' start and the study's finish left out); then its wait status and the rusage
    of it and its workers."""
    ps, marks, t0 = psutil.Process(proc.pid), [], time.monotonic()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(psutil.Error):
            c = ps.cpu_times()
            marks.append((time.monotonic() - t0, c.user + c.system))
        time.sleep(0.25)
    end = marks[-1][0] if marks else 0
    mid = [m for m in marks if 15 < m[0] < end - 10]
    steady = (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0]) if len(mid) > 4 else None
    return {"total": marks[-1][1] if marks else None, "steady": steady}, status, usage


def _median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _drain(fd: int) -> None:
    """Read the pseudo-terminal as a terminal would (the view blocks if no one reads)."""
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="paired rounds, alternating which side goes first (3)")
    p.add_argument("--trials", type=int, default=12, help="trials per sweep (12)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per sweep (2)")
    p.add_argument("--tiny", action="store_true", help="seconds-long trials of a tiny model: a smoke test")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "live_view.json"))
    args = p.parse_args()
    rounds, trials = (1, 2) if args.tiny else (args.rounds, args.trials)
    sides: dict[str, list[dict]] = {"view": [], "quiet": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = study_file(tmp, args.tiny, trials)
        for r in range(rounds):
            order = ("view", "quiet") if r % 2 == 0 else ("quiet", "view")
            for side in order:
                sides[side].append(sweep(path, tmp / f"{side}-{r}", side == "view", args.workers))
                m = sides[side][-1]
                print(f"round {r + 1} {side}: {m['trials']} trials, {m['trials_per_hour']:,.0f} trials/hour, "
                      f"{m['chars_per_sec']:,.0f} chars/s, compute share {m['compute_share']:.1%}", flush=True)
    pairs = list(zip(sides["view"], sides["quiet"], strict=True))
    out = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "workers": args.workers, "trials": trials, "rounds": rounds, "tiny": args.tiny, "raw": sides,
        "trials_per_hour_view_vs_quiet": statistics.median(v["trials_per_hour"] / q["trials_per_hour"] for v, q in pairs),
        "pair_ratios_trials_per_hour": [v["trials_per_hour"] / q["trials_per_hour"] for v, q in pairs],
        "chars_per_sec_view_vs_quiet": statistics.median(v["chars_per_sec"] / q["chars_per_sec"] for v, q in pairs),
        # the most sensitive: the share of the trials' wall-clock that was compute, which the
        # view's CPU takes from them directly (trials/hour and chars/s move by % between rounds)
        "compute_share_view_vs_quiet": statistics.median(v["compute_share"] / q["compute_share"] for v, q in pairs),
        "cpu_s_view_minus_quiet": statistics.median(v["sweep_and_workers_cpu_s"] - q["sweep_and_workers_cpu_s"]
                                                    for v, q in pairs),
        "cpu_view_vs_quiet": statistics.median(v["sweep_and_workers_cpu_s"] / q["sweep_and_workers_cpu_s"]
                                               for v, q in pairs),
        # the view's own cost, directly: the sweep process's CPU while trials run (it draws there)
        "view_steady_core_share": _median([v["sweep_process_steady_core_share"] for v in sides["view"]]),
        "quiet_steady_core_share": _median([q["sweep_process_steady_core_share"] for q in sides["quiet"]]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    share = out["view_steady_core_share"]
    print(f"the sweep process while trials run: {share:.2%} of a core with the view, "
          f"{out['quiet_steady_core_share']:.2%} without" if share is not None else "(too short for a steady share)")
    print(f"live view / --quiet: trials/hour {out['trials_per_hour_view_vs_quiet']:.3f}, "
          f"trials' chars/s {out['chars_per_sec_view_vs_quiet']:.3f}, compute share "
          f"{out['compute_share_view_vs_quiet']:.4f}; "
          f"CPU of the sweep and its workers {out['cpu_view_vs_quiet']:.3f} "
          f"({out['cpu_s_view_minus_quiet']:+.1f} s per sweep); {out['machine']} ({args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

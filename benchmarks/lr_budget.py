"""Which learning rate is best for each training budget, at the seed size? (issue 13)

    python benchmarks/lr_budget.py                       # ~40 minutes on 2 cores
    python benchmarks/lr_budget.py --tiny                # seconds: the smoke mode a test runs

Trains ``experiments/baseline.yaml`` (the seed size, its corpus, the default schedule) for each
budget ``train.max_seconds`` and each learning rate of a grid, with tracking off, ``--jobs``
runs side by side of ``--threads`` threads each (a budget counts compute, the CPU time a run
gets, so runs side by side do not shorten each other's training). Prints, per budget, the best
val loss, the lr that reached it, and how far the default lr (``train.lr`` of the config, or
``--default-lr``) is from it; writes every run to ``benchmarks/results/lr_budget.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from charlstm.config import load_config, parse_set_args  # noqa: E402
from charlstm.train import train  # noqa: E402

BUDGETS = (10, 30, 100, 300, 600)
LRS = (3e-3, 6e-3, 1.2e-2, 2.4e-2)


def one_run(job: dict) -> dict:
    """Train one (budget, lr) and return its record (runs in a worker process)."""
    overrides = {**job["overrides"], "train.max_seconds": job["seconds"], "train.lr": job["lr"],
                 "train.threads": job["threads"], "tracking.enabled": False, "train.sample_length": 0,
                 "train.out_dir": job["out_dir"], "name": f"lr-{job['seconds']}s-{job['lr']:g}"}
    result = train(load_config(job["experiment"], overrides), progress=False)
    return {"seconds": job["seconds"], "lr": job["lr"], "val_loss": result.best_val_loss,
            "steps": result.step, "chars": result.chars_seen, "compute_seconds": result.compute_seconds}


def summarise(runs: list[dict], default_lr: float) -> list[dict]:
    """Per budget: the best lr and val, and the default lr's val and gap (None if not run)."""
    rows = []
    for s in sorted({r["seconds"] for r in runs}):
        at = [r for r in runs if r["seconds"] == s]
        best = min(at, key=lambda r: r["val_loss"])
        default = next((r for r in at if abs(r["lr"] - default_lr) < 1e-12), None)
        rows.append({"seconds": s, "best_lr": best["lr"], "best_val": best["val_loss"],
                     "default_val": default and default["val_loss"],
                     "gap": default and default["val_loss"] - best["val_loss"]})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default=str(REPO / "experiments" / "baseline.yaml"))
    p.add_argument("--budgets", type=float, nargs="+", default=BUDGETS, help="train.max_seconds values")
    p.add_argument("--lrs", type=float, nargs="+", default=LRS, help="learning rates tried at every budget")
    p.add_argument("--default-lr", type=float, default=None, help="the lr whose gap to the best is reported "
                   "(default: the experiment's train.lr)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--tiny", action="store_true", help="two 1-second runs: the smoke mode a test runs")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lr_budget.json"))
    args = p.parse_args()
    overrides = parse_set_args(args.set)
    if args.tiny:
        args.budgets, args.lrs = [1.0], [2e-3, 8e-3]
        overrides.setdefault("train.eval_every_chars", 20_000)
    default_lr = args.default_lr or load_config(args.experiment, overrides).train.lr
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [{"experiment": args.experiment, "overrides": overrides, "seconds": s, "lr": lr,
                 "threads": args.threads, "out_dir": tmp}
                for s in sorted(args.budgets, reverse=True) for lr in args.lrs]  # the long ones first
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = []
            for record in pool.map(one_run, jobs):
                runs.append(record)
                print(f"{record['seconds']:>6g} s  lr {record['lr']:<8g} val {record['val_loss']:.4f} "
                      f"nats/char ({record['steps']:,} steps)", flush=True)
    rows = summarise(runs, default_lr)
    machine = f"{platform.machine()}, {os.cpu_count()} threads, {platform.processor() or 'cpu'}"
    print(f"\nbest lr per budget (default lr {default_lr:g}; {args.jobs} x {args.threads} thread(s); {machine})")
    print(f"{'seconds':>8} {'best lr':>8} {'best val':>9} {'default':>8} {'gap':>7}")
    for r in rows:
        dv = "-" if r["default_val"] is None else f"{r['default_val']:.4f}"
        gap = "-" if r["gap"] is None else f"{r['gap']:+.4f}"
        print(f"{r['seconds']:>8g} {r['best_lr']:>8g} {r['best_val']:>9.4f} {dv:>8} {gap:>7}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "default_lr": default_lr, "overrides": overrides,
                               "runs": runs, "summary": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

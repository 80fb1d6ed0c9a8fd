"""Which learning rate is best for each training budget, at the seed size? (issue 13)

    python benchmarks/lr_budget.py                       # ~40 minutes on 2 cores
    python benchmarks/lr_budget.py --tiny                # seconds: the smoke mode a test runs

Trains ``experiments/baseline.yaml`` (the seed size, its corpus, the default schedule) for each
budget ``train.max_seconds`` and each learning rate of a grid, with tracking off, ``--jobs``
runs side by side of ``--threads`` threads each (a budget counts compute, the CPU time a run
gets, so runs side by side do not shorten each other's training). Prints, per budget, the best
val loss, the lr that reached it, and how far the experiment's own lr (``train.lr: auto``, one
more run per budget) is from it; writes every run to ``benchmarks/results/lr_budget.json``.
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

import torch  # noqa: E402

from charlstm.config import load_config, parse_set_args  # noqa: E402
from charlstm.schedule import resolve_lr  # noqa: E402
from charlstm.train import train  # noqa: E402

BUDGETS = (10, 30, 100, 300, 600)
LRS = (3e-3, 6e-3, 1.2e-2, 2.4e-2)


def one_run(job: dict) -> dict:
    """Train one (budget, lr) and return its record (runs in a worker process). An lr of None
    is the experiment's own (``auto``: the lr its budget gets)."""
    overrides = {**job["overrides"], "train.max_seconds": job["seconds"], "train.threads": job["threads"],
                 "tracking.enabled": False, "train.sample_length": 0, "train.out_dir": job["out_dir"],
                 "name": f"lr-{job['seconds']:g}s-{job['lr'] or 'default'}",
                 **({"train.lr": job["lr"]} if job["lr"] is not None else {})}
    cfg = load_config(job["experiment"], overrides)
    result = train(cfg, progress=False)
    return {"seconds": job["seconds"], "lr": resolve_lr(cfg.train), "default": job["lr"] is None,
            "val_loss": result.best_val_loss, "steps": result.step, "chars": result.chars_seen,
            "compute_seconds": result.compute_seconds}


def summarise(runs: list[dict]) -> list[dict]:
    """Per budget: the best lr and val, and the default's (the experiment's own lr) val and gap."""
    rows = []
    for s in sorted({r["seconds"] for r in runs}):
        at = [r for r in runs if r["seconds"] == s]
        best = min(at, key=lambda r: r["val_loss"])
        default = next((r for r in at if r.get("default")), None)
        rows.append({"seconds": s, "best_lr": best["lr"], "best_val": best["val_loss"],
                     "default_lr": default and default["lr"], "default_val": default and default["val_loss"],
                     "gap": default and default["val_loss"] - best["val_loss"]})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default=str(REPO / "experiments" / "baseline.yaml"))
    p.add_argument("--budgets", type=float, nargs="+", default=BUDGETS, help="train.max_seconds values")
    p.add_argument("--lrs", type=float, nargs="+", default=LRS, help="learning rates tried at every budget")
    p.add_argument("--grid", action="append", default=[], metavar="SECONDS:LR,LR,...",
                   help="a budget and its own learning rates (repeatable; instead of --budgets x --lrs)")
    p.add_argument("--merge", action="append", default=[], metavar="JSON",
                   help="runs of an earlier lr_budget.json to summarise with these (repeatable)")
    p.add_argument("--no-defaults", action="store_true",
                   help="leave out the run per budget with the experiment's own lr (train.lr: auto)")
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
    if args.grid:  # ("600:" alone is a budget with no lr of its own: its default run only)
        budgets = [float(g.split(":")[0]) for g in args.grid]
        grid = [(float(s), float(lr)) for g in args.grid for s, lrs in [g.split(":")] for lr in lrs.split(",") if lr]
    else:
        budgets, grid = list(args.budgets), [(s, lr) for s in args.budgets for lr in args.lrs]
    if not args.no_defaults:
        grid += [(s, None) for s in sorted(set(budgets))]
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [{"experiment": args.experiment, "overrides": overrides, "seconds": s, "lr": lr,
                 "threads": args.threads, "out_dir": tmp}
                for s, lr in sorted(grid, key=lambda g: -g[0])]  # the long ones first
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = [r for path in args.merge for r in json.loads(Path(path).read_text())["runs"]]
            for record in pool.map(one_run, jobs):
                runs.append(record)
                print(f"{record['seconds']:>6g} s  lr {record['lr']:<8.3g}{' (default)' if record['default'] else ''} "
                      f"val {record['val_loss']:.4f} "
                      f"nats/char ({record['steps']:,} steps)", flush=True)
    rows = summarise(runs)
    machine = f"{platform.machine()}, {os.cpu_count()} threads, torch {torch.__version__}"
    print(f"\nbest lr per budget, val nats/char ({args.jobs} runs x {args.threads} thread(s) side by side; {machine})")
    print(f"{'seconds':>8} {'best lr':>8} {'best val':>9} {'default lr':>11} {'its val':>8} {'gap':>7}")
    for r in rows:
        dl = "-" if r["default_lr"] is None else f"{r['default_lr']:.3g}"
        dv = "-" if r["default_val"] is None else f"{r['default_val']:.4f}"
        gap = "-" if r["gap"] is None else f"{r['gap']:+.4f}"
        print(f"{r['seconds']:>8g} {r['best_lr']:>8.3g} {r['best_val']:>9.4f} {dl:>11} {dv:>8} {gap:>7}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "overrides": overrides,
                               "runs": runs, "summary": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

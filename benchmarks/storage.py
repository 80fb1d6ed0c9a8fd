"""Which Optuna storage should local worker processes share? Journal file vs SQLite.

    python benchmarks/storage.py                 # 2 and 4 processes x 40 trials x 50 reports

Each process runs trials whose objective only reports intermediate values (no training), so the
time is the storage's. Counts 'database is locked' errors and checks that no trial is lost.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]


def storage_for(kind: str, path: Path):
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path / "journal.log")))
    return optuna.storages.RDBStorage(f"sqlite:///{path / 'optuna.db'}")


def worker(kind: str, path: str, trials: int, reports: int, errors) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="bench", storage=storage_for(kind, Path(path)))

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for step in range(reports):
            trial.report(x + step, step)
        return x

    try:
        study.optimize(objective, n_trials=trials)
    except Exception as e:  # 'database is locked' and friends
        errors.append(f"{type(e).__name__}: {e}"[:200])


def measure(kind: str, procs: int, trials: int, reports: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        optuna.create_study(study_name="bench", storage=storage_for(kind, Path(tmp)))
        errors = mp.Manager().list()
        start = time.perf_counter()
        ps = [mp.Process(target=worker, args=(kind, tmp, trials, reports, errors)) for _ in range(procs)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        seconds = time.perf_counter() - start
        study = optuna.load_study(study_name="bench", storage=storage_for(kind, Path(tmp)))
        done = sum(t.state.name == "COMPLETE" for t in study.trials)
    return {"storage": kind, "processes": procs, "seconds": round(seconds, 2),
            "complete": done, "expected": procs * trials, "errors": list(errors)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--reports", type=int, default=50)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "storage.json"))
    args = p.parse_args()
    rows = [measure(kind, procs, args.trials, args.reports)
            for procs in (2, 4) for kind in ("journal", "sqlite")]
    print(f"{'storage':10s}{'processes':>10s}{'seconds':>10s}{'complete':>10s}{'errors':>8s}")
    for r in rows:
        print(f"{r['storage']:10s}{r['processes']:>10d}{r['seconds']:>10.2f}"
              f"{r['complete']:>6d}/{r['expected']:<3d}{len(r['errors']):>8d}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

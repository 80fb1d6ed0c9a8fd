"""What a travelling checkpoint costs a trial: python benchmarks/travel.py [--tiny].

A study's trial sends its ``last.pt`` to its MLflow run's artifacts (``resume/last.pt``) at the
first evaluation once ``tracking.travel_seconds`` (30) have passed since its last send or its
start, so that a retry on another machine can resume from it (docs/scale-out.md).
This times that send
(``MLflowTracker.checkpoint_saved``) for the default study's hidden sizes, to a local SQLite
store and through a tracking server on loopback (``mlflow server --serve-artifacts``: how the
workers of a study on many machines send theirs), and turns it into a cost per trial:

    sends per trial = trial seconds // travel_seconds      (a trial shorter than it sends none)
    cost per trial  = sends x seconds per send, and its share of the trial's seconds

A retry elsewhere loses at most the work since the last send: travel_seconds of training plus
one evaluation interval.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from charlstm import tracking  # noqa: E402
from charlstm.config import load_config  # noqa: E402
from charlstm.machine import cpu_name  # noqa: E402
from charlstm.train import train  # noqa: E402

HIDDEN = (96, 256, 720)  # the seed size, a middle one, the default study's largest
TRIAL_SECONDS = (27, 108, 150, 600)  # the default study's longest trials, its check, the one-hour study's, a 10-min one
DEFAULT_TRAVEL = load_config(None).tracking.travel_seconds  # (the timing below sets 0: every call sends)


@contextlib.contextmanager
def tracking_server(tmp: Path):
    """``mlflow server`` on a free loopback port, proxying artifacts as a study's server does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                             f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination", str(tmp / "server-artifacts"),
                             "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(240):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/health", timeout=2).close()
                break
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def checkpoint_of(hidden: int, tmp: Path) -> Path:
    """A real ``last.pt`` at this size (weights, Adam's moments, the run's state): two steps."""
    cfg = load_config(REPO / "experiments" / "baseline.yaml", {
        "model.hidden_size": hidden, "train.max_seconds": None, "train.max_steps": 2, "train.sample_length": 0,
        "train.out_dir": str(tmp / "ckpt"), "name": f"travel-h{hidden}"})
    return train(cfg, progress=False).run_dir / "last.pt"


def seconds_per_send(uri: str, path: Path, sends: int) -> list[float]:
    """``checkpoint_saved`` timed ``sends`` times into one run of the store at ``uri``."""
    cfg = load_config(None, {"tracking.uri": uri, "tracking.experiment": "travel", "tracking.travel_seconds": 0})
    times = []
    with tracking.MLflowTracker(cfg.tracking, run_name="travel", travel=True) as tracker:
        tracker.start()  # (creating the run is no cost of sending)
        for _ in range(sends):
            start = time.perf_counter()
            tracker.checkpoint_saved(path)
            times.append(time.perf_counter() - start)
    return times


def per_trial(send: float) -> dict[str, dict[str, float]]:
    """The cost of a trial's sends at the default TRAVEL_SECONDS, for each trial length."""
    out = {}
    for seconds in TRIAL_SECONDS:
        sends = int(seconds // DEFAULT_TRAVEL)
        out[f"{seconds}s"] = {"sends": sends, "seconds": sends * send, "share": sends * send / seconds}
    return out


def measure(stores: dict[str, str], hidden: tuple[int, ...], sends: int, tmp: Path) -> list[dict]:
    rows = []
    for h in hidden:
        path = checkpoint_of(h, tmp)
        for store, uri in stores.items():
            times = seconds_per_send(uri, path, sends)
            send = statistics.median(times)
            rows.append({"hidden_size": h, "store": store, "bytes": path.stat().st_size, "sends": sends,
                         "seconds_per_send": send, "max_seconds_per_send": max(times),
                         "mb_per_second": path.stat().st_size / send / 1e6, "per_trial": per_trial(send)})
            print(f"H={h} {store}: {path.stat().st_size / 1e6:.2f} MB, {send * 1000:.0f} ms a send "
                  f"(median of {sends}), {path.stat().st_size / send / 1e6:.0f} MB/s", flush=True)
    return rows


def print_table(out: dict) -> None:
    print(f"\nmachine: {out['machine']}; a send once {DEFAULT_TRAVEL:.0f} s have passed since the last")
    print("| H | checkpoint | store | ms a send | " + " | ".join(f"share of a {s}-s trial" for s in TRIAL_SECONDS) + " |")
    print("| ---: | ---: | --- | ---: | " + " | ".join("---:" for _ in TRIAL_SECONDS) + " |")
    for r in out["rows"]:
        shares = " | ".join(f"{r['per_trial'][f'{s}s']['share']:.2%}" for s in TRIAL_SECONDS)
        print(f"| {r['hidden_size']} | {r['bytes'] / 1e6:.2f} MB | {r['store']} | "
              f"{r['seconds_per_send'] * 1000:.0f} | {shares} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sends", type=int, default=9, help="sends timed per size and store; the median is reported (9)")
    p.add_argument("--tiny", action="store_true", help="the seed size, 2 sends, SQLite only: a smoke test")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "travel.json"))
    args = p.parse_args()
    hidden, sends = ((96,), 2) if args.tiny else (HIDDEN, args.sends)
    with tempfile.TemporaryDirectory() as tmpdir, contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        stores = {"local SQLite": f"sqlite:///{tmp / 'mlflow.db'}"}
        if not args.tiny:
            stores["tracking server"] = stack.enter_context(tracking_server(tmp))
        rows = measure(stores, hidden, sends, tmp)
    out = {"machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "travel_seconds": DEFAULT_TRAVEL, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

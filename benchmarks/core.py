"""Core benchmark: the seed baseline's speed and quality, measured in one process.

    python benchmarks/core.py                      # ~10 minutes: speed ratios + 300 s quality run
    python benchmarks/core.py --tiny               # seconds: the smoke mode a test runs

Speed: a plain PyTorch loop of the seed's model (Adam, random windows stacked per batch, no
clipping, no evaluation, no logging) against ``charlstm.train`` with tracking off and with full
MLflow tracking on, interleaved in rounds so that machine noise hits all three alike; the
median of the rounds is reported. Quality: the baseline experiment with its 300-second budget
on tinyshakespeare (first 90% train, last 10% val), tracked in MLflow.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from charlstm.config import TrackingConfig, load_config, parse_set_args  # noqa: E402
from charlstm.data import load_corpus, prepare  # noqa: E402
from charlstm.model import CharacterLSTM  # noqa: E402
from charlstm.tracking import MLflowTracker  # noqa: E402
from charlstm.train import train  # noqa: E402

TINYSHAKESPEARE = "tinyshakespeare"  # shipped in charlstm/corpora (digest checked on load)


def plain_loop(train_ids: torch.Tensor, vocab_size: int, seconds: float, B=36, T=48) -> float:
    """What the seed notebook's training cell does: chars/s over ``seconds``."""
    torch.manual_seed(0)
    model = CharacterLSTM(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    n, chars, start = len(train_ids), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        starts = torch.randint(0, n - T - 1, (B,))
        x = torch.stack([train_ids[s : s + T] for s in starts])
        y = torch.stack([train_ids[s + 1 : s + T + 1] for s in starts])
        logits, _ = model(x, model.init_state(B))
        loss = F.cross_entropy(logits, y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        chars += B * T
    return chars / (time.perf_counter() - start)


def trainer(cfg, seconds: float, tracked: bool, workdir: Path) -> tuple[float, float]:
    """charlstm.train for ``seconds`` of training: (train chars/s, end-to-end chars/s)."""
    cfg = replace(cfg, train=replace(cfg.train, max_seconds=seconds, out_dir=str(workdir / "ckpt")))
    start = time.perf_counter()
    if tracked:
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        with MLflowTracker(replace(cfg.tracking, uri=uri), run_name="bench") as tracker:
            start = time.perf_counter()  # the database set-up is not the run's cost
            result = train(cfg, tracker, progress=False)
    else:
        result = train(cfg, progress=False)
    return result.chars_per_sec, result.chars_seen / (time.perf_counter() - start)


def parse_args() -> argparse.Namespace:
    """The command line, with --tiny's one-second settings applied."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=TINYSHAKESPEARE)
    p.add_argument("--seconds", type=float, default=8, help="seconds per speed measurement")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median reported)")
    p.add_argument("--quality-seconds", type=float, default=300, help="training budget of the quality run")
    p.add_argument("--tiny", action="store_true", help="1-second measurements: a smoke test")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the baseline config for every run (e.g. train.lr=5e-3)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "core.json"))
    args = p.parse_args()
    if args.tiny:
        args.seconds, args.rounds, args.quality_seconds = 1.0, 1, 2.0
    return args


def speed_rounds(args, cfg, ds, tmp: Path) -> dict[str, list[float]]:
    """Plain loop, trainer untracked, trainer tracked, in each round: chars/s per round."""
    rows: dict[str, list[float]] = {"plain": [], "off": [], "on": [], "off_e2e": [], "on_e2e": []}
    for r in range(args.rounds):  # --rounds 0: the quality run only
        rows["plain"].append(plain_loop(ds.train, len(ds.vocab), args.seconds))
        off, off_e2e = trainer(cfg, args.seconds, False, tmp)
        on, on_e2e = trainer(cfg, args.seconds, True, tmp)
        rows["off"].append(off)
        rows["on"].append(on)
        rows["off_e2e"].append(off_e2e)
        rows["on_e2e"].append(on_e2e)
        print(f"round {r + 1}: plain {rows['plain'][-1]:,.0f}  off {off:,.0f}  on {on:,.0f} chars/s",
              flush=True)
    return rows


def quality_run(cfg, seconds: float, tmp: Path):
    """The baseline with a ``seconds`` training budget, tracked in MLflow: train()'s result."""
    qcfg = replace(cfg, train=replace(cfg.train, max_seconds=seconds, out_dir=str(tmp / "quality")))
    uri = f"sqlite:///{tmp / 'quality.db'}"
    with MLflowTracker(TrackingConfig(uri=uri, experiment="bench-core"), run_name="baseline") as tr:
        return train(qcfg, tr, progress=False)


def make_report(args, rows: dict[str, list[float]], med: dict[str, float], quality) -> dict:
    """The JSON report: the machine, the median speeds and their ratios, the quality run."""
    return {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "corpus": args.corpus,
        "seconds_per_measurement": args.seconds,
        "rounds": args.rounds,
        "chars_per_sec_median": med,
        "trainer_vs_plain": med["off"] / med["plain"],
        "tracked_vs_untracked": med["on"] / med["off"],
        "tracked_vs_untracked_end_to_end": med["on_e2e"] / med["off_e2e"],
        "quality": {
            "train_seconds": quality.train_seconds,
            "steps": quality.step,
            "chars_seen": quality.chars_seen,
            "best_val_loss_nats": quality.best_val_loss,
            "best_val_bpc": quality.best_val_bpc,
            "chars_per_sec": quality.chars_per_sec,
            "val_curve": [(e["chars_seen"], round(e["val_loss"], 4)) for e in quality.evals],
        },
        "raw": rows,
    }


def print_summary(report: dict, out: Path) -> None:
    """The table of median speeds and ratios, then the quality line."""
    med = report["chars_per_sec_median"]
    print(f"\nmachine: {report['machine']}")
    print(f"{'':28s}{'chars/s (median)':>18s}{'ratio':>10s}")
    print(f"{'plain PyTorch loop':28s}{med['plain']:>18,.0f}{1.0:>10.3f}")
    print(f"{'charlstm, tracking off':28s}{med['off']:>18,.0f}{med['off'] / med['plain']:>10.3f}")
    print(f"{'charlstm, MLflow tracking':28s}{med['on']:>18,.0f}{med['on'] / med['plain']:>10.3f}")
    print(f"tracking on / off: {report['tracked_vs_untracked']:.3f} (training steps), "
          f"{report['tracked_vs_untracked_end_to_end']:.3f} (end to end, evals and artifacts included)")
    q = report["quality"]
    print(f"quality: {q['best_val_loss_nats']:.4f} nats/char ({q['best_val_bpc']:.4f} bits/char) after "
          f"{q['train_seconds']:.0f} s, {q['steps']} steps, {q['chars_seen']:,} chars")
    print(f"wrote {out}")


def main() -> int:
    """The benchmark: speed rounds, the quality run, then the JSON and the table."""
    args = parse_args()
    overrides = {"data.corpus": args.corpus, "tracking.experiment": "bench-core", **parse_set_args(args.set)}
    # speed runs evaluate once, at the end, as they would every 2M characters in a real run
    cfg = load_config(REPO / "experiments" / "baseline.yaml", overrides)
    ds = prepare(load_corpus(args.corpus), cfg.data.val_fraction)
    with tempfile.TemporaryDirectory() as tmp:
        rows = speed_rounds(args, cfg, ds, Path(tmp))
        med = {k: statistics.median(v) if v else float("nan") for k, v in rows.items()}
        quality = quality_run(cfg, args.quality_seconds, Path(tmp))
    report = make_report(args, rows, med, quality)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_summary(report, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

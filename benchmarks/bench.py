"""`make bench`: where the time goes, from the corpus to the last logged metric, against the
machine's limits, measured in one process so that every figure is a same-run ratio.

    python benchmarks/bench.py                 # a few minutes; writes benchmarks/results/bench.json
    python benchmarks/bench.py --tiny          # seconds: the smoke mode a test runs

What it measures (medians of interleaved repeats; the machine is shared and noisy):
- float32 GEMM peak (2048 x 2048 matmul) with all torch threads: the ceiling;
- training chars/s at three sizes: a plain PyTorch loop of the same model and optimizer on one
  pre-made batch (no data, no clipping, no schedule, no logging) against ``charlstm.train`` with
  tracking off and with full MLflow tracking; the model's FLOP/s as a share of the GEMM peak
  (training FLOP per char = 3 x 2 x (4H(E+H) + HV), ``charlstm.model.flops_per_char``);
- batch assembly per step as a share of the step; validation chars/s;
- generation chars/s at H=512: one stream, 16 streams, and re-feeding the whole prefix each step;
- the default corpus: cold build and cached load;
- sweep throughput at seed size: trials/hour for 1 worker x 2 threads and 2 workers x 1 thread,
  each trial a fixed number of characters (equal work, so equal quality);
- bfloat16 autocast against float32 in the plain loop (speed), to decide the default;
- quality per time on tinyshakespeare (``--skip quality`` leaves it out: ~13 minutes): the
  defaults (``experiments/baseline.yaml``) and the best config the one-hour study found
  (``experiments/tinyshakespeare-best.yaml``), each trained with a 60-s and a 300-s budget
  (compute seconds, ``train.max_seconds``): the val reached, and the compute seconds until the
  first evaluation at or below 1.886 nats/char (nanoGPT's CPU result here) in the 60-s run
  (else the 300-s run). The 60-s runs evaluate ~30 times, so the time is good to ~2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from charlstm.config import load_config  # noqa: E402
from charlstm.data import (  # noqa: E402
    RandomBatches,
    build_shakespeare,
    default_corpus_path,
    load_corpus,
    prepare,
)
from charlstm.device import bfloat16_runs, resolve_precision  # noqa: E402
from charlstm.machine import gemm_peak  # noqa: E402
from charlstm.model import CharacterLSTM, flops_per_char  # noqa: E402
from charlstm.sample import generate  # noqa: E402
from charlstm.schedule import resolve_lr  # noqa: E402
from charlstm.tracking import MLflowTracker  # noqa: E402
from charlstm.train import evaluate, train  # noqa: E402

SIZES = {  # name: (embedding_dim, hidden_size, batch_size, seq_length)
    "seed E48 H96 B36 T48": (48, 96, 36, 48),
    "E64 H256 B64 T128": (64, 256, 64, 128),
    "E64 H512 B64 T128": (64, 512, 64, 128),
}
# measurement windows grow with the step (0.27 s at H=512), so that a window holds enough steps
# and log intervals for the one-off costs (first step, first MLflow write) to weigh as in a run
# quality per time: nanoGPT's CPU config (4 layers x 4 heads x 128, 2000 iters) reached val
# 1.886 nats/char on tinyshakespeare after 94 s on this kind of machine (issue 13)
TARGET = 1.886
QUALITY = {"defaults": REPO / "experiments" / "baseline.yaml",
           "best": REPO / "experiments" / "tinyshakespeare-best.yaml"}
QUALITY_BUDGETS = (60, 300)
WINDOW = {"seed E48 H96 B36 T48": 1, "E64 H256 B64 T128": 2, "E64 H512 B64 T128": 4}
TINY_SIZES = {"tiny E8 H16 B4 T16": (8, 16, 4, 16), "tiny E16 H32 B8 T32": (16, 32, 8, 32)}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def plain_loop(vocab: int, size, seconds: float, lr: float, bf16: bool = False) -> float:
    """The textbook loop on one pre-made batch: what the hardware gives this model, chars/s."""
    E, H, B, T = size
    torch.manual_seed(0)
    model = CharacterLSTM(vocab, E, H)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)
    x, y = torch.randint(1, vocab, (B, T)), torch.randint(1, vocab, (B, T)).reshape(-1)
    # the clock includes the first step (allocations, kernel selection), as train()'s does
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, _ = model(x, model.init_state(B))
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return steps * B * T / (time.perf_counter() - start)


class TimedTracker(MLflowTracker):
    """The real tracker, with a stopwatch on every call ``train()`` makes: a direct measure of
    what tracking costs, which the host's noise cannot blur the way it blurs on/off ratios."""

    CALLS = ("log_config", "log_param_counts", "log_dataset", "log_metrics", "log_text",
             "log_checkpoint", "flush")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = dict.fromkeys(self.CALLS, 0.0)
        for name in self.CALLS:
            setattr(self, name, self._timed(name, getattr(self, name)))

    def _timed(self, name, method):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return call


TRACKING_COST: list[dict[str, float]] = []  # one entry per tracked run: shares of its time


def trainer(cfg, seconds: float, tracked: bool, workdir: Path) -> float:
    """``charlstm.train`` for ``seconds`` of training steps (its own clock): chars/s."""
    cfg = replace(cfg, train=replace(cfg.train, max_seconds=seconds, out_dir=str(workdir / "ckpt")))
    if not tracked:
        return train(cfg, progress=False).chars_per_sec
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    with TimedTracker(replace(cfg.tracking, uri=uri), run_name="bench") as tracker:
        tracker.start()  # creating the run (and a new database) is not a cost of training
        start = time.perf_counter()
        result = train(cfg, tracker, progress=False)
        wall = time.perf_counter() - start
    TRACKING_COST.append({
        # log_metrics is the only call inside the training steps' clock
        "in_steps": tracker.seconds["log_metrics"] / result.train_seconds,
        "end_to_end": sum(tracker.seconds.values()) / wall,
    })
    return result.chars_per_sec


def batch_seconds(ids: torch.Tensor, B: int, T: int, n: int = 200) -> float:
    batches = RandomBatches(ids, B, T, seed=0)
    start = time.perf_counter()
    for step in range(n):
        batches.get(step)
    return (time.perf_counter() - start) / n


def eval_chars_per_sec(model, ids: torch.Tensor, streams: int) -> float:
    start = time.perf_counter()
    evaluate(model, ids, streams)
    return (len(ids) - 1) / (time.perf_counter() - start)


@torch.inference_mode()
def refeed_chars_per_sec(model, length: int) -> float:
    """Generation the naive way: the whole prefix through the model for every new character."""
    model.eval()
    ids = torch.ones(1, 1, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(length):
        logits, _ = model(ids, model.init_state(1))
        nxt = torch.multinomial(torch.softmax(logits[-1:], -1), 1)  # [1, 1]
        ids = torch.cat([ids, nxt], dim=1)
    return length / (time.perf_counter() - start)


def gen_chars_per_sec(model, vocab, length: int, streams: int) -> float:
    start = time.perf_counter()
    generate(model, vocab, "\n", length, temperature=1.0, num_samples=streams, seed=0)
    return streams * length / (time.perf_counter() - start)


def corpus_times(tmp: Path) -> dict[str, float]:
    start = time.perf_counter()
    build_shakespeare()
    build = time.perf_counter() - start
    default_corpus_path(tmp / "data")  # build and cache once
    start = time.perf_counter()
    corpus = load_corpus("shakespeare", cache_dir=tmp / "data")
    load = time.perf_counter() - start
    start = time.perf_counter()
    prepare(corpus, 0.1)
    prep = time.perf_counter() - start
    return {"build_cold_s": build, "load_cached_s": load, "prepare_s": prep, "chars": len(corpus.text)}


def sweep_throughput(tmp: Path, workers: int, trials: int, chars: int, corpus: str) -> dict[str, float]:
    """A study of ``trials`` seed-size trials of ``chars`` characters each, run by the real CLI."""
    study = {
        "study": f"bench-{workers}w",
        "base": str(REPO / "experiments" / "baseline.yaml"),
        "overrides": {"data.corpus": corpus, "train.eval_every_chars": chars, "train.sample_length": 0},
        "trial_budget": {"max_chars": chars},
        "space": {"train.lr": {"type": "float", "low": 1.9e-3, "high": 2.1e-3}},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "n_trials": trials,
        "enqueue_baseline": False,
    }
    path = tmp / f"bench-{workers}w.yaml"
    path.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "charlstm", "sweep", str(path), "--workers", str(workers),
           "--storage", str(tmp / f"journal-{workers}.log"), "--tracking-uri", f"sqlite:///{tmp / 'sweep.db'}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    wall = time.perf_counter() - start

    import optuna

    from charlstm.sweep.store import open_storage

    done = optuna.load_study(study_name=study["study"], storage=open_storage(str(tmp / f"journal-{workers}.log")))
    ts = [t for t in done.trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
    return {"trials": len(ts), "wall_s": wall, "trials_span_s": span, "trials_per_hour": len(ts) / span * 3600,
            "trials_per_hour_wall": len(ts) / wall * 3600}


def quality(name: str, path: Path, budgets: tuple[float, ...], tmp: Path, say, evals: int = 30) -> dict:
    """Train the experiment at ``path`` on tinyshakespeare with each budget: the val reached,
    and when the first of them (else a later one) first evaluated at or below TARGET."""
    base = {"data.corpus": "tinyshakespeare", "tracking.enabled": False, "train.sample_length": 0,
            "train.out_dir": str(tmp / "quality"), "name": f"quality-{name}"}
    probe = train(load_config(path, {**base, "train.max_seconds": min(3.0, budgets[0] / 4),
                                     "train.eval_every_chars": 10**12}), progress=False)
    row: dict = {"experiment": path.name, "chars_per_sec": probe.chars_per_sec, "time_to_target": None}
    for seconds in budgets:
        every = max(10_000, int(probe.chars_per_sec * seconds / evals))  # ~``evals`` evaluations a run
        result = train(load_config(path, {**base, "train.max_seconds": seconds, "train.eval_every_chars": every}),
                       progress=False)
        row[f"val_after_{seconds:g}s"] = result.best_val_loss
        hit = next((e["compute_time"] for e in result.evals if e["val_loss"] <= TARGET), None)
        if row["time_to_target"] is None and hit is not None:
            # (that run's own compute: its last step ends past its budget, and so may the hit)
            row["time_to_target"], row["time_to_target_run"] = hit, seconds
            row["time_to_target_run_compute"] = result.compute_seconds
        say(f"quality, {name}: {result.best_val_loss:.4f} nats/char after {seconds:g} s "
            f"({result.chars_seen:,} chars); first at <= {TARGET} after "
            + ("-" if hit is None else f"{hit:.1f} s"))
    return row


def parse_args() -> argparse.Namespace:
    """The command line; --tiny also shrinks the sizes and lengths it adds as attributes."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0,
                   help="seconds per training measurement at the seed size; x2 and x4 for the larger (2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved repeats; medians reported (5)")
    p.add_argument("--sweep-trials", type=int, default=4, help="trials per sweep-throughput study (4)")
    p.add_argument("--sweep-chars", type=int, default=400_000, help="characters per sweep trial (400k)")
    p.add_argument("--skip", action="append", default=[], choices=["sweep", "corpus", "quality"],
                   help="leave a section out (repeatable)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and sub-second measurements: a smoke test")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench.json"))
    args = p.parse_args()
    args.sizes, args.gen_length, args.refeed_length, args.gemm_n = SIZES, 2000, 300, 2048
    if args.tiny:
        args.seconds, args.rounds, args.sweep_trials, args.sweep_chars = 0.3, 1, 2, 2000
        args.sizes, args.gen_length, args.refeed_length, args.gemm_n = TINY_SIZES, 50, 20, 256
    return args


def say(*args) -> None:
    """Print a progress line now: the full run takes minutes."""
    print(*args, flush=True)


def size_config(cfg0, size):
    """The baseline config at one of the benchmark's sizes (E, H, B, T)."""
    E, H, B, T = size
    return replace(cfg0, model=replace(cfg0.model, embedding_dim=E, hidden_size=H),
                   data=replace(cfg0.data, batch_size=B, seq_length=T))


def measure_variants(cfg, V: int, size, seconds: float, tmp: Path, variants: list[str], r: int,
                     row: dict[str, list[float]]) -> None:
    """One round at one size: each variant's chars/s appended to ``row``, in a rotated order."""
    runs = {
        "plain_float32": lambda: plain_loop(V, size, seconds, resolve_lr(cfg.train)),
        "plain_bfloat16": lambda: plain_loop(V, size, seconds, resolve_lr(cfg.train), bf16=True),
        "off": lambda: trainer(cfg, seconds, False, tmp),
        "on": lambda: trainer(cfg, seconds, True, tmp),
    }
    k = r % len(variants)
    for key in variants[k:] + variants[:k]:  # rotated: no variant always first
        row[key].append(runs[key]())


def training_rounds(args, cfg0, V: int, tmp: Path, variants: list[str], precision: str):
    """Every round measures the GEMM peaks, then every size's variants: (raw chars/s, peaks)."""
    raw: dict[str, dict[str, list[float]]] = {n: {k: [] for k in variants} for n in args.sizes}
    peaks: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for r in range(args.rounds):
        # the peak is measured in every round, so that it sees the same host phases as training
        for dtype in peaks:
            peaks[dtype].append(gemm_peak(args.gemm_n, max(args.seconds / 4, 0.2), getattr(torch, dtype)))
        for name, size in args.sizes.items():
            row = raw[name]
            measure_variants(size_config(cfg0, size), V, size, args.seconds * WINDOW.get(name, 1), tmp,
                             variants, r, row)
            bf = (f"{row['plain_bfloat16'][-1]:,.0f} (bfloat16)" if "plain_bfloat16" in row
                  else "bfloat16 cannot run here")
            say(f"round {r + 1} {name}: plain {row['plain_float32'][-1]:,.0f} (float32) "
                f"{bf}; charlstm ({precision}) tracking off "
                f"{row['off'][-1]:,.0f}, on {row['on'][-1]:,.0f} chars/s")
    return raw, peaks


def paired(row: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a/b measured side by side: the host's slow and fast
    phases (seconds long here) hit both sides of a pair alike."""
    return median([x / y for x, y in zip(row[a], row[b], strict=True)])


def size_summary(row: dict[str, list[float]], size, costs: list[dict[str, float]], peak: dict[str, float],
                 precision: str, V: int, ds) -> dict:
    """One size's line: median chars/s, same-round ratios, GEMM shares, tracking and batch costs."""
    E, H, B, T = size
    med = {"plain_bfloat16": None, **{k: median(v) for k, v in row.items()}}
    fpc = flops_per_char(V, E, H)
    step_s = B * T / med["off"]
    plain = f"plain_{precision}"  # the plain loop in the precision the trainer runs
    return {
        **{f"{k}_chars_per_sec": v for k, v in med.items()},
        "tracking_share_of_steps": median([c["in_steps"] for c in costs]),
        "tracking_share_end_to_end": median([c["end_to_end"] for c in costs]),
        "flop_per_char": fpc,
        "trainer_vs_plain": paired(row, "off", plain),
        "tracked_vs_plain": paired(row, "on", plain),
        "tracking_on_vs_off": paired(row, "on", "off"),
        "bfloat16_vs_float32_plain": (paired(row, "plain_bfloat16", "plain_float32")
                                      if "plain_bfloat16" in row else None),
        "plain_float32_gemm_fraction": med["plain_float32"] * fpc / peak["float32"],
        "tracked_gemm_fraction": med["on"] * fpc / peak[precision],
        "tracked_vs_float32_gemm_peak": med["on"] * fpc / peak["float32"],
        "batch_share_of_step": batch_seconds(ds.train, B, T) / step_s,
        "raw": row,
    }


def measure_training(args, cfg0, ds, tmp: Path) -> dict:
    """Training at the sizes interleaved with the GEMM peak, then one summary row per size."""
    V = len(ds.vocab)
    precision = resolve_precision("auto", torch.device("cpu"))
    bf16 = bfloat16_runs(torch.device("cpu"))  # without AVX-512 torch's LSTM has no bfloat16
    variants = ["plain_float32", *(["plain_bfloat16"] if bf16 else []), "off", "on"]
    raw, peaks = training_rounds(args, cfg0, V, tmp, variants, precision)
    peak = {k: median(v) for k, v in peaks.items()}
    rows = {}
    for i, (name, size) in enumerate(args.sizes.items()):
        costs = TRACKING_COST[i::len(args.sizes)]  # each round tracked every size once, in order
        rows[name] = size_summary(raw[name], size, costs, peak, precision, V, ds)
    return {"trainer_precision": precision, "gemm_peak_flops": peak, "training": rows}


def validation_speed(model, val: torch.Tensor, size_name: str, streams: int) -> dict:
    """Validation chars/s with the config's evaluation streams and with one."""
    return {
        "size": size_name, "chars": len(val) - 1,
        f"chars_per_sec_{streams}_streams": eval_chars_per_sec(model, val, streams),
        "chars_per_sec_1_stream": eval_chars_per_sec(model, val, 1),
    }


def generation_speed(model, vocab, size_name: str, args) -> dict:
    """Generation chars/s with one stream, with 16, and re-feeding the whole prefix."""
    repeats = max(args.rounds, 1)
    one = median([gen_chars_per_sec(model, vocab, args.gen_length, 1) for _ in range(repeats)])
    sixteen = median([gen_chars_per_sec(model, vocab, args.gen_length, 16) for _ in range(repeats)])
    refeed = refeed_chars_per_sec(model, args.refeed_length)
    say(f"generation: {one:,.0f} chars/s one stream, {sixteen:,.0f} with 16, re-feeding {refeed:,.0f}")
    return {
        "size": size_name, "length": args.gen_length,
        "one_stream_chars_per_sec": one, "sixteen_streams_chars_per_sec": sixteen,
        "sixteen_vs_one": sixteen / one, "refeed_chars_per_sec": refeed, "refeed_length": args.refeed_length,
        "one_stream_vs_refeed": one / refeed,
    }


def validation_and_generation(args, cfg0, ds) -> dict:
    """Validation and generation speed of an untrained model at the largest size."""
    size_name, (E, H, _, _) = list(args.sizes.items())[-1]
    model = CharacterLSTM(len(ds.vocab), E, H)
    val = ds.val if not args.tiny else ds.val[:20_000]
    return {"validation": validation_speed(model, val, size_name, cfg0.train.eval_streams),
            "generation": generation_speed(model, ds.vocab, size_name, args)}


def sweeps(args, ds, tmp: Path) -> dict:
    """Sweep trials/hour: one worker with every thread against one single-threaded worker a core."""
    corpus = str(default_corpus_path(REPO / "data")) if not args.tiny else str(_tiny_corpus(tmp, ds))
    cores = os.cpu_count() or 1
    return {
        "trial_chars": args.sweep_chars,
        f"1 worker x {cores} threads": sweep_throughput(tmp, 1, args.sweep_trials, args.sweep_chars, corpus),
        f"{cores} workers x 1 thread": sweep_throughput(tmp, cores, args.sweep_trials, args.sweep_chars, corpus),
    }


def quality_per_time(args, tmp: Path) -> dict:
    """Quality per time on tinyshakespeare: each QUALITY experiment at each budget."""
    budgets = QUALITY_BUDGETS if not args.tiny else (1.0, 2.0)
    return {"target_nats": TARGET, "corpus": "tinyshakespeare", "budgets": list(budgets),
            **{name: quality(name, path, budgets, tmp, say, 2 if args.tiny else 30)
               for name, path in QUALITY.items()}}


def main() -> int:
    """The benchmark: each section measured in order, then the JSON and the table."""
    args = parse_args()
    threads = torch.get_num_threads()
    cfg0 = load_config(REPO / "experiments" / "baseline.yaml",
                       {"tracking.experiment": "bench", "train.sample_length": 0,
                        "train.eval_every_chars": 10**12})
    ds = prepare(load_corpus(cfg0.data.corpus), cfg0.data.val_fraction)
    out: dict = {
        "machine": f"{platform.node()} {platform.machine()}, {threads} threads, torch {torch.__version__}",
        "corpus": cfg0.data.corpus, "vocab_size": len(ds.vocab), "seconds": args.seconds, "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        out.update(measure_training(args, cfg0, ds, tmp))
        out.update(validation_and_generation(args, cfg0, ds))
        if "corpus" not in args.skip:
            out["corpus_default"] = corpus_times(tmp)
        if "sweep" not in args.skip:
            out["sweep"] = sweeps(args, ds, tmp)
        if "quality" not in args.skip:
            out["quality"] = quality_per_time(args, tmp)
    write(out, Path(args.out))
    print_table(out)
    return 0


def _tiny_corpus(tmp: Path, ds) -> Path:
    path = tmp / "tiny.txt"
    path.write_text(ds.vocab.decode(ds.train[:50_000].tolist()), encoding="utf-8")
    return path


def write(out: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))


def print_table(out: dict) -> None:
    peak = out["gemm_peak_flops"]
    prec = out["trainer_precision"]
    print(f"\nmachine: {out['machine']}; GEMM peak {peak['float32'] / 1e9:.0f} GFLOP/s float32, "
          f"{peak['bfloat16'] / 1e9:.0f} bfloat16; charlstm trains in {prec} (train.precision: auto)")
    print(f"{'training, chars/s':22s}{'plain f32':>11s}{'plain bf16':>11s}{'off':>10s}{'on':>10s}"
          f"{'off/plain':>10s}{'on/off':>8s}{'f32 GEMM%':>10s}{'on GEMM%':>9s}{'batch%':>8s}")
    for name, r in out["training"].items():
        bf = r["plain_bfloat16_chars_per_sec"]
        print(f"{name:22s}{r['plain_float32_chars_per_sec']:>11,.0f}{'n/a' if bf is None else f'{bf:,.0f}':>11s}"
              f"{r['off_chars_per_sec']:>10,.0f}{r['on_chars_per_sec']:>10,.0f}{r['trainer_vs_plain']:>10.3f}"
              f"{r['tracking_on_vs_off']:>8.3f}{r['plain_float32_gemm_fraction']:>10.0%}"
              f"{r['tracked_gemm_fraction']:>9.0%}{r['batch_share_of_step']:>8.1%}"
              f"{r['tracking_share_of_steps']:>13.2%}{r['tracking_share_end_to_end']:>11.2%}")
    print(f"(ratios: medians of same-round pairs; off/plain: charlstm against the plain loop in {prec}; f32 GEMM%: the plain float32 loop's "
          f"model FLOP/s over the float32 GEMM peak; on GEMM%: charlstm with tracking over the {prec} peak; "
          f"track%: time inside MLflow calls over a tracked run's training steps, and over the whole "
          f"run with its evaluation, checkpoints and their upload)")
    v, g = out["validation"], out["generation"]
    streams = [k for k in v if k.startswith("chars_per_sec_") and k != "chars_per_sec_1_stream"][0]
    print(f"validation ({v['size']}): {v[streams]:,.0f} chars/s ({streams.split('_', 3)[-1].replace('_', ' ')}), "
          f"{v['chars_per_sec_1_stream']:,.0f} (1 stream)")
    print(f"generation ({g['size']}): {g['one_stream_chars_per_sec']:,.0f} chars/s one stream, "
          f"{g['sixteen_streams_chars_per_sec']:,.0f} with 16 ({g['sixteen_vs_one']:.1f}x), "
          f"re-feeding the prefix {g['refeed_chars_per_sec']:,.0f} ({g['one_stream_vs_refeed']:.0f}x slower)")
    if "corpus_default" in out:
        c = out["corpus_default"]
        print(f"default corpus ({c['chars']:,} chars): build {c['build_cold_s']:.2f} s cold, "
              f"load {c['load_cached_s']:.3f} s cached, vocab + encode {c['prepare_s']:.3f} s")
    if "quality" in out:
        q = out["quality"]
        print(f"quality per time on tinyshakespeare (val nats/char; compute seconds until val <= {q['target_nats']}):")
        for name in QUALITY:
            r = q[name]
            hit = "not reached" if r["time_to_target"] is None else f"{r['time_to_target']:.1f} s"
            vals = ", ".join(f"{r[f'val_after_{b:g}s']:.4f} after {b:g} s" for b in q["budgets"])
            print(f"  {name:9s}({r['experiment']}): to {q['target_nats']} {hit}; {vals}")
    if "sweep" in out:
        s = out["sweep"]
        for k, r in s.items():
            if isinstance(r, dict):
                print(f"sweep, {k}: {r['trials_per_hour']:,.0f} trials/hour ({r['trials']} trials of "
                      f"{s['trial_chars']:,} chars; {r['trials_per_hour_wall']:,.0f}/hour with start-up)")


if __name__ == "__main__":
    raise SystemExit(main())

"""Training loop, evaluation and checkpoints.

``train(cfg, tracker, on_eval)`` knows nothing of Optuna or MLflow: it talks to a ``Tracker``
(a no-op unless one is given) and calls ``on_eval(record)`` after every evaluation, which may
raise to stop the run (a pruned trial, say).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from charlstm import interrupt
from charlstm.config import Config, from_dict, to_dict
from charlstm.data import Dataset, Vocab, load_corpus, make_batches, prepare
from charlstm.errors import (
    CheckpointError,
    ConfigError,
    Diverged,
    StorageError,
    TrainingError,
    first_line,
    human_bytes,
)
from charlstm.model import CharacterLSTM, State, detach, train_memory_bytes
from charlstm.tracking import Tracker

CHECKPOINT_FORMAT = 1
LN2 = math.log(2)
EVAL_CHUNK = 256  # time steps per forward call during evaluation
EVAL_BURN_IN = 256  # characters each extra eval stream reads, unscored, before its segment
# after warm-up, a mean train loss above this many times ln(V) (uniform guessing) has diverged
DIVERGED_FACTOR = 2.0
DATA_BYTES_PER_CHAR = 24  # the text, its UTF-32 copy while encoding, and int64 ids

EvalHook = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------
# Device and model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bfloat16`` where the hardware has native bfloat16 arithmetic (CPUs with
    AVX512-BF16 or AMX, CUDA GPUs that support it), else ``float32``. Measured on this repo's
    2-core VM (AVX512-BF16): 1.6-2x the training throughput, val loss no worse at equal time
    (README, Benchmarks)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = any(getattr(torch.cpu, p, lambda: False)() for p in probes)
    else:
        native = False
    return "bfloat16" if native else "float32"


def build_model(cfg: Config, vocab_size: int) -> CharacterLSTM:
    m = cfg.model
    return CharacterLSTM(vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.dropout)


# ---------------------------------------------------------------------------------------------
# Checkpoints: plain dicts of tensors and Python scalars, loadable with weights_only=True.


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically and durably: a crash, a signal or a full disk mid-write leaves the
    previous file intact and no temporary file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:  # a file object: torch then raises the OSError (ENOSPC) itself
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            free = human_bytes(shutil.disk_usage(path.parent).free) if path.parent.is_dir() else "?"
            raise StorageError(
                f"cannot write checkpoint {path}: {(e.strerror or first_line(e)).lower()} ({free} free there)"
            ) from None
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):  # what torch.save writes; torch.load's own errors vary
        raise CheckpointError(f"checkpoint {path}: not a charlstm checkpoint (not a file torch.save wrote)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not its format
        raise CheckpointError(f"checkpoint {path}: corrupt or not a charlstm checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a charlstm checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[CharacterLSTM, Vocab, Config]:
    """Rebuild the model, vocab and config a checkpoint was saved with."""
    cfg = from_dict(ckpt["config"])
    vocab = Vocab(ckpt["vocab"])
    model = build_model(cfg, len(vocab))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its own config: {first_line(e)}") from None
    return model.to(device), vocab, cfg


# ---------------------------------------------------------------------------------------------
# Evaluation


def eval_layout(n: int, streams: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions each eval stream reads and which of them it scores, both [S, span].

    Stream k reads [k*seg, k*seg + span) and scores all but its first EVAL_BURN_IN characters
    (read only to warm its state up); stream 0 starts the text and scores everything. Every
    one of the ``n`` targets is scored exactly once."""
    streams = max(1, min(streams, n // (4 * EVAL_BURN_IN)))
    burn = 0 if streams == 1 else EVAL_BURN_IN
    seg = math.ceil((n - burn) / streams)
    starts = torch.arange(streams, device=device) * seg  # [S]
    pos = starts[:, None] + torch.arange(seg + burn, device=device)  # [S, span]
    scored = (pos >= starts[:, None] + burn) & (pos < n)
    scored[0] = pos[0] < n
    return pos.clamp(max=n - 1), scored


@torch.inference_mode()
def evaluate(model: CharacterLSTM, ids: torch.Tensor, streams: int = 1) -> float:
    """Mean next-character loss (nats/char) over ``ids``, read as one stream with the state
    carried, or as ``streams`` contiguous segments side by side (see ``eval_layout``): the same
    number to within what the LSTM remembers beyond EVAL_BURN_IN characters, many times faster."""
    was_training = model.training
    model.eval()
    n = len(ids) - 1  # characters with a target
    pos, scored = eval_layout(n, streams, ids.device)
    x_all, y_all = ids[pos], ids[pos + 1]  # [S, span]
    span = pos.size(1)
    state = model.init_state(pos.size(0))
    total = torch.zeros((), device=ids.device, dtype=torch.float64)
    for i in range(0, span, EVAL_CHUNK):
        x, y, m = (t[:, i : i + EVAL_CHUNK] for t in (x_all, y_all, scored))
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.float(), y.reshape(-1), reduction="none")
        total += (loss * m.reshape(-1)).sum(dtype=torch.float64)
    model.train(was_training)
    return total.item() / n


# ---------------------------------------------------------------------------------------------
# The loop


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale gradients to a total L2 norm of at most ``max_norm``, without a host sync.
    Same result as torch.nn.utils.clip_grad_norm_, in a third of its time on a small CPU model
    (70 vs 180 us here: 4 batched ops instead of per-tensor ones and checks)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_(max=1.0))


@dataclass
class TrainResult:
    """What a run returns: its metric and the curves behind it."""

    best_val_loss: float  # nats/char
    final_val_loss: float
    step: int
    chars_seen: int
    train_seconds: float  # time spent in training steps (evaluation excluded)
    chars_per_sec: float
    run_dir: Path
    param_counts: dict[str, int]
    evals: list[dict[str, Any]] = field(default_factory=list)
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean train loss)

    @property
    def best_val_bpc(self) -> float:
        return self.best_val_loss / LN2


def lr_at(cfg: Config, step: int, progress: float) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio * lr`` over the budget."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    progress = min(max(progress, 0.0), 1.0)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _new_run_dir(cfg: Config) -> Path:
    """A directory no other run uses: created here, so two runs started in the same second
    (another process, say) never share one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.train.out_dir) / cfg.name
    base.mkdir(parents=True, exist_ok=True)
    path, n = base / stamp, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = base / f"{stamp}-{n}"


def latest_run_dir(cfg: Config) -> Path:
    """The newest run directory of this experiment that holds a ``last.pt``."""
    base = Path(cfg.train.out_dir) / cfg.name
    runs = sorted(p.parent for p in base.glob("*/last.pt"))
    if not runs:
        raise CheckpointError(f"nothing to resume: no {base}/*/last.pt")
    return runs[-1]


# ---------------------------------------------------------------------------------------------
# Guards: what the machine can hold, what a failed allocation means, when a run has diverged


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_memory(cfg: Config, vocab_size: int, n_chars: int, device: torch.device) -> None:
    """Refuse, before anything is allocated, a config whose training cannot fit in memory."""
    m, d = cfg.model, cfg.data
    parts = train_memory_bytes(vocab_size, m.embedding_dim, m.hidden_size, m.num_layers,
                               d.batch_size, d.seq_length)
    need = parts["state"] + parts["activations"] + DATA_BYTES_PER_CHAR * n_chars
    have = available_memory(device)
    if need > have:
        raise TrainingError(
            f"training needs at least {human_bytes(need)} (weights, gradients and optimizer "
            f"{human_bytes(parts['state'])}, activations {human_bytes(parts['activations'])} for "
            f"batches of {d.batch_size} x {d.seq_length}), more than the {human_bytes(have)} free on "
            f"{device.type}: shrink model.hidden_size, model.num_layers, data.batch_size or data.seq_length"
        )


_ALLOCATION = re.compile(r"[Tt]ried to allocate (\d+) bytes|[Tt]ried to allocate ([\d.]+ [KMGT]i?B)")


def out_of_memory(e: BaseException) -> TrainingError | None:
    """A failed allocation (CPU or CUDA) as one line with its size; None for other errors."""
    text = str(e)
    if not isinstance(e, torch.OutOfMemoryError | RuntimeError) or "allocate" not in text:
        return None
    match = _ALLOCATION.search(text)
    size = "" if match is None else f": tried to allocate {human_bytes(int(match[1])) if match[1] else match[2]}"
    return TrainingError(
        f"out of memory{size}; shrink model.hidden_size, model.num_layers, data.batch_size or "
        "data.seq_length (or train.eval_streams)"
    )


def check_finite(loss: float, step: int, cfg: Config, vocab_size: int, what: str = "train loss") -> None:
    """Raise ``Diverged`` for a non-finite loss, or one far above uniform guessing after warm-up."""
    uniform = math.log(vocab_size)
    if math.isfinite(loss) and (step <= cfg.train.warmup_steps or loss <= DIVERGED_FACTOR * uniform):
        return
    clip = "" if cfg.train.grad_clip else " or turn train.grad_clip on"
    raise Diverged(
        f"training diverged at step {step}: {what} {loss:.4g} nats/char (uniform guessing: "
        f"{uniform:.2f}); lower train.lr (now {cfg.train.lr:g}){clip}"
    )


def train(
    cfg: Config,
    tracker: Tracker | None = None,
    on_eval: EvalHook | None = None,
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg`` to its budget and return the result (best val loss in nats/char).

    ``resume``: a checkpoint file or run directory to continue from; the continued run sees the
    same batches, RNG stream and schedule, so its curve equals an uninterrupted run's.
    A stop requested by a signal (``charlstm.interrupt``) is acted on at the next step boundary:
    ``last.pt`` is saved and ``Interrupted`` raised. A diverged loss raises ``Diverged``, a
    failed allocation a ``TrainingError`` naming its size.
    """
    try:
        return _train(cfg, tracker or Tracker(), on_eval, resume, run_dir, progress)
    except RuntimeError as e:
        oom = out_of_memory(e)
        if oom is None:
            raise
        raise oom from None


def _train(
    cfg: Config,
    tracker: Tracker,
    on_eval: EvalHook | None,
    resume: str | Path | None,
    run_dir: str | Path | None,
    progress: bool,
) -> TrainResult:
    t = cfg.train
    device = resolve_device(t.device)
    # what "auto" means on this machine goes into the checkpoint and MLflow, not the word "auto"
    cfg = replace(cfg, train=replace(t, precision=resolve_precision(t.precision, device)))
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)

    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        if run_dir is None:  # continue in the checkpoint's own directory
            run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        saved = from_dict(ckpt["config"])
        if saved.model != cfg.model:
            raise CheckpointError(
                f"checkpoint {resume}: model {saved.model} differs from the config's {cfg.model}"
            )

    corpus = load_corpus(cfg.data.corpus)
    ds: Dataset = prepare(corpus, cfg.data.val_fraction, cfg.data.test_fraction, device=device)
    if ckpt is not None and ckpt["vocab"] != ds.vocab.chars:
        ours, theirs = set(ds.vocab.chars), set(ckpt["vocab"])
        diff = "".join(sorted(ours ^ theirs))
        raise CheckpointError(
            f"checkpoint {resume} was trained on another vocab ({len(theirs) + 1} ids vs "
            f"{len(ours) + 1} for corpus {cfg.data.corpus}; differing characters: {diff!r})"
        )
    vocab = ds.vocab
    check_memory(cfg, len(vocab), len(corpus.text), device)
    B, T = cfg.data.batch_size, cfg.data.seq_length
    batches = make_batches(cfg.data.batching, ds.train, B, T, t.seed)

    torch.manual_seed(t.seed)
    model = build_model(cfg, len(vocab)).to(device)
    Opt = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # the fused kernel halves the optimiser's share of a small model's step on CPU and GPU
    fused = device.type in ("cpu", "cuda")
    optimizer = Opt(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    counts = model.param_counts()
    params = list(model.parameters())

    step = chars = 0
    train_time = 0.0
    best = math.inf
    evals: list[dict[str, Any]] = []
    curve: list[tuple[int, float]] = []
    loss_acc = torch.zeros((), device=device)  # summed on device: no host sync per step
    loss_n = 0
    state: State = model.init_state(B)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, chars, train_time = ckpt["step"], ckpt["chars_seen"], ckpt["train_time"]
        best, evals, curve = ckpt["best_val_loss"], list(ckpt["evals"]), list(ckpt["train_curve"])
        loss_acc, loss_n = ckpt["loss_acc"].to(device), ckpt["loss_n"]
        state = (ckpt["lstm_state"][0].to(device), ckpt["lstm_state"][1].to(device))
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    # a resumed run continues its tracking record; a new record (a retried trial) starts whole
    same_record = ckpt is not None and tracker.resume(ckpt.get("tracking") or {})
    run_dir = Path(run_dir) if run_dir is not None else _new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)

    if not same_record:
        tracker.log_config(cfg)
        tracker.log_param_counts(counts)
        tracker.log_dataset(corpus, vocab, len(ds.train), len(ds.val))

    def budget_progress() -> float:
        fractions = [0.0]
        if t.max_steps:
            fractions.append(step / t.max_steps)
        if t.max_chars:
            fractions.append(chars / t.max_chars)
        if t.max_seconds:
            fractions.append(train_time / t.max_seconds)
        return max(fractions)

    def snapshot() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "vocab": vocab.chars,
            "config": to_dict(cfg),
            "param_counts": counts,
            "step": step,
            "chars_seen": chars,
            "train_time": train_time,
            "best_val_loss": best,
            "evals": evals,
            "train_curve": curve,
            "loss_acc": loss_acc.detach().cpu(),
            "loss_n": loss_n,
            "lstm_state": (state[0].detach().cpu(), state[1].detach().cpu()),
            "rng": {
                "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
            "tracking": tracker.checkpoint_info(),
        }

    def run_eval(mark: int) -> dict[str, Any]:
        nonlocal best
        val = evaluate(model, ds.val, t.eval_streams)
        check_finite(val, step, cfg, len(vocab), "val loss")
        improved = val < best
        best = min(best, val)
        record = {
            "step": step,
            "chars_seen": chars,
            "chars_mark": mark,  # the eval boundary crossed: the same for every batch shape
            "train_time": train_time,
            "val_loss": val,
            "val_bpc": val / LN2,
            "best_val_loss": best,
        }
        evals.append(record)
        save_checkpoint(run_dir / "last.pt", snapshot())
        if improved:
            save_checkpoint(run_dir / "best.pt", snapshot())
        tracker.log_metrics(
            {"val_loss": val, "val_bpc": val / LN2, "best_val_loss": best, "chars_seen": chars}, step
        )
        if t.sample_length:
            from charlstm.sample import generate  # sample imports train for checkpoints

            text = generate(model, vocab, prime="\n", length=t.sample_length, seed=t.seed)[0]
            tracker.log_text(text, f"samples/step_{step:08d}.txt")
        tracker.flush()
        return record

    next_eval = (chars // t.eval_every_chars + 1) * t.eval_every_chars
    bar = tqdm(
        total=t.max_steps or None,
        initial=step,
        disable=not progress,
        desc=cfg.name,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bfloat16")
    consistent = True  # False while parameters and counters are mid-update
    model.train()
    try:
        while True:
            if (
                (t.max_steps and step >= t.max_steps)
                or (t.max_chars and chars >= t.max_chars)
                or (t.max_seconds and train_time >= t.max_seconds)
            ):
                break
            interrupt.check(f"at step {step}")  # a step boundary: the state is whole
            t0 = time.perf_counter()
            consistent = False
            lr = lr_at(cfg, step, budget_progress())
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y, reset = batches.get(step)  # [B, T], [B, T]
            state = model.init_state(B) if reset else detach(state)
            with autocast:
                logits, state = model(x, state)  # [B*T, V]
            loss = F.cross_entropy(logits.float(), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                clip_grad_norm(params, t.grad_clip)
            optimizer.step()
            loss_acc += loss.detach()
            loss_n += 1
            step += 1
            chars += B * T
            consistent = True

            if step % cfg.tracking.log_every_steps == 0:
                mean = loss_acc.item() / loss_n  # the one host sync, every log_every_steps
                check_finite(mean, step, cfg, len(vocab))
                loss_acc.zero_()
                loss_n = 0
                curve.append((step, mean))
                cps = chars / train_time if train_time else 0.0
                tracker.log_metrics(
                    {"train_loss": mean, "lr": lr, "chars_per_sec": cps, "chars_seen": chars}, step
                )
                bar.set_postfix(loss=f"{mean:.3f}", cps=f"{cps / 1000:.0f}k", refresh=False)
            bar.update(1)
            train_time += time.perf_counter() - t0  # steps and their logging; not evaluation
            if chars >= next_eval:
                record = run_eval(next_eval)
                next_eval += t.eval_every_chars
                if progress:
                    bar.write(
                        f"step {step}: val {record['val_loss']:.4f} nats/char "
                        f"({record['val_bpc']:.4f} bits/char)"
                    )
                if on_eval is not None:
                    on_eval(record)
        if not evals or evals[-1]["step"] != step:
            record = run_eval(chars)
            if on_eval is not None:
                on_eval(record)
    except KeyboardInterrupt as e:
        if consistent:  # keep the work done so far resumable
            save_checkpoint(run_dir / "last.pt", snapshot())
            if isinstance(e, interrupt.Interrupted):
                e.checkpoint = run_dir / "last.pt"
        raise
    finally:
        bar.close()

    for name in ("best.pt", "last.pt"):
        tracker.log_checkpoint(run_dir / name)
    tracker.log_metrics({"train_seconds": train_time, "final_chars_per_sec": chars / max(train_time, 1e-9)}, step)
    tracker.flush()
    return TrainResult(
        best_val_loss=best,
        final_val_loss=evals[-1]["val_loss"],
        step=step,
        chars_seen=chars,
        train_seconds=train_time,
        chars_per_sec=chars / max(train_time, 1e-9),
        run_dir=run_dir,
        param_counts=counts,
        evals=evals,
        train_curve=curve,
    )

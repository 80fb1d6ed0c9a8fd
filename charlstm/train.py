"""The training loop.

``train(cfg, tracker, on_eval)`` knows nothing of Optuna or MLflow: it reports to a ``Tracker``
(the no-op interface below; ``charlstm.tracking`` records to MLflow) and calls ``on_eval(record)``
after every evaluation, which may raise to stop the run (a pruned trial, say). Everything a run
changes lives in one ``RunState``, which knows how to go to and come back from a checkpoint;
checkpoint writing and text samples are evaluation hooks like ``on_eval``. The loop itself is
``train``: a budget check, a step, a log line now and then, an evaluation every
``train.eval_every_chars`` characters. When it evaluates and ends, and the lr of each step, are
``charlstm.schedule``'s; the device and precision, ``charlstm.device``'s.

Guards: a stop asked for by a signal (``charlstm.interrupt``) is acted on at the next step
boundary (``last.pt`` saved, ``Interrupted`` raised); a loss that goes non-finite, or stays far
above uniform guessing after warm-up, raises ``Diverged``; a config that cannot fit in memory is
refused before the model is built, and a failed allocation is one line naming its size.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from charlstm import checkpoint, interrupt, names
from charlstm.config import Config, from_dict
from charlstm.data import Dataset, Vocab, load_corpus, make_batches, prepare
from charlstm.device import resolve_device, resolve_precision
from charlstm.errors import CheckpointError, Diverged, TrainingError, human_bytes
from charlstm.model import CharacterLSTM, State, build_model, detach, train_memory_bytes
from charlstm.sample import generate
from charlstm.schedule import (
    budget_progress,
    budget_spent,
    compute_clock,
    eval_clock,
    lr_at,
    peak_lr,
    resolve_lr,
)

if TYPE_CHECKING:
    from charlstm.data import Corpus

EVAL_CHUNK = 256  # time steps per forward call during evaluation
EVAL_BURN_IN = 256  # characters each extra eval stream reads, unscored, before its segment
# after warm-up, a mean train loss above this many times ln(V) (uniform guessing) has diverged
DIVERGED_FACTOR = 2.0


class Tracker:
    """Receives what a training run produces. This base class records nothing."""

    run_id: str | None = None

    def resume(self, info: dict[str, Any]) -> bool:
        """Continue the run named by a checkpoint's ``checkpoint_info()``; False when the
        record continues elsewhere (or nowhere) and needs its config logged again."""
        return False

    def checkpoint_info(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run logs into the same record."""
        return {}

    def log_config(self, cfg: Config) -> None: ...

    def log_param_counts(self, counts: dict[str, int]) -> None: ...

    def log_dataset(self, corpus: Corpus, vocab: Vocab, n_train: int, n_val: int) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """``step`` is the characters of training text seen so far, not the optimizer step:
        curves of runs with different batch shapes line up on it."""

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_checkpoint(self, path: Path) -> None: ...

    def checkpoint_saved(self, path: Path) -> None:
        """A resumable checkpoint was just written at ``path`` (mid-run): a tracker whose runs
        may be resumed on another machine sends it where that machine can fetch it."""

    def log_model(self, path: Path) -> None:
        """The model of the checkpoint at ``path`` (the run's best), in a form others can load."""

    def flush(self) -> None: ...


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


@dataclass
class TrainResult:
    """What a run returns: its metric and the curves behind it."""

    best_val_loss: float  # nats/char
    final_val_loss: float
    step: int
    chars_seen: int
    train_seconds: float  # wall-clock spent in training steps (evaluation excluded)
    chars_per_sec: float
    run_dir: Path
    param_counts: dict[str, int]
    compute_seconds: float = 0.0  # those steps' compute: what a max_seconds budget counts
    evals: list[dict[str, Any]] = field(default_factory=list)
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean train loss)

    @property
    def best_val_bpc(self) -> float:
        return self.best_val_loss / names.LN2


# ---------------------------------------------------------------------------------------------
# Guards: what the machine can hold, what a failed allocation means, when a run has diverged


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_memory(cfg: Config, vocab_size: int, device: torch.device) -> None:
    """Refuse, before the model is built, a config whose training cannot fit in the memory
    left free (the data is loaded by then, so it is already counted as used)."""
    m, d = cfg.model, cfg.data
    parts = train_memory_bytes(vocab_size, m.embedding_dim, m.hidden_size, m.num_layers,
                               d.batch_size, d.seq_length)
    need = parts["state"] + parts["activations"]
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
    if not isinstance(e, RuntimeError) or "allocate" not in text:  # (CUDA's OutOfMemoryError is one)
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
        f"{uniform:.2f}); lower train.lr (the peak now {peak_lr(cfg.train):g}){clip}"
    )


# ---------------------------------------------------------------------------------------------
# A run and its state


@dataclass
class RunState:
    """Everything a run changes as it trains. ``to_checkpoint`` and ``restore`` are the one
    place that knows how it is kept (the model half: ``checkpoint.model_part``)."""

    model: CharacterLSTM
    optimizer: torch.optim.Optimizer
    lstm: State  # (h, c) carried from batch to batch, each [L, B, H]
    loss_acc: torch.Tensor  # train loss summed on the device since the last log: no host sync a step
    loss_n: int = 0
    step: int = 0
    chars: int = 0
    train_time: float = 0.0  # wall seconds in training steps and their logging, not in evaluation
    compute_time: float = 0.0  # the same steps' CPU seconds over the run's threads (wall on a GPU)
    best: float = math.inf  # best val loss so far, nats/char
    evals: list[dict[str, Any]] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean train loss)
    # compute_time after each step, kept where a max_seconds budget is the schedule's clock:
    # what a reproduction replays to take the same steps, evaluations and learning rates
    clock: list[float] = field(default_factory=list)

    def to_checkpoint(self, vocab: Vocab, cfg: Config, tracking: dict[str, Any]) -> dict[str, Any]:
        device = self.loss_acc.device
        return {
            **checkpoint.model_part(self.model, vocab, cfg),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step, names.CHARS_SEEN: self.chars, "train_time": self.train_time,
            "compute_time": self.compute_time,
            names.BEST_VAL_LOSS: self.best, "evals": self.evals, "train_curve": self.curve,
            "loss_acc": self.loss_acc.detach().cpu(), "loss_n": self.loss_n,
            "lstm_state": (self.lstm[0].detach().cpu(), self.lstm[1].detach().cpu()),
            "compute_clock": torch.tensor(self.clock, dtype=torch.float64),
            "rng": {"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "tracking": tracking,
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        device = self.loss_acc.device
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.chars, self.train_time = ckpt["step"], ckpt[names.CHARS_SEEN], ckpt["train_time"]
        self.compute_time = ckpt.get("compute_time", self.train_time)  # (not in older checkpoints)
        self.best, self.evals, self.curve = ckpt[names.BEST_VAL_LOSS], list(ckpt["evals"]), list(ckpt["train_curve"])
        self.loss_acc, self.loss_n = ckpt["loss_acc"].to(device), ckpt["loss_n"]
        self.lstm = (ckpt["lstm_state"][0].to(device), ckpt["lstm_state"][1].to(device))
        self.clock = ckpt["compute_clock"].tolist() if "compute_clock" in ckpt else []  # (not in older ones)
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)


@dataclass
class Run:
    """One training run: its config (precision resolved), data, where it writes, what it
    reports to, and its ``RunState``."""

    cfg: Config
    ds: Dataset
    batches: Any  # RandomBatches | StreamBatches
    tracker: Tracker
    run_dir: Path
    state: RunState
    autocast: torch.autocast
    clock: Callable[[], float]  # compute seconds so far (see compute_clock)
    improved: bool = False  # whether the latest evaluation beat the best before it

    def snapshot(self) -> dict[str, Any]:
        return self.state.to_checkpoint(self.ds.vocab, self.cfg, self.tracker.checkpoint_info())


def start_run(cfg: Config, tracker: Tracker, resume: str | Path | None, run_dir: str | Path | None) -> Run:
    """Resolve the device and precision, load the data, build the model and optimizer, restore
    a checkpoint if resuming (same batches, RNG stream and schedule as an unbroken run), and
    log what the run is to a new tracking record."""
    device = resolve_device(cfg.train.device)
    # what "auto" means on this machine goes into the checkpoint and MLflow, not the word "auto"
    cfg = replace(cfg, train=replace(cfg.train, precision=resolve_precision(cfg.train.precision, device),
                                     lr=resolve_lr(cfg.train)))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ckpt = _resume_checkpoint(resume, cfg, device)
    corpus = load_corpus(cfg.data.corpus)
    ds = prepare(corpus, cfg.data.val_fraction, cfg.data.test_fraction, device=device)
    if ckpt is not None and ckpt["vocab"] != ds.vocab.chars:
        ours, theirs = set(ds.vocab.chars), set(ckpt["vocab"])
        raise CheckpointError(
            f"checkpoint {resume} was trained on another vocab ({len(theirs) + 1} ids vs "
            f"{len(ours) + 1} for corpus {cfg.data.corpus}; differing characters: {''.join(sorted(ours ^ theirs))!r})"
        )
    check_memory(cfg, len(ds.vocab), device)
    batches = make_batches(cfg.data.batching, ds.train, cfg.data.batch_size, cfg.data.seq_length, cfg.train.seed)
    state = _new_state(cfg, len(ds.vocab), device)
    if ckpt is not None:
        state.restore(ckpt)
    # a resumed run continues its tracking record; a new record (a retried trial) starts whole
    same_record = ckpt is not None and tracker.resume(ckpt.get("tracking") or {})
    run_dir = _run_dir(cfg, resume, run_dir)
    if not same_record:
        tracker.log_config(cfg)
        tracker.log_param_counts(state.model.param_counts())
        tracker.log_dataset(corpus, ds.vocab, len(ds.train), len(ds.val))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bfloat16")
    return Run(cfg, ds, batches, tracker, run_dir, state, autocast, compute_clock(device))


def _run_dir(cfg: Config, resume: str | Path | None, run_dir: str | Path | None) -> Path:
    """A new run's own directory; a resumed run's checkpoint directory. A run resumed into
    another directory (a retried trial's) starts it with the checkpoints it continues from, so
    that it ends with a ``best.pt`` even if it never beats the best it inherited."""
    if resume is None:
        return Path(run_dir) if run_dir is not None else checkpoint.new_run_dir(cfg.train.out_dir, cfg.name)
    source = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    run_dir = Path(run_dir) if run_dir is not None else source
    run_dir.mkdir(parents=True, exist_ok=True)
    if run_dir.resolve() != source.resolve():
        for name in (names.BEST_PT, names.LAST_PT):
            if (source / name).is_file():
                shutil.copy2(source / name, run_dir / name)
    return run_dir


def _resume_checkpoint(resume: str | Path | None, cfg: Config, device: torch.device) -> dict[str, Any] | None:
    if resume is None:
        return None
    ckpt = checkpoint.load(resume, map_location=device)
    saved = from_dict(ckpt["config"])
    if saved.model != cfg.model:
        raise CheckpointError(f"checkpoint {resume}: model {saved.model} differs from the config's {cfg.model}")
    return ckpt


def _new_state(cfg: Config, vocab_size: int, device: torch.device) -> RunState:
    tc = cfg.train
    torch.manual_seed(tc.seed)  # the weights' initialisation, then dropout: one RNG stream
    model = build_model(cfg.model, vocab_size).to(device)
    Opt = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    # the fused kernel halves the optimiser's share of a small model's step on CPU and GPU
    optimizer = Opt(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=device.type in ("cpu", "cuda"))
    return RunState(model, optimizer, model.init_state(cfg.data.batch_size), torch.zeros((), device=device))


# ---------------------------------------------------------------------------------------------
# The loop and its helpers


EvalHook = Callable[[Run, dict[str, Any]], None]


def train(
    cfg: Config,
    tracker: Tracker | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
    replay: list[float] | None = None,
) -> TrainResult:
    """Train ``cfg`` to its budget and return the result (best val loss in nats/char).
    ``resume``: a checkpoint file or run directory to continue from, drawing the same curve
    an uninterrupted run would. ``replay``: a run's recorded compute clock (its checkpoint's
    ``compute_clock``), read instead of this machine's, so that a ``max_seconds`` run takes the
    same steps, evaluations and learning rates again, and ends where it ended."""
    try:
        run = start_run(cfg, tracker or Tracker(), resume, run_dir)
        s, tc = run.state, run.cfg.train
        hooks: list[EvalHook] = [save_checkpoints, *([log_sample] if tc.sample_length else []), flush_tracking,
                                 *([lambda _, record: on_eval(record)] if on_eval else [])]
        bar = tqdm(total=tc.max_steps or None, initial=s.step, disable=not progress, desc=run.cfg.name,
                   unit="step", dynamic_ncols=True, mininterval=0.5)
        interval = 1 if tc.eval_points else tc.eval_every_chars
        next_eval = (eval_clock(tc, s) // interval + 1) * interval
        whole = True  # False while parameters and counters are mid-update
        try:
            while not budget_spent(tc, s, replay):
                interrupt.check(f"at step {s.step}")  # a step boundary: the state is whole
                t0, c0, whole = time.perf_counter(), run.clock(), False
                lr = train_step(run)
                whole = True
                if s.step % run.cfg.tracking.log_every_steps == 0:
                    log_train_loss(run, lr, bar)
                bar.update(1)
                tick(run, time.perf_counter() - t0, run.clock() - c0, replay)
                if eval_clock(tc, s) >= next_eval and not (tc.eval_points and next_eval >= tc.eval_points):
                    evaluate_run(run, s.chars if tc.eval_points else next_eval, hooks, bar, full=False)
                    next_eval += interval
            if not s.evals or s.evals[-1]["step"] != s.step or not s.evals[-1].get("full", True):
                evaluate_run(run, s.chars, hooks, bar, full=True)
        except KeyboardInterrupt as e:
            if whole:  # keep the work done so far resumable
                checkpoint.save(run.run_dir / names.LAST_PT, run.snapshot())
                if isinstance(e, interrupt.Interrupted):
                    e.checkpoint = run.run_dir / names.LAST_PT
            raise
        finally:
            bar.close()
    except RuntimeError as e:
        oom = out_of_memory(e)
        if oom is None:
            raise
        raise oom from None
    return finish(run)


def tick(run: Run, wall: float, compute: float, replay: list[float] | None) -> None:
    """After a step: its wall and compute seconds onto the run's clocks (the compute clock read
    from ``replay`` when given), the compute clock kept where it is the schedule's."""
    s = run.state
    s.train_time += wall
    s.compute_time = replay[s.step - 1] if replay is not None else s.compute_time + compute
    if run.cfg.train.max_seconds:
        s.clock.append(s.compute_time)


def train_step(run: Run) -> float:
    """One optimiser step on the next batch; returns the learning rate it used."""
    s, cfg = run.state, run.cfg
    lr = lr_at(cfg, s.step, budget_progress(cfg.train, s))
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    x, y, reset = run.batches.get(s.step)  # [B, T], [B, T]
    s.lstm = s.model.init_state(cfg.data.batch_size) if reset else detach(s.lstm)
    with run.autocast:
        logits, s.lstm = s.model(x, s.lstm)  # [B*T, V]
    loss = F.cross_entropy(logits.float(), y.reshape(-1))
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.train.grad_clip, foreach=True)
    s.optimizer.step()
    s.loss_acc += loss.detach()
    s.loss_n += 1
    s.step += 1
    s.chars += x.numel()
    return lr


def log_train_loss(run: Run, lr: float, bar) -> None:
    """The mean train loss since the last log (the one host sync, every log_every_steps)."""
    s = run.state
    mean = s.loss_acc.item() / s.loss_n
    check_finite(mean, s.step, run.cfg, len(run.ds.vocab))
    s.loss_acc.zero_()
    s.loss_n = 0
    s.curve.append((s.step, mean))
    cps = s.chars / s.train_time if s.train_time else 0.0
    # how far through its budget, and the share of its wall-clock that was compute (< 1 on a
    # busy machine): what a live view shows, and what says a run was starved
    share = s.compute_time / s.train_time if s.train_time else 0.0
    run.tracker.log_metrics({names.TRAIN_LOSS: mean, names.LR: lr, names.CHARS_PER_SEC: cps, names.CHARS_SEEN: s.chars,
                             names.BUDGET_FRACTION: budget_progress(run.cfg.train, s), names.COMPUTE_SHARE: share},
                            s.chars)
    bar.set_postfix(loss=f"{mean:.3f}", cps=f"{cps / 1000:.0f}k", refresh=False)


def evaluate_run(run: Run, mark: int, hooks: list[EvalHook], bar, full: bool = True) -> dict[str, Any]:
    """Evaluate on the val split (only its first ``eval_slice_chars`` unless ``full``: the run's
    best, and so its checkpoint and metric, come from whole-split evaluations alone), record it,
    then call the hooks in order."""
    s, tc = run.state, run.cfg.train
    full = full or not tc.eval_slice_chars or tc.eval_slice_chars >= len(run.ds.val) - 1
    ids = run.ds.val if full else run.ds.val[: tc.eval_slice_chars + 1]
    val = evaluate(s.model, ids, tc.eval_streams)
    check_finite(val, s.step, run.cfg, len(run.ds.vocab), "val loss")
    record = {
        "step": s.step,
        names.CHARS_SEEN: s.chars,
        "chars_mark": mark,  # the eval boundary crossed: the same for every batch shape
        "train_time": s.train_time,
        "compute_time": s.compute_time,
        names.VAL_LOSS: val,
        names.VAL_BPC: val / names.LN2,
        names.VAL_CHARS: len(ids) - 1,  # what it read: the whole split, or the slice
        "full": full,
        names.BEST_VAL_LOSS: min(s.best, val) if full else s.best,
    }
    run.improved, s.best = full and val < s.best, record[names.BEST_VAL_LOSS]
    s.evals.append(record)
    metrics = {names.VAL_LOSS: val, names.VAL_BPC: val / names.LN2, names.VAL_CHARS: len(ids) - 1,
               names.CHARS_SEEN: s.chars, **({names.BEST_VAL_LOSS: s.best} if math.isfinite(s.best) else {})}
    run.tracker.log_metrics(metrics, s.chars)  # buffered: written by flush_tracking
    if not bar.disable:
        bar.write(f"step {s.step}: val {val:.4f} nats/char ({val / names.LN2:.4f} bits/char)")
    for hook in hooks:
        hook(run, record)
    return record


def save_checkpoints(run: Run, record: dict[str, Any]) -> None:
    """Eval hook: ``last.pt`` always, ``best.pt`` when the val loss improved."""
    snapshot = run.snapshot()
    checkpoint.save(run.run_dir / names.LAST_PT, snapshot)
    if run.improved:
        checkpoint.save(run.run_dir / names.BEST_PT, snapshot)
    run.tracker.checkpoint_saved(run.run_dir / names.LAST_PT)


def flush_tracking(run: Run, record: dict[str, Any]) -> None:
    """Eval hook: write what the tracker buffered (after the checkpoints: a store that fails
    then cannot cost this evaluation's checkpoint)."""
    run.tracker.flush()


def log_sample(run: Run, record: dict[str, Any]) -> None:
    """Eval hook: a text sample from the model as it is now (the same seed each time)."""
    tc = run.cfg.train
    # (at temperature 1: the model's own distribution, what a sample during training shows)
    text = generate(run.state.model, run.ds.vocab, prime=names.GEN_PRIME, length=tc.sample_length, temperature=1.0,
                    seed=tc.seed)[0]
    run.tracker.log_text(text, f"{names.ARTIFACT_SAMPLES}/step_{record['step']:08d}.txt")


def finish(run: Run) -> TrainResult:
    """Upload the checkpoints and the best model, log the run's totals, and say what it reached."""
    s = run.state
    for name in (names.BEST_PT, names.LAST_PT):
        run.tracker.log_checkpoint(run.run_dir / name)
    run.tracker.log_model(run.run_dir / names.BEST_PT)
    cps = s.chars / max(s.train_time, 1e-9)
    run.tracker.log_metrics({names.TRAIN_SECONDS: s.train_time, names.COMPUTE_SECONDS: s.compute_time,
                             names.COMPUTE_SHARE: s.compute_time / max(s.train_time, 1e-9),
                             names.FINAL_CHARS_PER_SEC: cps}, s.chars)
    run.tracker.flush()
    return TrainResult(
        best_val_loss=s.best, final_val_loss=s.evals[-1][names.VAL_LOSS], step=s.step, chars_seen=s.chars,
        train_seconds=s.train_time, compute_seconds=s.compute_time, chars_per_sec=cps, run_dir=run.run_dir,
        param_counts=s.model.param_counts(), evals=s.evals, train_curve=s.curve,
    )

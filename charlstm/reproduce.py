"""``charlstm reproduce``: re-run a run from its MLflow record alone (its resolved config, which
holds the seed and the precision that ran) into a new run tagged ``reproduces=<run id>``, and
compare the validation curves point by point.

float32 on a CPU is deterministic here (the same batches, RNG stream and arithmetic), so the
curves must be identical; anything else names the first point that differs and what changed
since the record was made (code commit, corpus digest, torch version, device). A ``max_seconds``
run's schedule followed its compute clock, which its ``last.pt`` keeps step by step: the re-run
reads that clock instead of its own (``train(replay=...)``), so it takes the same steps,
evaluations and learning rates, and ends at the same step.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from charlstm import checkpoint, names, tracking
from charlstm.config import Config, from_dict
from charlstm.data import load_corpus
from charlstm.errors import TrackingError, first_line
from charlstm.train import train


@dataclass
class Record:
    """What a run recorded: its config, its validation curve and what it ran on."""
    run_id: str
    cfg: Config
    curve: list[tuple[int, float]]  # (characters seen, val bits/char), in order
    context: dict[str, str | None]  # commit, corpus digest, torch, device
    clock: list[float] | None = None  # a max_seconds run's compute clock after each step, from its last.pt


class Enough(Exception):
    """Raised by the eval hook once a shortened re-run has made its ``budget`` evaluations."""


def read_record(uri: str | None, run_id: str) -> Record:
    """A run's record, from MLflow."""
    try:
        client = tracking.client_for(uri)
        run = client.get_run(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            raw = yaml.safe_load(Path(client.download_artifacts(run_id, names.ARTIFACT_CONFIG, tmp)).read_text())
        history = client.get_metric_history(run_id, names.VAL_BPC)
    except Exception as e:
        raise TrackingError(f"run {run_id}: no record to reproduce from ({first_line(e)})") from None
    tags = run.data.tags
    context = {"commit": tags.get(names.TAG_COMMIT), "corpus digest": tags.get(names.TAG_CORPUS),
               "torch": tags.get(names.TAG_TORCH), "device": tags.get(names.TAG_DEVICE)}
    curve = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]
    cfg = from_dict(raw)
    return Record(run_id, cfg, curve, context, recorded_clock(uri, run_id) if cfg.train.max_seconds else None)


def recorded_clock(uri: str | None, run_id: str) -> list[float] | None:
    """The compute clock a run's uploaded ``last.pt`` kept (None: no such artifact, or a run
    from before charlstm kept one)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ckpt = checkpoint.load(tracking.download_checkpoint(uri, run_id, names.LAST_PT, Path(tmp)))
        except Exception:  # (collected by `charlstm gc`, or never uploaded)
            return None
    clock = ckpt.get("compute_clock")
    return clock.tolist() if clock is not None and len(clock) == ckpt["step"] else None


def context_now(cfg: Config) -> dict[str, str | None]:
    ran_on = tracking.context_tags(cfg)  # what every run records of the same
    return {"commit": tracking.git_commit(), "corpus digest": load_corpus(cfg.data.corpus).sha256,
            "torch": ran_on[names.TAG_TORCH], "device": ran_on[names.TAG_DEVICE]}


def rerun(record: Record, uri: str, budget: int | None) -> tuple[str, list[tuple[int, float]]]:
    """Train the recorded config again into a new run; (its run id, its curve). ``budget``:
    stop after that many evaluations."""
    cfg = record.cfg
    track = replace(cfg.tracking, uri=uri)
    curve: list[tuple[int, float]] = []

    def on_eval(rec: dict) -> None:
        curve.append((rec[names.CHARS_SEEN], rec[names.VAL_LOSS] / names.LN2))
        if budget is not None and len(curve) >= budget:
            raise Enough

    with tracking.MLflowTracker(track, run_name=f"{cfg.name}-reproduce", tags={names.TAG_REPRODUCES: record.run_id}) as tr:
        try:
            train(cfg, tr, on_eval, progress=False, replay=record.clock)
        except Enough:
            tr.end_tags = {"reproduce": f"stopped after {budget} evaluation(s)"}
    return tr.run_id, curve


def compare(record: Record, curve: list[tuple[int, float]], now: dict[str, str | None],
            budget: int | None = None) -> tuple[bool, str]:
    """(agree, one line): the re-run drew every recorded point (by characters seen: a retried
    trial's record starts where it resumed), or the first point that differs and what changed."""
    ours = dict(curve)
    recorded = record.curve if budget is None else [p for p in record.curve if p[0] <= curve[-1][0]] if curve else []
    for i, (chars, value) in enumerate(recorded):
        if ours.get(chars) != value:
            now_text = "no evaluation there" if chars not in ours else f"now {ours[chars]:.6f}"
            return False, f"evaluation {i + 1} (at {chars:,} characters) was {value:.6f} bits/char, {now_text}{_changed(record, now)}"
    if not recorded:
        return False, f"the record has {len(record.curve)} evaluation(s), the re-run {len(curve)}: nothing to compare"
    last = recorded[-1]
    return True, f"{len(recorded)} evaluation(s) identical, the last {last[1]:.6f} bits/char at {last[0]:,} characters"


def _changed(record: Record, now: dict[str, str | None]) -> str:
    changed = [f"{k} {record.context[k]} -> {now[k]}" for k in now
               if record.context.get(k) is not None and record.context[k] != now[k]]
    if record.cfg.train.max_seconds and record.clock is None:
        changed.append("the budget has max_seconds and the run kept no clock to replay (its last.pt is gone)")
    return "; changed since: " + ", ".join(changed) if changed else "; nothing recorded changed"

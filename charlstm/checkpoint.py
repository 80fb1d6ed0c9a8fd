"""Checkpoints: the format, writing one atomically, reading one back with ``weights_only=True``,
and the model it holds. The training state a checkpoint also carries (optimizer, counters,
RNG) is ``charlstm.train.RunState``'s to write and restore.

A checkpoint is a plain dict of tensors and Python scalars: ``format``, ``config`` (the resolved
config), ``vocab`` (its characters), ``model`` (a state dict), ``param_counts``, and the keys of
``RunState.to_checkpoint``.
"""

from __future__ import annotations

import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from charlstm import names
from charlstm.config import Config, flatten, from_dict, to_dict
from charlstm.data import Vocab
from charlstm.errors import CheckpointError, first_line
from charlstm.files import atomic_write
from charlstm.model import CharacterLSTM, build_model

FORMAT = 1
MODEL_KEYS = ("format", "config", "vocab", "model", "param_counts")  # the model half of the layout


def model_part(model: CharacterLSTM, vocab: Vocab, cfg: Config) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model: the first half of its layout."""
    part = (FORMAT, to_dict(cfg), vocab.chars, model.state_dict(), model.param_counts())
    return dict(zip(MODEL_KEYS, part, strict=True))


def model_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint without its training state: what inference needs (a third of the size)."""
    return {k: ckpt[k] for k in MODEL_KEYS}


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically and durably (see ``charlstm.files``); a full disk is a one-line error."""
    atomic_write(path, lambda f: torch.save(payload, f))  # a file object: ENOSPC surfaces as OSError


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file (or a run directory's ``last.pt``), checked to be one of ours."""
    path = Path(path)
    if path.is_dir():
        path = path / names.LAST_PT
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):  # what torch.save writes; torch.load's own errors vary
        raise CheckpointError(f"checkpoint {path}: not a charlstm checkpoint (not a file torch.save wrote)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not its format
        raise CheckpointError(f"checkpoint {path}: corrupt or not a charlstm checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: not a charlstm checkpoint (format {FORMAT})")
    if ckpt["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path}: of format {ckpt['format']}, another charlstm version's "
                              f"(this one reads format {FORMAT})")
    return ckpt


# what may differ between a checkpoint's config and the config that resumes it: where and how
# a run is kept and shown, and what its machine picks, never what it trains
RESUMABLE_ACROSS = ("name", "tracking.", "train.out_dir", "train.device", "train.threads", "train.precision",
                    "data.corpus", "train.sample_length", "train.eval_")


def unusable(path: Path, cfg: Config, vocab: str) -> str | None:
    """Why ``path`` cannot resume a run of ``cfg`` on a corpus of ``vocab`` (its characters;
    None: it can):
    missing, cut short or not ours, of another charlstm version, another corpus, another config."""
    if not Path(path).is_file():
        return "is missing"
    try:
        ckpt = load(path)
    except CheckpointError as e:
        return "is " + str(e).removeprefix(f"checkpoint {path}: ")
    if ckpt.get("vocab") != vocab:
        return "was trained on another corpus (another vocab)"
    try:
        saved = flatten(from_dict(ckpt["config"]))
    except Exception as e:  # (a config this version cannot read)
        return f"holds a config this charlstm cannot read ({first_line(e)})"
    ours = flatten(cfg)
    differ = [k for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)
              and ours.get(k) != "auto"  # (a checkpoint holds what "auto" resolved to)
              and not k.startswith(RESUMABLE_ACROSS)]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)} vs {ours.get(k)}" for k in differ[:3])
        return f"is of another config ({shown}{', ...' if len(differ) > 3 else ''})"
    return None


def model_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[CharacterLSTM, Vocab, Config]:
    """Rebuild the model, vocab and config a checkpoint was saved with."""
    cfg = from_dict(ckpt["config"])
    vocab = Vocab(ckpt["vocab"])
    model = build_model(cfg.model, len(vocab))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its own config: {first_line(e)}") from None
    return model.to(device), vocab, cfg


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CharacterLSTM, Vocab, Config]:
    """The model, vocab and config of a checkpoint file or run directory."""
    return model_from_checkpoint(load(path, map_location=device), device)


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """``OUT_DIR/NAME/<timestamp>``, created here, so two runs started in the same second
    (another process, say) never share one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / name
    base.mkdir(parents=True, exist_ok=True)
    path, n = base / stamp, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = base / f"{stamp}-{n}"


def latest_run_dir(out_dir: str | Path, name: str) -> Path:
    """The newest run directory of an experiment that holds a ``last.pt``."""
    base = Path(out_dir) / name
    runs = sorted(p.parent for p in base.glob(f"*/{names.LAST_PT}"))
    if not runs:
        raise CheckpointError(f"nothing to resume: no {base}/*/{names.LAST_PT}")
    return runs[-1]

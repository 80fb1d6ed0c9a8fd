"""Text generation: feed the prime once, then one step per character with the state carried."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from charlstm.data import Vocab
from charlstm.errors import CharlstmError
from charlstm.model import CharacterLSTM

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@torch.inference_mode()
def generate(
    model: CharacterLSTM,
    vocab: Vocab,
    prime: str = "\n",
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    num_samples: int = 1,
    seed: int | None = None,
) -> list[str]:
    """``num_samples`` continuations of ``prime`` (each returned with the prime in front).

    Characters of the prime outside the vocab are an error naming them: silently mapping them
    to the unknown id would condition the model on something it never saw.
    The unknown id itself is never sampled. ``temperature=0`` samples greedily.
    """
    if not prime:
        raise CharlstmError("the prime is empty: give at least one character (e.g. a newline)")
    unknown = vocab.unknown_chars(prime)
    if unknown:
        raise CharlstmError(f"the prime has characters outside the model's vocab: {unknown}")
    if length < 0 or num_samples < 1 or temperature < 0 or (top_k is not None and top_k < 1):
        raise CharlstmError("length >= 0, num_samples >= 1, temperature >= 0 and top_k >= 1, please")
    was_training = model.training
    model.eval()
    device = model.fc.weight.device
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()  # fresh entropy for this generator only; the global RNG is left alone
    else:
        gen.manual_seed(seed)

    ids = torch.as_tensor(vocab.encode(prime), device=device)
    prefix = ids.expand(num_samples, -1)  # [N, P]
    state = model.init_state(num_samples)
    if prefix.size(1) > 1:  # read the prime once; its last character starts the loop
        _, state = model(prefix[:, :-1], state)
    x = prefix[:, -1:]  # [N, 1]
    out = torch.empty(num_samples, length, dtype=torch.long, device=device)  # [N, length]
    for i in range(length):
        logits, state = model(x, state)  # [N, V]
        logits[:, vocab.unknown_id] = -float("inf")
        if temperature == 0:
            x = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [N, 1]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            probs = torch.softmax(logits.float(), dim=-1)
            x = torch.multinomial(probs, 1, generator=gen)  # [N, 1]
        out[:, i] = x[:, 0]
    model.train(was_training)
    rows = out.cpu().numpy()
    return [prime + vocab.decode(row) for row in rows]


def load_model(source: str, device: str | torch.device = "cpu", tracking_uri: str | None = None):
    """``source``: a checkpoint file or run directory, an MLflow run id, or a ``models:/`` URI.
    Returns (model, vocab, config)."""
    from charlstm import tracking
    from charlstm.train import load_checkpoint, model_from_checkpoint

    if source.startswith("models:/"):
        path = tracking.download_registered_checkpoint(source, tracking_uri)
    elif Path(source).exists():
        path = Path(source)
    elif _RUN_ID.match(source):
        path = tracking.download_checkpoint(source, tracking_uri)
    else:
        raise CharlstmError(
            f"{source}: not a checkpoint file, run directory, MLflow run id or models:/ URI"
        )
    return model_from_checkpoint(load_checkpoint(path, map_location=device), device)

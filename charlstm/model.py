"""The character-level LSTM of the seed notebook: Embedding -> LSTM -> Linear.

Shapes: B = batch size, T = sequence length, E = embedding_dim, H = hidden_size,
V = vocab size, L = num_layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from charlstm import names
from charlstm.config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [L, B, H]


class CharacterLSTM(nn.Module):
    """Predicts the next character id from the ids so far, carrying (h, c) between calls."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = names.SEED_EMBEDDING_DIM,
        hidden_size: int = names.SEED_HIDDEN_SIZE,
        num_layers: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        # nn.LSTM's own dropout acts only between stacked layers, so it is off for one layer
        self.lstm = nn.LSTM(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        # ... and this one regularises what the top layer hands to the classifier
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, states: State) -> tuple[torch.Tensor, State]:
        embedded = self.embedding(x)  # [B, T] -> [B, T, E]
        out, states = self.lstm(embedded, states)  # [B, T, E] -> [B, T, H]
        logits = self.fc(self.drop(out))  # [B, T, H] -> [B, T, V]
        # CrossEntropyLoss wants [N, C]: flatten batch and time
        return logits.reshape(-1, logits.size(-1)), states  # [B*T, V]

    def init_state(self, batch_size: int) -> State:
        """Zero (h, c), each [L, B, H], on the model's device and dtype."""
        w = self.fc.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        return (w.new_zeros(shape), w.new_zeros(shape))

    def param_counts(self) -> dict[str, int]:
        """Parameters per layer and in total."""
        counts = {
            name: sum(p.numel() for p in module.parameters())
            for name, module in (("embedding", self.embedding), ("lstm", self.lstm), ("fc", self.fc))
        }
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def build_model(m: ModelConfig, vocab_size: int) -> CharacterLSTM:
    """The model a config section describes."""
    return CharacterLSTM(vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.dropout)


def detach(states: State) -> State:
    """Cut the graph between segments (truncated BPTT) while keeping the values."""
    return (states[0].detach(), states[1].detach())


def count_params(
    vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0
) -> dict[str, int]:
    """Parameter counts of a model without allocating it (built on the meta device)."""
    with torch.device("meta"):
        model = CharacterLSTM(vocab_size, embedding_dim, hidden_size, num_layers, dropout)
    return model.param_counts()


def flops_per_char(vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int = 1) -> int:
    """Training FLOP per character (forward + backward = 3 x forward; 2 FLOP per MAC)."""
    e, h, v = embedding_dim, hidden_size, vocab_size
    lstm = 4 * h * (e + h) + (num_layers - 1) * 4 * h * (h + h)
    return 3 * 2 * (lstm + h * v)


def train_memory_bytes(
    vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int, batch_size: int,
    seq_length: int,
) -> dict[str, int]:
    """A lower bound on what one training step holds in memory (float32), by part.

    state: weights, gradients and Adam's two moments (16 bytes a parameter); activations:
    what autograd keeps per character of a batch (the embedding, about 8H per LSTM layer for
    gates and cell states, and 3V for logits, their log-softmax and their gradient).
    """
    n_params = count_params(vocab_size, embedding_dim, hidden_size, num_layers)["total"]
    per_char = embedding_dim + 8 * hidden_size * num_layers + 3 * vocab_size
    return {"state": 16 * n_params, "activations": 4 * batch_size * seq_length * per_char}

"""Text generation: feed the prime once, then one step per character with the state carried."""

from __future__ import annotations

import torch

from charlstm import names
from charlstm.data import Vocab
from charlstm.errors import CharlstmError
from charlstm.model import CharacterLSTM

NOISE_CHUNK = 256  # steps whose sampling noise is drawn at once


@torch.inference_mode()
def generate(
    model: CharacterLSTM,
    vocab: Vocab,
    prime: str = names.GEN_PRIME,
    length: int = names.GEN_LENGTH,
    temperature: float = names.GEN_TEMPERATURE,
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
    if prefix.size(1) > 1:  # read the prime once, as a batch; its last character starts the loop
        _, state = model(prefix[:, :-1], state)
    step = Stepper(model, temperature, vocab.unknown_id)
    h, c = list(state[0].unbind(0)), list(state[1].unbind(0))  # L x [N, H]
    x = prefix[:, -1]  # [N]
    out = torch.empty(length, num_samples, dtype=torch.long, device=device)  # [length, N]
    for start in range(0, length, NOISE_CHUNK):
        n = min(NOISE_CHUNK, length - start)
        # Gumbel-max: argmax(logits/T + Gumbel noise) is a draw from softmax(logits/T); the noise
        # for a chunk of steps is drawn at once, so a step is the LSTM, one add and one argmax
        noise = None
        if temperature > 0:
            u = torch.rand(n, num_samples, len(vocab), generator=gen, device=device)
            noise = -torch.log(-torch.log(u.clamp_(min=1e-20)))  # [n, N, V]
        for i in range(n):
            logits = step(x, h, c)  # [N, V], already divided by T, the unknown id at -inf
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [N, 1]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            x = (logits if noise is None else logits + noise[i]).argmax(dim=-1)  # [N]
            out[start + i] = x
    model.train(was_training)
    rows = out.T.cpu().numpy()
    return [prime + vocab.decode(row) for row in rows]


class Stepper:
    """The model's LSTM advanced one character at a time, straight from its weights.

    Same math as ``nn.LSTM`` (gates i, f, g, o), without its per-call set-up, which is most of
    a one-character step (docs/training.md: Sampling). The embedding
    and the first layer's input weights fold into one [V, 4H] table, and 1/temperature and the
    unknown id's -inf fold into the output layer, so a step is one row lookup and one matmul
    per layer plus the output matmul."""

    def __init__(self, model: CharacterLSTM, temperature: float, unknown_id: int):
        lstm, H = model.lstm, model.hidden_size
        scale = 1.0 / temperature if temperature > 0 else 1.0
        self.layers = []
        with torch.no_grad():
            for k in range(model.num_layers):
                w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")
                bias = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")  # [4H]
                if k == 0:  # embedding -> input gates, for every character at once: [V, 4H]
                    w_in = torch.addmm(bias, model.embedding.weight, w_ih.T)
                    bias = None
                else:
                    w_in = w_ih.T.contiguous()  # [H, 4H]
                self.layers.append((w_in, w_hh.T.contiguous(), bias))  # [H, 4H]
            self.fc_w = (model.fc.weight.T * scale).contiguous()  # [H, V]
            self.fc_b = model.fc.bias * scale  # [V]
            self.fc_b[unknown_id] = -float("inf")  # never sampled
        self.H = H

    def __call__(self, x: torch.Tensor, h: list[torch.Tensor], c: list[torch.Tensor]) -> torch.Tensor:
        """Advance (h, c) in place (lists of [N, H] per layer) on characters ``x`` [N]; the
        next character's logits [N, V]."""
        H, inp = self.H, None
        for k, (w_in, w_hh, bias) in enumerate(self.layers):
            pre = w_in.index_select(0, x) if k == 0 else torch.addmm(bias, inp, w_in)  # [N, 4H]
            gates = torch.addmm(pre, h[k], w_hh)  # [N, 4H]
            g = gates[:, 2 * H : 3 * H].tanh()
            s = gates.sigmoid()  # i, f, o (the sigmoid of g is computed and unused: one op, not three)
            c[k] = torch.addcmul(s[:, H : 2 * H] * c[k], s[:, :H], g)
            h[k] = inp = s[:, 3 * H :] * c[k].tanh()
        return torch.addmm(self.fc_b, inp, self.fc_w)

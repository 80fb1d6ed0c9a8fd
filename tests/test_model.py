"""The seed notebook's CharacterLSTM: structure, shapes, parameter counts, state and FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from charlstm.model import CharacterLSTM, count_params, detach, flops_per_char


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """A fixed seed, and one intra-op thread: tiny models are fastest without a thread pool."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_print_model_shows_the_layers():
    text = str(CharacterLSTM(60))
    assert "Embedding(60, 48)" in text
    assert "LSTM(48, 96" in text
    assert "Linear(in_features=96, out_features=60" in text


def test_seed_batch_shapes():
    V = 60
    model = CharacterLSTM(V)
    x = torch.randint(0, V, (36, 48))
    logits, (h, c) = model(x, model.init_state(36))
    assert logits.shape == (36 * 48, V) == (1728, V)
    assert h.shape == (1, 36, 96)
    assert c.shape == (1, 36, 96)


def test_logits_are_batch_major():
    """Row b*T + t of the flat logits is batch b, time t (what CrossEntropyLoss pairs with y)."""
    model = CharacterLSTM(10, 4, 8).eval()
    x = torch.randint(0, 10, (3, 5))
    logits, _ = model(x, model.init_state(3))
    row1, _ = model(x[1:2], model.init_state(1))
    assert torch.allclose(logits.view(3, 5, 10)[1], row1, atol=1e-6)


def test_parameter_count_at_defaults():
    model = CharacterLSTM(60)
    assert sum(p.numel() for p in model.parameters()) == 64_764
    counts = model.param_counts()
    assert counts["total"] == 64_764
    assert counts["embedding"] == 60 * 48
    assert counts["lstm"] == 4 * 96 * (48 + 96) + 2 * 4 * 96
    assert counts["fc"] == 96 * 60 + 60


@pytest.mark.parametrize("layers", [1, 2])
def test_param_counts_sum_to_total(layers):
    counts = CharacterLSTM(30, 8, 16, num_layers=layers).param_counts()
    assert set(counts) == {"embedding", "lstm", "fc", "total"}
    assert counts["embedding"] + counts["lstm"] + counts["fc"] == counts["total"]


@pytest.fixture(scope="module")
def meta_warm():
    """torch imports torch._dynamo (~1 s) the first time a module is initialised on the meta
    device; pay that once here rather than inside the first parametrized case."""
    with torch.device("meta"):
        nn.Embedding(2, 2)


@pytest.mark.usefixtures("meta_warm")
@pytest.mark.parametrize(
    "args", [(60, 48, 96), (66, 8, 16, 2, 0.1), (100, 64, 512, 1, 0.1), (5, 3, 7, 3)]
)
def test_count_params_on_meta_equals_the_real_model(args):
    assert count_params(*args) == CharacterLSTM(*args).param_counts()


def test_init_state_zeros_on_model_device_and_dtype():
    model = CharacterLSTM(20, 4, 8, num_layers=2)
    h, c = model.init_state(5)
    for t in (h, c):
        assert t.shape == (2, 5, 8)
        assert t.dtype == torch.float32
        assert t.device == model.fc.weight.device
        assert not t.any()
    model = model.to(torch.float64)
    h, c = model.init_state(3)
    assert h.dtype == c.dtype == torch.float64
    assert h.shape == (2, 3, 8)
    model(torch.zeros(3, 4, dtype=torch.long), (h, c))  # usable as is


def test_zero_state_is_the_default_lstm_state():
    model = CharacterLSTM(20, 4, 8)
    x = torch.randint(0, 20, (2, 6))
    logits, _ = model(x, model.init_state(2))
    out, _ = model.lstm(model.embedding(x))  # nn.LSTM's own default: zeros
    assert torch.allclose(logits, model.fc(out).reshape(-1, 20))


def test_two_layers_with_dropout():
    model = CharacterLSTM(20, 8, 16, num_layers=2, dropout=0.5)
    assert model.lstm.num_layers == 2
    assert model.lstm.dropout == 0.5
    assert isinstance(model.drop, nn.Dropout)
    x = torch.randint(0, 20, (4, 10))
    logits, (h, c) = model(x, model.init_state(4))
    assert logits.shape == (40, 20)
    assert h.shape == c.shape == (2, 4, 16)
    logits.sum().backward()
    assert model.embedding.weight.grad is not None
    # dropout is active in training and off in eval
    a, _ = model(x, model.init_state(4))
    b, _ = model(x, model.init_state(4))
    assert not torch.equal(a, b)
    model.eval()
    a, _ = model(x, model.init_state(4))
    b, _ = model(x, model.init_state(4))
    assert torch.equal(a, b)


def test_one_layer_dropout_only_before_the_classifier():
    model = CharacterLSTM(20, 8, 16, num_layers=1, dropout=0.3)
    assert model.lstm.dropout == 0.0
    assert isinstance(model.drop, nn.Dropout)
    assert model.drop.p == 0.3
    assert isinstance(CharacterLSTM(20, 8, 16).drop, nn.Identity)


def test_state_carries_between_calls():
    model = CharacterLSTM(20, 4, 8).eval()
    x = torch.randint(0, 20, (2, 10))
    full, _ = model(x, model.init_state(2))
    first, state = model(x[:, :6], model.init_state(2))
    second, _ = model(x[:, 6:], state)
    split = torch.cat([first.view(2, 6, 20), second.view(2, 4, 20)], dim=1).reshape(-1, 20)
    assert torch.allclose(full, split, atol=1e-6)


def test_detach_cuts_the_graph_but_keeps_values():
    model = CharacterLSTM(20, 4, 8)
    _, state = model(torch.randint(0, 20, (2, 5)), model.init_state(2))
    assert state[0].grad_fn is not None and state[1].grad_fn is not None
    h, c = detach(state)
    for new, old in zip((h, c), state, strict=True):
        assert new.grad_fn is None
        assert not new.requires_grad
        assert torch.equal(new, old)
    # a loss on the next segment reaches the parameters only through that segment
    logits, _ = model(torch.randint(0, 20, (2, 5)), (h, c))
    logits.sum().backward()
    assert h.grad is None


def test_flops_per_char():
    assert flops_per_char(66, 48, 96) == 3 * 2 * (4 * 96 * (48 + 96) + 96 * 66)
    assert flops_per_char(66, 48, 96, num_layers=2) == 3 * 2 * (
        4 * 96 * (48 + 96) + 4 * 96 * (96 + 96) + 96 * 66
    )

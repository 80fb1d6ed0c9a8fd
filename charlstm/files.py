"""Writing a file whole or not at all: a crash, a signal or a full disk mid-write leaves the
previous file intact and no temporary file behind (the data is fsync'ed before the rename)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from charlstm.errors import StorageError, first_line, human_bytes


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it
    over ``path``. A failed write (a full disk, say) is a one-line ``StorageError``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            free = "?"
            with suppress(OSError):
                free = human_bytes(shutil.disk_usage(path.parent).free)
            raise StorageError(
                f"cannot write {path}: {(e.strerror or first_line(e)).lower()} ({free} free there)"
            ) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))

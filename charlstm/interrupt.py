"""Ctrl-C and SIGTERM as a request to pause, acted on at a safe point.

A handler that raised ``KeyboardInterrupt`` wherever the main thread happened to be (inside
SQLAlchemy, ``torch.save``, an import) could tear what it interrupted. So the first signal only
records the request; long work polls ``requested()`` at its safe points (the trainer at every
step boundary, a sweep between trials) and raises ``Interrupted`` there, after saving what it
has. A second signal raises at once, for a user who will not wait.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: str | None = None  # the name of the first signal received, e.g. "SIGINT"


class Interrupted(KeyboardInterrupt):
    """A run stopped on request at a safe point; its checkpoint (if any) was saved."""

    def __init__(self, signal_name: str, where: str = ""):
        super().__init__(f"{signal_name}{f' {where}' if where else ''}")
        self.signal_name = signal_name
        self.where = where
        self.checkpoint = None  # the checkpoint saved on the way out, if any (a Path)


def _on_signal(signum, frame) -> None:
    global _requested
    if _requested is not None:  # the second signal: leave now
        raise KeyboardInterrupt
    _requested = signal.Signals(signum).name


def signal_name(e: KeyboardInterrupt) -> str:
    """The signal behind an interruption: SIGINT / SIGTERM, or Ctrl-C for a plain one."""
    return e.signal_name if isinstance(e, Interrupted) else "Ctrl-C"


def _raise_now(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def handled(defer: bool = True):
    """While inside, SIGINT and SIGTERM set the request instead of raising (main thread only),
    or, with ``defer=False`` (work with no safe point to stop at), both raise at once. On
    leaving, the previous handlers are back and the request is forgotten."""
    previous = {sig: signal.signal(sig, _on_signal if defer else _raise_now) for sig in SIGNALS}
    # a process started with these signals blocked (a sweep's worker: see ``blocked``) gets
    # any that came while it was starting now, through the handlers above
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reset()


@contextmanager
def blocked():
    """Hold SIGINT and SIGTERM back while inside: a child process started here inherits the
    block, so a stop sent before it has installed its handlers waits for them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def requested() -> str | None:
    """The signal that asked this process to stop, or None."""
    return _requested


def request(name: str = "SIGTERM") -> None:
    """Ask this process to stop, as a signal would (for callers that are not signals)."""
    global _requested
    _requested = _requested or name


def check(where: str = "") -> None:
    """Raise ``Interrupted`` if a stop was requested."""
    if _requested is not None:
        raise Interrupted(_requested, where)


def reset() -> None:
    """Forget a request (a process that handled it and goes on, or a test)."""
    global _requested
    _requested = None

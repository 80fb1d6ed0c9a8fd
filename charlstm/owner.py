"""Which process owns a run or a trial, and whether that process still lives.

An owner is ``host:pid:start``, start being the process's creation time in whole seconds: it
tells a live owner from a new process that got the same pid after the owner died. Only owners
on this host can be judged; one on another host counts as alive (heartbeats judge those).
"""

from __future__ import annotations

import functools
import os
import socket

import psutil


def _started(pid: int) -> int:
    return int(psutil.Process(pid).create_time())


@functools.cache
def _this_process(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_started(pid)}"


def this_process() -> str:
    """This process as an owner (cached per pid: a forked child gets its own)."""
    return _this_process(os.getpid())


def parse(owner: str) -> tuple[str, int, int | None]:
    """``host:pid[:start]`` -> (host, pid, start or None); ('', 0, None) when unreadable."""
    host, _, rest = (owner or "").partition(":")
    pid, _, start = rest.partition(":")
    if not pid.isdigit():
        return "", 0, None
    return host, int(pid), int(start) if start.isdigit() else None


def pid_of(owner: str) -> int:
    return parse(owner)[1]


def on_this_host(owner: str) -> bool:
    return parse(owner)[0] == socket.gethostname()


def alive(owner: str) -> bool:
    """False only when the owner is certainly gone: of this host, and no process has its pid
    and start time any more."""
    host, pid, start = parse(owner)
    if host != socket.gethostname() or not pid:
        return True
    try:
        started = _started(pid)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists but cannot be inspected (another user's): assume it is ours
        return True
    return start is None or abs(started - start) <= 1

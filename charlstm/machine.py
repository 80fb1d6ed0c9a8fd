"""What a compute second is worth here: the CPU (or GPU), the threads a trial gets, torch, the
precision ``auto`` picks, and the measured GEMM peak. A study records it once, since a second
of compute differs several-fold between machines and FLOP is the portable axis."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import psutil
import torch

from charlstm import names
from charlstm.device import resolve_device, resolve_precision


def gemm_peak(n: int, seconds: float, dtype=torch.float32) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` with torch's current threads, over ``seconds``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or reps < 3:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start)


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(threads: int, seconds: float = 0.3) -> dict:
    """The machine a study's trials run on, with the GEMM peak at ``threads`` threads (float32,
    and the precision ``auto`` picks)."""
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    if device.type == "cuda":
        return {"device": torch.cuda.get_device_name(device), "threads": threads, "torch": torch.__version__,
                "precision": precision, "gemm_gflops": None}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peaks = {"float32": gemm_peak(1024, seconds) / 1e9}
        if precision == "bfloat16":
            peaks["bfloat16"] = gemm_peak(1024, seconds, torch.bfloat16) / 1e9
    finally:
        torch.set_num_threads(before)
    return {"device": cpu_name(), "capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
            "torch": torch.__version__, "precision": precision, "gemm_gflops": peaks}


def machine_line(m: dict | None) -> str:
    """``AMD EPYC (AVX512), 1 thread per trial, bfloat16, GEMM peak 60 GFLOP/s float32, ...``"""
    if not m:
        return "machine not recorded"
    peaks = ", ".join(f"{v:,.0f} {k}" for k, v in (m.get("gemm_gflops") or {}).items())
    cap = f" ({m['capability']})" if m.get("capability") else ""
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''} per trial"
    return (f"{m['device']}{cap}, {threads}, torch {m['torch']}, {m['precision']}"
            + (f", GEMM peak {peaks} GFLOP/s" if peaks else ""))


class ProcessLoad:
    """What this process gets of the machine between two ``sample()`` calls: its CPU use (100 =
    one core busy), its resident memory, the machine's CPU use (100 = every core busy) and torch's
    threads. Not MLflow's system metrics: those are the machine's alone (no process's share) and
    need a sampling thread of their own; this is a few system calls, made when a run writes."""

    def __init__(self):
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # (the first call starts the interval)
        psutil.cpu_percent(None)

    def sample(self) -> dict[str, float]:
        m = names.MACHINE_PREFIX
        return {f"{m}process_cpu_percent": self.process.cpu_percent(None),
                f"{m}process_rss_mb": self.process.memory_info().rss / 2**20,
                f"{m}cpu_percent": psutil.cpu_percent(None),
                f"{m}threads": float(torch.get_num_threads())}


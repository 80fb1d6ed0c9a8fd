"""The device and the precision a run trains on: CUDA where there is one (``device: auto``), and
bfloat16 autocast where the hardware computes it natively and torch's LSTM runs in it
(``precision: auto``), else float32 (docs/training.md: Precision)."""

from __future__ import annotations

import functools

import torch

from charlstm.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bfloat16`` where the hardware has native bfloat16 arithmetic (CPUs with
    AVX512-BF16 or AMX, CUDA GPUs that support it) and torch's LSTM runs in it, else
    ``float32`` (docs/training.md: Precision). An explicit ``bfloat16`` that cannot run is a config error."""
    if name == "bfloat16" and not bfloat16_runs(device):
        raise ConfigError(f"train.precision=bfloat16: torch's LSTM cannot run in bfloat16 on this {device.type} "
                          "(oneDNN's bfloat16 LSTM needs AVX-512); use float32 or auto")
    if name != "auto":
        return name
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        # torch has no public probe for the CPU's bfloat16 units; these private ones are asked
        # here only, by name, and count as absent if a release drops them
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = any(getattr(torch.cpu, p, lambda: False)() for p in probes)
    else:
        native = False
    return "bfloat16" if native and bfloat16_runs(device) else "float32"


@functools.cache
def bfloat16_runs(device: torch.device) -> bool:
    """Whether a tiny LSTM trains a step under bfloat16 autocast here: on CPUs without AVX-512
    oneDNN has no bfloat16 LSTM and torch raises instead of falling back."""
    lstm = torch.nn.LSTM(4, 4, batch_first=True).to(device)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out, _ = lstm(torch.zeros(1, 2, 4, device=device))  # [1, 2, 4]
        out.float().sum().backward()
        return True
    except RuntimeError:
        return False

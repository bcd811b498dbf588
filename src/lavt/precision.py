"""Autocast: the one place that turns a precision name into a context for the forward pass.

Names: `fp32` (no autocast), `bf16`, `fp16` (CUDA; training pairs it with a gradient scaler)
and `auto`: bf16 where the hardware computes it natively (a CPU with AVX512-BF16 or AMX, a
CUDA device that supports bf16), else fp32. On a CPU without native bf16, bf16 autocast is
emulated and slower than fp32, which is why `auto` does not pick it there.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic on this CPU (AVX512-BF16 or AMX): only then is bf16
    autocast a speed-up. Read once: the answer does not change while the process runs."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve(precision: str, device: torch.device | str = "cpu") -> str:
    """`auto` -> `bf16` or `fp32` for `device` (see module docstring); other names unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The autocast context of `precision` on `device`'s type; fp32 (or `auto` resolving to
    it) is a no-op context."""
    name = resolve(precision, device)
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[name])

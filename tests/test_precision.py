"""lavt.precision: one autocast helper for training, evaluation, prediction and the demo."""
from __future__ import annotations

import pytest
import torch

import lavt.precision as precision
from lavt.precision import autocast, resolve


def _inside(name: str) -> tuple[bool, torch.dtype]:
    with autocast(name, "cpu"):
        return torch.is_autocast_enabled("cpu"), (torch.ones(2, 2) @ torch.ones(2, 2)).dtype


def test_named_precisions() -> None:
    assert _inside("fp32") == (False, torch.float32)
    assert _inside("bf16") == (True, torch.bfloat16)
    assert not torch.is_autocast_enabled("cpu")  # left again on exit
    with autocast("fp16", torch.device("cpu")):
        assert torch.get_autocast_dtype("cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        autocast("fp8")


def test_auto_takes_bf16_only_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert resolve("auto", "cpu") == "bf16" and _inside("auto") == (True, torch.bfloat16)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert resolve("auto", "cpu") == "fp32" and _inside("auto") == (False, torch.float32)
    assert resolve("fp16", "cpu") == "fp16"  # named precisions are kept as they are


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    assert precision.cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)

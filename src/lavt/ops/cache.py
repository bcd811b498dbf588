"""Inference caches: tensors derived from parameters, kept between forwards.

In eval mode without autograd (`torch.inference_mode()` / `torch.no_grad()`), a few things
the forward would otherwise rebuild every call are cached on the module that owns them:

- the low-precision copy of a weight under autocast (autocast casts every weight on every
  call; for LAVT that is ~1 GB of memory traffic per forward): `Linear`, `linear`;
- a convolution with its eval-mode BatchNorm folded in (the decoder): `folded_conv_bn`;
- the window-attention mask, relative position bias plus shift mask (`shifted_windows.py`).

An entry is keyed by the storage address and version counter of every parameter or buffer
it was made from, so an optimiser step, `load_state_dict`, `.to()` or any in-place update
rebuilds it. Nothing is cached in train mode or while autograd records, and `LAVT.train()`
drops every cache (`clear_caches`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lavt.ops import switch

CACHE_ATTR = "_inference_cache"


def cache_allowed(module: nn.Module) -> bool:
    """True in eval mode with autograd off: derived tensors may be reused between calls."""
    return not module.training and not torch.is_grad_enabled()


def _stamp(tensors: tuple[torch.Tensor | None, ...], extra: Any) -> tuple | None:
    try:
        return (extra,) + tuple(
            None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors
        )
    except RuntimeError:  # inference tensors have no version counter: do not cache
        return None


def cached(module: nn.Module, name: str, sources: tuple[torch.Tensor | None, ...], build: Callable[[], Any], extra: Any = None) -> Any:
    """`build()`, remembered on `module` under `name` until a tensor in `sources` changes
    (storage or version counter) or `extra` (e.g. a dtype) differs."""
    stamp = _stamp(sources, extra)
    if stamp is None:
        return build()
    store = module.__dict__.setdefault(CACHE_ATTR, {})
    hit = store.get(name)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = build()
    store[name] = (stamp, value)
    return value


def clear_caches(module: nn.Module) -> None:
    """Drop the inference caches of `module` and all its submodules."""
    for m in module.modules():
        m.__dict__.pop(CACHE_ATTR, None)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for `device_type`, or None when autocast is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def low_precision(x: torch.Tensor) -> bool:
    """Whether x is (or autocast will compute it in) bfloat16/float16."""
    dt = autocast_dtype(x.device.type) or x.dtype
    return dt in (torch.bfloat16, torch.float16)


def linear(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`; in eval mode under autocast without autograd, with the
    low-precision copies of `weight` and `bias` cached on `module` instead of cast on every
    call (the same values as autocast's own cast)."""
    dt = autocast_dtype(x.device.type)
    if dt is None or not cache_allowed(module) or weight.dtype == dt:
        return F.linear(x, weight, bias)
    w, b = cached(module, "weight", (weight, bias), lambda: (weight.to(dt), None if bias is None else bias.to(dt)), extra=dt)
    return F.linear(x.to(dt), w, b)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and keys); with the fast paths on, its inference under
    autocast reuses a cached low-precision weight (`linear`). Off, it is `nn.Linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if switch.fast_paths_enabled():
            return linear(self, x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def folded_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of `bn(conv(x))` as one convolution, for an eval-mode BatchNorm:
    w * g / sqrt(var + eps), b' = beta + (b - mean) * g / sqrt(var + eps) (computed in float64)."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        var = bn.running_var.double()
        scale = bn.weight.double() / torch.sqrt(var + bn.eps) if bn.weight is not None else 1.0 / torch.sqrt(var + bn.eps)
        shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        b0 = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
        w = (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype)
        b = (shift + (b0 - bn.running_mean.double()) * scale).to(dtype)
        if channels_last:
            w = w.contiguous(memory_format=torch.channels_last)
        return w, b

    sources = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return cached(conv, "folded_bn", sources, build, extra=(dtype, channels_last, bn.eps))

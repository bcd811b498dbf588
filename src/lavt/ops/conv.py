"""The decoder's convolutions on the fast path: which kernel and memory layout for which
dtype, device and mode, decided here once.

- Reduced precision (bf16/fp16, autocast or not) runs channels-last, where oneDNN's bf16
  convolutions are several times faster.
- Float32 on the CPU runs the wide 3x3 convolutions by Winograd (`winograd.py`: F(4x4, 3x3)
  on the large maps, F(2x2, 3x3) on the small; the gain is in BENCHMARKS.md), whose
  transforms work on channels-last maps; then the 1x1 classifier runs as a matmul over
  channels-last pixels (oneDNN's 1x1 backward is slow there). Otherwise channels-first.
- Eval mode without autograd: BatchNorm folded into the convolution (cached, `cache.py`),
  ReLU in place.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lavt.ops.cache import autocast_dtype, cache_allowed, folded_conv_bn, low_precision
from lavt.ops.winograd import conv3x3, conv3x3_applies, winograd_conv3x3


class DecoderPlan(NamedTuple):
    """How the decoder's convolutions run for one forward."""

    memory_format: torch.memory_format  # of the maps fed to the convolutions
    channels_last_weights: bool  # folded weights stored channels-last (reduced precision)
    winograd: bool  # the wide 3x3 convolutions by Winograd (float32 CPU)


def decoder_plan(x: torch.Tensor, weight: torch.Tensor) -> DecoderPlan:
    """The plan for a decoder whose finest input is `x` and whose widest 3x3 filter is `weight`."""
    cl = low_precision(x)
    wino = conv3x3_applies(x, weight)
    fmt = torch.channels_last if cl or wino else torch.contiguous_format
    return DecoderPlan(fmt, cl, wino)


def conv_bn_relu(owner: nn.Module, x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, plan: DecoderPlan) -> torch.Tensor:
    """`relu(bn(conv(x)))` for a 3x3, stride-1, padding-1 `conv`; `owner` (the decoder) holds
    the training flag that allows the folded-BatchNorm cache."""
    if cache_allowed(owner) and not bn.training:
        # Eval: BatchNorm folded into the convolution (cached), ReLU in place.
        dt = autocast_dtype(x.device.type) or x.dtype
        w, b = folded_conv_bn(conv, bn, dt, plan.channels_last_weights)
        if conv3x3_applies(x, w):
            return F.relu_(winograd_conv3x3(x, w).add_(b.view(1, -1, 1, 1)))
        return F.relu_(F.conv2d(x.to(dt), w, b, conv.stride, conv.padding))
    y = conv3x3(x, conv.weight) if conv.bias is None else conv(x)  # Winograd where it applies
    return F.relu(bn(y), inplace=True)  # BatchNorm's backward needs its input, not its output


def to_plan_format(x: torch.Tensor, plan: DecoderPlan) -> torch.Tensor:
    """x in the plan's memory format (no copy when it is already)."""
    return x.contiguous(memory_format=plan.memory_format)


def conv1x1(x: torch.Tensor, conv: nn.Conv2d, plan: DecoderPlan) -> torch.Tensor:
    """`conv(x)` for a 1x1 `conv`; a matmul over channels-last pixels on the Winograd plan."""
    if plan.winograd:
        w = conv.weight
        return F.linear(x.permute(0, 2, 3, 1), w.view(w.shape[0], -1), conv.bias).permute(0, 3, 1, 2)
    return conv(x)

"""The light mask decoder ("SimpleDecoding", paper section 3.4): top-down fusion of the four
stage features with two conv3x3-BN-ReLU per scale, then a 1x1 classifier at 1/4 resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavt.models.fast import autocast_dtype, cache_allowed, folded_conv_bn, low_precision
from lavt.models.winograd import conv3x3, winograd_applies, winograd_conv3x3


class SimpleDecoding(nn.Module):
    """Y4 -> up + cat F3 -> convs -> up + cat F2 -> convs -> up + cat F1 -> convs -> 1x1.

    Upsampling is bilinear with align_corners=True, and only when the coarser map is smaller,
    as in the official code. Module names follow the official keys (`conv1_4`, `bn1_4`, ...).
    """

    def __init__(self, dims: tuple[int, ...], hidden: int, num_classes: int = 2) -> None:
        super().__init__()
        c1, c2, c3, c4 = dims
        self.conv1_4 = nn.Conv2d(c4 + c3, hidden, 3, padding=1, bias=False)
        self.bn1_4 = nn.BatchNorm2d(hidden)
        self.conv2_4 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.bn2_4 = nn.BatchNorm2d(hidden)
        self.conv1_3 = nn.Conv2d(hidden + c2, hidden, 3, padding=1, bias=False)
        self.bn1_3 = nn.BatchNorm2d(hidden)
        self.conv2_3 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.bn2_3 = nn.BatchNorm2d(hidden)
        self.conv1_2 = nn.Conv2d(hidden + c1, hidden, 3, padding=1, bias=False)
        self.bn1_2 = nn.BatchNorm2d(hidden)
        self.conv2_2 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.bn2_2 = nn.BatchNorm2d(hidden)
        self.conv1_1 = nn.Conv2d(hidden, num_classes, 1)

    @staticmethod
    def _up_cat(x: torch.Tensor, skip: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
        if x.shape[-2] < skip.shape[-2] or x.shape[-1] < skip.shape[-1]:
            x = F.interpolate(x.contiguous(memory_format=fmt), size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([x.contiguous(memory_format=fmt), skip], dim=1)

    def _conv_bn_relu(self, x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, channels_last: bool) -> torch.Tensor:
        if cache_allowed(self) and not bn.training:
            # Eval: BatchNorm folded into the convolution (cached), ReLU in place.
            dt = autocast_dtype(x.device.type) or x.dtype
            w, b = folded_conv_bn(conv, bn, dt, channels_last)
            if winograd_applies(x, w):
                return F.relu_(winograd_conv3x3(x, w).add_(b.view(1, -1, 1, 1)))
            return F.relu_(F.conv2d(x.to(dt), w, b, conv.stride, conv.padding))
        y = conv3x3(x, conv.weight) if conv.bias is None else conv(x)  # Winograd where it applies
        return F.relu(bn(y), inplace=True)  # BatchNorm's backward needs its input, not its output

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: [F1, F2, F3, F4] as (B, C_i, H_i, W_i) -> logits (B, classes, H_1, W_1).

        Reduced precision (bf16/fp16, autocast or not) runs channels-last, where oneDNN's
        bf16 convolutions are several times faster. Float32 on the CPU runs the wide 3x3
        convolutions by Winograd (`winograd.py`: F(4x4, 3x3) on the large maps, F(2x2, 3x3) on
        the small; the decoder's forward + backward 1.27x faster than with F(2x2) everywhere, see
        BENCHMARKS.md), whose transforms work on channels-last maps; the rest runs channels-first.
        """
        f1, f2, f3, f4 = feats
        cl = low_precision(f1)
        wino = winograd_applies(f1, self.conv2_2.weight)
        fmt = torch.channels_last if cl or wino else torch.contiguous_format
        x = self._up_cat(f4, f3, fmt)
        x = self._conv_bn_relu(x, self.conv1_4, self.bn1_4, cl)
        x = self._conv_bn_relu(x, self.conv2_4, self.bn2_4, cl)
        x = self._up_cat(x, f2, fmt)
        x = self._conv_bn_relu(x, self.conv1_3, self.bn1_3, cl)
        x = self._conv_bn_relu(x, self.conv2_3, self.bn2_3, cl)
        x = self._up_cat(x, f1, fmt)
        x = self._conv_bn_relu(x, self.conv1_2, self.bn1_2, cl)
        x = self._conv_bn_relu(x, self.conv2_2, self.bn2_2, cl)
        if wino:  # the 1x1 classifier as a matmul over channels-last pixels (oneDNN's 1x1 backward is slow)
            w = self.conv1_1.weight
            return F.linear(x.permute(0, 2, 3, 1), w.view(w.shape[0], -1), self.conv1_1.bias).permute(0, 3, 1, 2)
        return self.conv1_1(x)

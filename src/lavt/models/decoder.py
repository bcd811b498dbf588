"""The light mask decoder ("SimpleDecoding", paper section 3.4): top-down fusion of the four
stage features with two conv3x3-BN-ReLU per scale, then a 1x1 classifier at 1/4 resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavt import ops


class SimpleDecoding(nn.Module):
    """Y4 -> up + cat F3 -> convs -> up + cat F2 -> convs -> up + cat F1 -> convs -> 1x1.

    Upsampling is bilinear with align_corners=True, and only when the coarser map is smaller,
    as in the official code. Module names follow the official keys (`conv1_4`, `bn1_4`, ...).
    With the fast paths on, the convolutions follow `lavt.ops.decoder_plan` (memory layout,
    Winograd, folded BatchNorm; see `lavt.ops.conv`).
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
    def _up_cat(x: torch.Tensor, skip: torch.Tensor, plan: ops.DecoderPlan | None) -> torch.Tensor:
        if x.shape[-2] < skip.shape[-2] or x.shape[-1] < skip.shape[-1]:
            if plan is not None:
                x = ops.to_plan_format(x, plan)
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        if plan is not None:
            x = ops.to_plan_format(x, plan)
        return torch.cat([x, skip], dim=1)

    def _conv_bn_relu(self, x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, plan: ops.DecoderPlan | None) -> torch.Tensor:
        if plan is not None:  # fast path: Winograd / folded BatchNorm (lavt.ops.conv)
            return ops.conv_bn_relu(self, x, conv, bn, plan)
        return F.relu(bn(conv(x)))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: [F1, F2, F3, F4] as (B, C_i, H_i, W_i) -> logits (B, classes, H_1, W_1)."""
        f1, f2, f3, f4 = feats
        plan = ops.decoder_plan(f1, self.conv2_2.weight) if ops.fast_paths_enabled() else None
        x = self._up_cat(f4, f3, plan)
        x = self._conv_bn_relu(x, self.conv1_4, self.bn1_4, plan)
        x = self._conv_bn_relu(x, self.conv2_4, self.bn2_4, plan)
        x = self._up_cat(x, f2, plan)
        x = self._conv_bn_relu(x, self.conv1_3, self.bn1_3, plan)
        x = self._conv_bn_relu(x, self.conv2_3, self.bn2_3, plan)
        x = self._up_cat(x, f1, plan)
        x = self._conv_bn_relu(x, self.conv1_2, self.bn1_2, plan)
        x = self._conv_bn_relu(x, self.conv2_2, self.bn2_2, plan)
        if plan is not None:  # fast path: the 1x1 classifier as a matmul on the Winograd plan
            return ops.conv1x1(x, self.conv1_1, plan)
        return self.conv1_1(x)

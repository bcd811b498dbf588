"""Segmentation losses: the official class-weighted cross-entropy, multi-class Dice, and both.

Each loss is a sum over the batch divided by a *normaliser* that depends on the targets
only (for cross-entropy the summed class weights of the target pixels, for Dice the number
of samples). With `normalizers=None` the normaliser is the micro-batch's own, which is the
official per-GPU `F.cross_entropy(..., weight=[0.9, 1.1])` mean. The trainer can instead pass
the normaliser of the whole optimiser step (all micro-batches on all processes), which makes
the gradient independent of how the total batch is split across GPUs and accumulation steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavt.errors import LAVTUserError

LOSSES = ("ce", "dice", "ce+dice")


def dice_loss_per_sample(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Multi-class soft Dice, 1 - mean over classes of (2|P*G| + s) / (|P| + |G| + s), one value
    per sample (B,). P are softmax probabilities, G the one-hot target."""
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1.0 - dice.mean(dim=1)


class SegmentationLoss(nn.Module):
    """`ce` (official: weights [0.9, 1.1] for background/foreground), `dice`, or
    `ce+dice` (= ce_factor * ce + dice_weight * dice; RMSIN's RRSIS-D recipe is 0.9 and 0.1).
    Logits (B,C,H,W), target int64 (B,H,W)."""

    def __init__(
        self, kind: str = "ce", ce_weight: tuple[float, ...] = (0.9, 1.1), dice_weight: float = 1.0, ce_factor: float = 1.0
    ) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise LAVTUserError(f"unknown loss {kind!r}; choose one of {LOSSES}")
        self.kind = kind
        self.dice_weight = float(dice_weight)
        self.ce_factor = float(ce_factor)
        self.register_buffer("ce_weight", torch.tensor(ce_weight, dtype=torch.float32), persistent=False)

    @property
    def uses_ce(self) -> bool:
        return self.kind in ("ce", "ce+dice")

    @property
    def uses_dice(self) -> bool:
        return self.kind in ("dice", "ce+dice")

    def normalizers(self, target: torch.Tensor) -> torch.Tensor:
        """[summed CE weight of the target pixels, number of samples] (float64), additive over
        micro-batches and processes."""
        w = self.ce_weight.to(target.device, torch.float64)
        ce_den = w[target.long()].sum() if self.uses_ce else torch.zeros((), dtype=torch.float64, device=target.device)
        return torch.stack([ce_den, torch.tensor(float(target.shape[0]), dtype=torch.float64, device=target.device)])

    def forward(self, logits: torch.Tensor, target: torch.Tensor, normalizers: torch.Tensor | None = None) -> torch.Tensor:
        if normalizers is None:
            normalizers = self.normalizers(target)
        logits = logits.float()
        total = logits.new_zeros(())
        if self.uses_ce:
            ce_sum = F.cross_entropy(logits, target, weight=self.ce_weight.to(logits.device), reduction="sum")
            total = total + self.ce_factor * ce_sum / normalizers[0].to(logits.dtype)
        if self.uses_dice:
            dice_sum = dice_loss_per_sample(logits, target).sum()
            total = total + self.dice_weight * dice_sum / normalizers[1].to(logits.dtype)
        return total

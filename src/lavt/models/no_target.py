"""The no-target decision of generalised referring segmentation (GRES / gRefCOCO).

An expression may name nothing in the image ("the green star" when there is none). Three
modes, chosen by `LAVTConfig.no_target`:

- `none`: classic referring segmentation, no decision (the official model, unchanged);
- `area`: no target when the predicted mask covers at most `no_target_threshold` of the
  image (no new weights; `lavt evaluate` can pick the threshold on a split);
- `head`: `NoTargetHead`, a small classifier on the top stage's multimodal features
  (average- and max-pooled) joined with the sentence feature (the masked mean of the word
  features) and the evidence of the predicted mask (its largest and mean foreground
  probability and its share of the image, read without gradient), trained with a
  class-weighted binary cross-entropy beside the mask loss, as ReLA's no-target branch
  (weights 0.9 targeted / 1.1 no-target, loss weight 0.1). The mask evidence is what the
  pooled top stage lacks: "the green star" reads like "the green circle", and whether such an
  object exists shows in the fine-scale mask, not in a 1/32-scale average.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_PROBABILITY = 0.5  # `head` says "no target" from this probability on
NO_TARGET_CLASS_WEIGHTS = (0.9, 1.1)  # targeted, no-target: ReLA's class weights


MASK_EVIDENCE = 3  # inputs the head takes from the predicted mask (see `mask_evidence`)


def mask_evidence(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) mask logits -> (B, 3): the largest foreground probability, and the logs of
    the mean foreground probability and of the foreground share of the argmax mask (logs:
    a present object covers a few percent of the image, an absent one a few per mille, a
    difference a linear layer only sees on that scale). Detached: the decision reads the
    mask, it does not train it."""
    logits = logits.detach().float()
    p = torch.softmax(logits, 1)[:, 1]
    share = (logits[:, 1] > logits[:, 0]).float().mean((1, 2))
    return torch.stack([p.amax((1, 2)), torch.log(p.mean((1, 2)) + 1e-4), torch.log(share + 1e-4)], dim=1)


class NoTargetHead(nn.Module):
    """(top-stage features (B, C, h, w), word features (B, N, T), word mask (B, N), mask logits
    (B, 2, H, W)) -> logit (B,) of "this expression names no object"."""

    def __init__(self, visual_dim: int, text_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * visual_dim + text_dim + MASK_EVIDENCE, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, top: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        top = top.float()
        pooled = torch.cat([top.mean((2, 3)), top.amax((2, 3))], dim=1)
        m = word_mask.to(words.dtype).unsqueeze(-1)
        sentence = (words * m).sum(1) / m.sum(1).clamp_min(1.0)
        x = torch.cat([pooled, sentence.float(), mask_evidence(logits)], dim=1)
        return self.fc2(F.relu(self.fc1(x))).squeeze(1)


def head_hidden(visual_dim: int) -> int:
    """The head's hidden width: a quarter of the top stage's, at least 16."""
    return max(16, visual_dim // 4)


def area_no_target(masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """(E, H, W) bool masks -> (E,) bool: the mask covers at most `threshold` of the image."""
    share = masks.flatten(1).float().mean(1)
    return share <= threshold


def decide(
    mode: str, threshold: float, masks: torch.Tensor, logit: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The decision per expression: (no_target (E,) bool, probability (E,) or None), None for
    `none`. `masks` (E, H, W) bool are the predicted masks, `logit` the head's (E,) output.
    `area` is a rule on the mask, so it has no probability."""
    if mode == "none":
        return None
    if mode == "area":
        return area_no_target(masks, threshold), None
    if logit is None:
        raise ValueError("no_target='head' needs the head's logit")
    p = torch.sigmoid(logit.float())
    return p >= HEAD_PROBABILITY, p


def no_target_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of class-weighted BCE, sum of the weights) over a batch: the weighted mean is
    their ratio (F.cross_entropy's `weight` mean over two classes), and both add up over
    micro-batches and processes."""
    y = labels.to(logits.device, torch.float32)
    w_t, w_n = NO_TARGET_CLASS_WEIGHTS
    weights = torch.where(y > 0.5, torch.full_like(y, w_n), torch.full_like(y, w_t))
    bce = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
    return (weights * bce).sum(), weights.sum()

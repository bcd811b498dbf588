"""Generalised referring segmentation in the engine: the no-target loss term of a training step
and the generalised scores of an evaluation.

Training (`NoTargetTerm`): with `no_target="head"` the step adds `weight` x the class-weighted
binary cross-entropy of the head (`lavt.models.no_target`), normalised like the mask loss:
by the summed class weights of the whole step (all micro-batches and processes) under
`loss_normalization='global'`, by the micro-batch's own otherwise. Samples without a label
(a classic dataset) count as targeted.

Evaluation (`GeneralizedScores`): per expression the no-target decision (the model's rule,
or one the evaluation asks for) and the generalised metrics under both protocols; the
classic metrics beside them cover the targeted expressions only. With the `area` rule the
threshold can be picked on the split: the one with the best gIoU (original protocol).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lavt.metrics import GeneralizedReferringMetrics
from lavt.models.no_target import NO_TARGET_CLASS_WEIGHTS, decide, no_target_loss_sums


def _labels(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    labels = batch.get("no_target")
    if labels is None:
        return torch.zeros(int(batch["image"].shape[0]), dtype=torch.bool, device=device)
    return torch.as_tensor(labels, device=device).bool()


class NoTargetTerm:
    """`weight` x the head's class-weighted BCE, normalised over the step (see module docstring)."""

    def __init__(self, weight: float) -> None:
        self.weight = float(weight)

    def normalizer(self, micro: Sequence[dict[str, Any]], device: torch.device) -> torch.Tensor:
        """(1,) float64: the summed class weights of every sample of these micro-batches.
        Counted on the host, where the step's micro-batches still are: one copy to `device`,
        no per-micro-batch round trip."""
        w_t, w_n = NO_TARGET_CLASS_WEIGHTS
        cpu = torch.device("cpu")
        total = sum(float(torch.where(_labels(b, cpu), w_n, w_t).sum()) for b in micro)
        return torch.tensor([total], dtype=torch.float64, device=device)

    def __call__(self, logit: torch.Tensor | None, batch: dict[str, Any], norm: torch.Tensor | None) -> torch.Tensor:
        if logit is None:
            raise ValueError("the model returned no no-target logit: build it with no_target='head'")
        total, weights = no_target_loss_sums(logit, _labels(batch, logit.device))
        den = weights if norm is None else norm.to(total.dtype)
        return self.weight * total / den


def group_decisions(mode: str, threshold: float, pred: torch.Tensor, logit: torch.Tensor | None) -> list[tuple[bool, float | None, float]]:
    """Per expression (no_target, probability or None, covered share of the square prediction)."""
    shares = pred.flatten(1).float().mean(1).tolist()
    decision = decide(mode, threshold, pred, logit)
    if decision is None:
        return [(False, None, s) for s in shares]
    flags, prob = decision
    probs = [None] * len(shares) if prob is None else prob.tolist()
    return list(zip(flags.tolist(), probs, shares))


class GeneralizedScores:
    """Generalised metrics of both protocols, and what picking an area threshold needs."""

    def __init__(self, mode: str, threshold: float, keep_for_picking: bool = False) -> None:
        self.mode, self.threshold = mode, float(threshold)
        self.official, self.original = GeneralizedReferringMetrics(), GeneralizedReferringMetrics()
        self.keep = keep_for_picking
        self.rows: list[tuple[int, int, int, int, float, bool]] = []  # I, U square; I, U original; share; gt

    def add(
        self, square: tuple[int, int], original: tuple[int, int], decision: tuple[bool, float | None, float], gt_no_target: bool
    ) -> dict:
        """Score one expression; returns its per-expression record fields."""
        pred_nt = bool(decision[0])
        g1 = self.official.add(*square, pred_no_target=pred_nt, gt_no_target=gt_no_target)
        g2 = self.original.add(*original, pred_no_target=pred_nt, gt_no_target=gt_no_target)
        if self.keep:
            self.rows.append((*square, *original, float(decision[2]), bool(gt_no_target)))
        return {"gt_no_target": bool(gt_no_target), "pred_no_target": pred_nt, "no_target_probability": decision[1],
                "gIoU": {"official": g1, "original": g2}}

    def all_reduce(self, device: Any) -> None:
        self.official.all_reduce(device)
        self.original.all_reduce(device)

    def compute(self) -> dict[str, Any]:
        return {"official": self.official.compute(), "original": self.original.compute()}


def pick_area_threshold(rows: Sequence[tuple[int, int, int, int, float, bool]]) -> tuple[float, dict[str, dict[str, float]]]:
    """The area threshold with the best original-protocol gIoU over `rows` (ties: the smallest)
    and the metrics it gives. Candidates: 0 and every predicted share below 1 on the split.

    gIoU(t) sums, per expression, 1 for a no-target one at or under t, its IoU for a targeted
    one above t, and 0 otherwise: one pass over the shares in order scores every candidate."""
    if not rows:
        raise ValueError("no expressions to pick a threshold on")
    share = np.array([r[4] for r in rows], dtype=np.float64)
    gt = np.array([r[5] for r in rows], dtype=bool)
    inter, union = np.array([r[2] for r in rows], dtype=np.float64), np.array([r[3] for r in rows], dtype=np.float64)
    iou = np.where(gt | (union == 0), 0.0, inter / np.maximum(union, 1.0))
    candidates = np.unique(np.concatenate([[0.0], share[share < 1.0]]))
    order = np.argsort(share, kind="stable")
    s_sorted = share[order]
    gain_under = np.concatenate([[0.0], np.cumsum(gt[order].astype(np.float64))])  # no-target at or under t
    iou_under = np.concatenate([[0.0], np.cumsum(iou[order])])  # targeted IoU lost at or under t
    k = np.searchsorted(s_sorted, candidates, side="right")
    scores = gain_under[k] + (iou.sum() - iou_under[k])
    t = float(candidates[int(np.argmax(scores))])
    official, original = GeneralizedReferringMetrics(), GeneralizedReferringMetrics()
    for i1, u1, i2, u2, sh, g in rows:
        official.add(i1, u1, pred_no_target=sh <= t, gt_no_target=g)
        original.add(i2, u2, pred_no_target=sh <= t, gt_no_target=g)
    return t, {"official": official.compute(), "original": original.compute()}

"""The referring-segmentation metrics of the official LAVT `test.py`.

For every (image, expression) pair: I = |pred AND gt|, U = |pred OR gt|, IoU = I / U, and
IoU = 0 when U = 0 (both masks empty). Over a split:

- oIoU (overall IoU) = sum I / sum U: dominated by large objects;
- mIoU (mean IoU) = mean of the per-expression IoU: every expression counts the same;
- P@t = share of expressions with IoU >= t, t in 0.5 ... 0.9 (`>=`, as test.py).

All three are reported in percent. The state is a handful of sums, so shards scored by
different processes combine exactly by adding them (`state`, `merge`, `all_reduce`).
`GeneralizedReferringMetrics` scores generalised referring segmentation (expressions that
name several objects or none: gRefCOCO) as the GRES evaluator does.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


def _as_bool(mask: Any) -> Any:
    """A boolean view of a mask: numpy stays numpy, torch stays torch (and on its device)."""
    if isinstance(mask, np.ndarray):
        return mask if mask.dtype == np.bool_ else mask != 0
    if isinstance(mask, torch.Tensor):
        return mask if mask.dtype == torch.bool else mask != 0
    return np.asarray(mask) != 0


def batch_intersection_union(preds: Any, gts: Any) -> tuple[list[int], list[int]]:
    """(I, U) lists of two (E,H,W) stacks of binary masks, counted on their device (numpy or
    torch) with one transfer of the counts."""
    p, g = _as_bool(preds), _as_bool(gts)
    if tuple(p.shape) != tuple(g.shape) or len(p.shape) != 3:
        raise ValueError(f"expected two (E,H,W) stacks of equal shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    if isinstance(p, np.ndarray) != isinstance(g, np.ndarray):
        p, g = _to_numpy(p), _to_numpy(g)
    inter = (p & g).reshape(p.shape[0], -1).sum(1)
    union = (p | g).reshape(p.shape[0], -1).sum(1)
    return inter.tolist(), union.tolist()


def intersection_union(pred: Any, gt: Any) -> tuple[int, int]:
    """(I, U) of two binary masks of the same shape; non-zero means foreground, as in
    test.py's `np.logical_and` / `np.logical_or`. Accepts numpy arrays or torch tensors."""
    p, g = _as_bool(pred), _as_bool(gt)
    if tuple(p.shape) != tuple(g.shape):
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from ground-truth shape {tuple(g.shape)}")
    if isinstance(p, np.ndarray) != isinstance(g, np.ndarray):
        p, g = np.asarray(_to_numpy(p)), np.asarray(_to_numpy(g))
    inter = (p & g).sum()
    union = (p | g).sum()
    return int(inter), int(union)


def _to_numpy(x: Any) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


class _SummedState:
    """Shard combining for accumulators whose `state()` is a flat list of sums: `merge` and
    `all_reduce` add the lists and `load_state` them back. Subclasses keep `thresholds`,
    `count` and the per-expression IoUs `_ious` (kept exact across a merge when both sides
    still have theirs)."""

    thresholds: tuple[float, ...]
    count: int
    _ious: list[float]

    def state(self) -> list[float]:
        raise NotImplementedError

    def load_state(self, state: list[float]) -> None:
        raise NotImplementedError

    def merge(self, other: Any) -> None:
        """Add another accumulator's expressions to this one."""
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge metrics with different thresholds")
        ious = self._ious + other._ious if len(self._ious) == self.count and len(other._ious) == other.count else []
        self.load_state([a + b for a, b in zip(self.state(), other.state())])
        self._ious = ious

    def all_reduce(self, device: Any = None) -> None:
        """Sum the state over all processes of the default torch.distributed group (no-op
        when not distributed). Every process ends with the totals."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(self.state(), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        self.load_state(t.tolist())


class ReferringMetrics(_SummedState):
    """Accumulates oIoU, mIoU and precision@t exactly as the official `test.py`.

    `update(pred, gt)` takes one expression's masks; `update_batch(preds, gts)` takes (E,H,W)
    stacks of one image's expressions and counts on their device (one transfer per batch).
    `compute()` returns `{"oIoU", "mIoU", "P@0.5", ..., "P@0.9"}` in percent.
    """

    def __init__(self, thresholds: tuple[float, ...] = THRESHOLDS) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        self.cum_i = 0
        self.cum_u = 0
        self.count = 0
        self.iou_sum = 0.0
        self.correct = [0] * len(self.thresholds)
        self._ious: list[float] = []  # kept for an exactly rounded mIoU in one process

    def __len__(self) -> int:
        return self.count

    def add(self, inter: int, union: int) -> float:
        """Record one expression from its intersection and union; returns its IoU."""
        inter, union = int(inter), int(union)
        if inter < 0 or union < inter:
            raise ValueError(f"impossible counts I={inter}, U={union}")
        iou = 0.0 if union == 0 else inter * 1.0 / union
        self.cum_i += inter
        self.cum_u += union
        self.count += 1
        self.iou_sum += iou
        self._ious.append(iou)
        for k, t in enumerate(self.thresholds):
            self.correct[k] += int(iou >= t)
        return iou

    def update(self, pred: Any, gt: Any) -> float:
        """Score one expression (binary masks, bool or 0/1, numpy or torch); returns its IoU."""
        return self.add(*intersection_union(pred, gt))

    def update_batch(self, preds: Any, gts: Any) -> list[float]:
        """Score a stack of expressions, (E,H,W) each; returns their IoUs in order."""
        return [self.add(i, u) for i, u in zip(*batch_intersection_union(preds, gts))]

    # --- combining shards -------------------------------------------------------------
    def state(self) -> list[float]:
        """The sums as one flat list: [cum_I, cum_U, count, iou_sum, correct...]. Integers
        stay exact in float64 up to 2**53 pixels."""
        return [float(self.cum_i), float(self.cum_u), float(self.count), self.iou_sum, *map(float, self.correct)]

    def load_state(self, state: list[float]) -> None:
        """Replace the sums by `state` (e.g. after an all-reduce); per-expression IoUs of
        other shards are not known, so mIoU then comes from the summed IoUs."""
        n = len(self.thresholds)
        if len(state) != 4 + n:
            raise ValueError(f"state has {len(state)} entries, expected {4 + n}")
        self.cum_i, self.cum_u, self.count = int(round(state[0])), int(round(state[1])), int(round(state[2]))
        self.iou_sum = float(state[3])
        self.correct = [int(round(c)) for c in state[4:]]
        self._ious = []

    # --- results ---------------------------------------------------------------------
    def compute(self) -> dict[str, float]:
        """`{"oIoU", "mIoU", "P@0.5", ...}` in percent (oIoU is 0 when every union is empty)."""
        if self.count == 0:
            raise ValueError("no expressions were scored: nothing to compute")
        if len(self._ious) == self.count:
            miou = math.fsum(self._ious) / self.count
        else:
            miou = self.iou_sum / self.count
        out = {
            "oIoU": self.cum_i * 100.0 / self.cum_u if self.cum_u else 0.0,
            "mIoU": miou * 100.0,
        }
        for t, c in zip(self.thresholds, self.correct):
            out[f"P@{t:g}"] = c * 100.0 / self.count
        return out

    def __repr__(self) -> str:
        if not self.count:
            return "ReferringMetrics(empty)"
        return "ReferringMetrics(" + ", ".join(f"{k}={v:.2f}" for k, v in self.compute().items()) + ")"


GENERALIZED_THRESHOLDS: tuple[float, ...] = (0.7, 0.8, 0.9)


class GeneralizedReferringMetrics(_SummedState):
    """The generalised referring metrics of GRES (gRefCOCO), scored as ReLA's evaluator does.

    An expression may name no object ("no target"); the model then says so besides giving a
    mask. Per expression, with I and U of the predicted and true masks as given:

    - true no-target, predicted no-target: IoU 1, nothing added to the sums of I and U;
    - true no-target, predicted target: IoU 0, I adds 0 and U adds U (the predicted mask);
    - true target, predicted no-target: I counts as 0, U as computed, IoU 0;
    - true target, predicted target: the usual IoU (0 when U is 0).

    gIoU = mean IoU over all expressions; cIoU = sum I / sum U; with "positive" meaning
    no-target, N-acc = TP / (TP + FN) and T-acc = TN / (TN + FP) (both 0 when no expression
    is no-target, as ReLA; reported here in percent where ReLA prints fractions); Pr@t = the
    share of targeted expressions with IoU >= t. `state`/`merge`/`all_reduce` combine shards
    exactly, as for `ReferringMetrics`.
    """

    def __init__(self, thresholds: tuple[float, ...] = GENERALIZED_THRESHOLDS) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        self.cum_i = 0
        self.cum_u = 0
        self.count = 0
        self.iou_sum = 0.0
        self.targeted = 0
        self.tp = self.tn = self.fp = self.fn = 0
        self.correct = [0] * len(self.thresholds)
        self._ious: list[float] = []

    def __len__(self) -> int:
        return self.count

    def add(self, inter: int, union: int, *, pred_no_target: bool, gt_no_target: bool) -> float:
        """Record one expression from its I and U (of the masks as predicted); returns its IoU."""
        inter, union = int(inter), int(union)
        if inter < 0 or union < inter:
            raise ValueError(f"impossible counts I={inter}, U={union}")
        pred_nt, gt_nt = bool(pred_no_target), bool(gt_no_target)
        if gt_nt:
            if pred_nt:
                self.tp += 1
                iou = 1.0
            else:
                self.fn += 1
                iou = 0.0
                self.cum_u += union
        else:
            if pred_nt:
                self.fp += 1
                inter = 0
            else:
                self.tn += 1
            iou = 0.0 if union == 0 else inter / union
            self.cum_i += inter
            self.cum_u += union
            self.targeted += 1
            for k, t in enumerate(self.thresholds):
                self.correct[k] += int(iou >= t)
        self.count += 1
        self.iou_sum += iou
        self._ious.append(iou)
        return iou

    def update(self, pred_mask: Any, gt_mask: Any, *, pred_no_target: bool, gt_no_target: bool) -> float:
        """Score one expression (binary masks, numpy or torch, and the two no-target flags)."""
        inter, union = intersection_union(pred_mask, gt_mask)
        return self.add(inter, union, pred_no_target=pred_no_target, gt_no_target=gt_no_target)

    # --- combining shards -------------------------------------------------------------
    def state(self) -> list[float]:
        """[cum_I, cum_U, count, iou_sum, targeted, TP, TN, FP, FN, correct...] as floats."""
        counts = (self.cum_i, self.cum_u, self.count)
        rest = (self.targeted, self.tp, self.tn, self.fp, self.fn, *self.correct)
        return [*map(float, counts), self.iou_sum, *map(float, rest)]

    def load_state(self, state: list[float]) -> None:
        """Replace the sums by `state`; mIoU-style exact rounding then uses the summed IoUs."""
        n = len(self.thresholds)
        if len(state) != 9 + n:
            raise ValueError(f"state has {len(state)} entries, expected {9 + n}")
        ints = [int(round(v)) for v in state]
        self.cum_i, self.cum_u, self.count = ints[0], ints[1], ints[2]
        self.iou_sum = float(state[3])
        self.targeted, self.tp, self.tn, self.fp, self.fn = ints[4:9]
        self.correct = ints[9:]
        self._ious = []

    # --- results ---------------------------------------------------------------------
    def compute(self) -> dict[str, float]:
        """gIoU, cIoU, N-acc, T-acc, Pr@t in percent; then the counts (expressions,
        no_target, targeted, TP, TN, FP, FN). cIoU is 0 when every union is empty, Pr@t 0
        when no expression has a target."""
        if self.count == 0:
            raise ValueError("no expressions were scored: nothing to compute")
        iou_sum = math.fsum(self._ious) if len(self._ious) == self.count else self.iou_sum
        no_target = self.tp + self.fn
        out: dict[str, float] = {
            "gIoU": iou_sum * 100.0 / self.count,
            "cIoU": self.cum_i * 100.0 / self.cum_u if self.cum_u else 0.0,
            "N-acc": self.tp * 100.0 / no_target if no_target else 0.0,
            "T-acc": self.tn * 100.0 / (self.tn + self.fp) if no_target and self.tn + self.fp else 0.0,
        }
        for t, c in zip(self.thresholds, self.correct):
            out[f"Pr@{t:.1f}"] = c * 100.0 / self.targeted if self.targeted else 0.0
        out.update(expressions=self.count, no_target=no_target, targeted=self.targeted,
                   TP=self.tp, TN=self.tn, FP=self.fp, FN=self.fn)
        return out

    def __repr__(self) -> str:
        if not self.count:
            return "GeneralizedReferringMetrics(empty)"
        shown = {k: v for k, v in self.compute().items() if isinstance(v, float)}
        return "GeneralizedReferringMetrics(" + ", ".join(f"{k}={v:.2f}" for k, v in shown.items()) + ")"

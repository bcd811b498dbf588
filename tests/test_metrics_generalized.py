"""GeneralizedReferringMetrics (the GRES / gRefCOCO evaluator) on hand-computed cases, one per branch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lavt.metrics import GeneralizedReferringMetrics


def _mask(*on: int, width: int = 10) -> np.ndarray:
    m = np.zeros((1, width), dtype=np.uint8)
    m[0, list(on)] = 1
    return m


EMPTY = _mask()
# (pred mask, gt mask, pred_no_target, gt_no_target, expected IoU, expected I added, expected U added)
CASES = {
    # no target, said so: IoU 1 and nothing added, whatever mask came with the decision
    "true_positive": (_mask(0, 1, 2), EMPTY, True, True, 1.0, 0, 0),
    # no target, but a mask was predicted: IoU 0 and the predicted pixels add to U
    "false_negative": (_mask(3, 4), EMPTY, False, True, 0.0, 0, 2),
    # a target, but "no target" was said: I counts as 0, U as computed from both masks
    "false_positive": (_mask(0, 9), _mask(0, 1, 2, 3), True, False, 0.0, 0, 5),
    # a target, found: the usual IoU
    "true_negative": (_mask(0, 1, 2, 4), _mask(0, 1, 2, 3), False, False, 0.6, 3, 5),
    "true_negative_exact": (_mask(5, 6), _mask(5, 6), False, False, 1.0, 2, 2),
    # both masks empty on a targeted expression: IoU 0 (as test.py), nothing added
    "true_negative_empty": (EMPTY, EMPTY, False, False, 0.0, 0, 0),
    # IoU exactly 0.8 counts for Pr@0.8 (>=)
    "true_negative_boundary": (_mask(0, 1, 2, 3), _mask(0, 1, 2, 3, 4), False, False, 0.8, 4, 5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_branch_alone(name: str) -> None:
    pred, gt, pred_nt, gt_nt, iou, inter, union = CASES[name]
    m = GeneralizedReferringMetrics()
    assert m.update(pred, gt, pred_no_target=pred_nt, gt_no_target=gt_nt) == pytest.approx(iou, abs=1e-15)
    assert (m.cum_i, m.cum_u, m.count) == (inter, union, 1)
    assert (m.tp, m.fn, m.fp, m.tn) == (
        int(gt_nt and pred_nt), int(gt_nt and not pred_nt), int(not gt_nt and pred_nt), int(not gt_nt and not pred_nt)
    )
    assert m.targeted == int(not gt_nt)


def _all_cases(metrics: GeneralizedReferringMetrics, names: list[str] | None = None, to_torch: bool = False) -> None:
    for name in names or list(CASES):
        pred, gt, pred_nt, gt_nt = CASES[name][:4]
        if to_torch:
            pred, gt = torch.from_numpy(pred).bool(), torch.from_numpy(gt)
        metrics.update(pred, gt, pred_no_target=pred_nt, gt_no_target=gt_nt)


def test_split_totals_by_hand() -> None:
    m = GeneralizedReferringMetrics()
    _all_cases(m)
    out = m.compute()
    # IoUs 1, 0, 0, 0.6, 1, 0, 0.8 -> gIoU 3.4 / 7; I = 3 + 2 + 4 = 9; U = 2 + 5 + 5 + 2 + 5 = 19
    assert out["gIoU"] == pytest.approx(340 / 7, abs=1e-12)
    assert out["cIoU"] == pytest.approx(900 / 19, abs=1e-12)
    # no-target is the positive class: TP 1, FN 1 -> N-acc 50; TN 4, FP 1 -> T-acc 80
    assert out["N-acc"] == pytest.approx(50.0) and out["T-acc"] == pytest.approx(80.0)
    # targeted IoUs 0, 0.6, 1, 0, 0.8 -> Pr@0.7 2/5, Pr@0.8 2/5, Pr@0.9 1/5
    assert (out["Pr@0.7"], out["Pr@0.8"], out["Pr@0.9"]) == pytest.approx((40.0, 40.0, 20.0))
    assert {k: out[k] for k in ("expressions", "no_target", "targeted", "TP", "TN", "FP", "FN")} == dict(
        expressions=7, no_target=2, targeted=5, TP=1, TN=4, FP=1, FN=1
    )
    assert list(out)[:7] == ["gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"]


def test_without_no_target_expressions_both_accuracies_are_zero() -> None:
    m = GeneralizedReferringMetrics()
    _all_cases(m, ["false_positive", "true_negative", "true_negative_exact"])
    out = m.compute()
    assert out["N-acc"] == 0.0 and out["T-acc"] == 0.0  # as ReLA: not reported without no-target samples
    assert out["gIoU"] == pytest.approx(1.6 / 3 * 100) and out["cIoU"] == pytest.approx(500 / 12)


def test_only_no_target_expressions() -> None:
    m = GeneralizedReferringMetrics()
    _all_cases(m, ["true_positive", "true_positive"])
    out = m.compute()
    assert out["gIoU"] == 100.0 and out["N-acc"] == 100.0
    assert out["cIoU"] == 0.0 and out["T-acc"] == 0.0 and out["Pr@0.7"] == 0.0  # no union, no targeted sample
    m.update(_mask(1), EMPTY, pred_no_target=False, gt_no_target=True)
    assert m.compute()["cIoU"] == 0.0 and m.compute()["gIoU"] == pytest.approx(200 / 3)


def test_shards_merge_to_the_same_numbers_numpy_and_torch() -> None:
    whole = GeneralizedReferringMetrics()
    _all_cases(whole)
    names = list(CASES)
    a, b = GeneralizedReferringMetrics(), GeneralizedReferringMetrics()
    _all_cases(a, names[::2])
    _all_cases(b, names[1::2], to_torch=True)
    a.merge(b)
    assert a.compute() == pytest.approx(whole.compute(), abs=1e-12)
    summed = GeneralizedReferringMetrics()
    summed.load_state([x + y for x, y in zip(GeneralizedReferringMetrics().state(), whole.state())])
    assert summed.compute() == pytest.approx(whole.compute(), abs=1e-12)
    whole.all_reduce()  # not distributed: a no-op
    assert whole.count == 7


def test_refusals() -> None:
    m = GeneralizedReferringMetrics()
    with pytest.raises(ValueError, match="no expressions were scored"):
        m.compute()
    with pytest.raises(ValueError, match="impossible counts I=3, U=2"):
        m.add(3, 2, pred_no_target=False, gt_no_target=False)
    with pytest.raises(ValueError, match="state has 3 entries, expected 12"):
        m.load_state([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="different thresholds"):
        m.merge(GeneralizedReferringMetrics(thresholds=(0.5,)))
    with pytest.raises(ValueError, match="differs from ground-truth shape"):
        m.update(np.zeros((2, 2)), np.zeros((2, 3)), pred_no_target=False, gt_no_target=False)
    assert repr(m) == "GeneralizedReferringMetrics(empty)"

"""ReferringMetrics against the numbers the official test.py printed (golden/metrics.pt)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import GOLDEN
from lavt.metrics import ReferringMetrics, intersection_union


@pytest.fixture(scope="module")
def golden() -> dict:
    path = GOLDEN / "metrics.pt"
    if not path.is_file():
        pytest.skip(f"golden file {path} not present")
    return torch.load(path, weights_only=True)


def _check(m: ReferringMetrics, g: dict) -> None:
    out = m.compute()
    assert out["mIoU"] == pytest.approx(g["mIoU_percent"], abs=1e-12)
    assert out["oIoU"] == pytest.approx(g["oIoU_percent"], abs=1e-12)
    for t, v in g["precision_percent"].items():
        assert out[f"P@{t}"] == pytest.approx(v, abs=1e-12)
    assert m.count == g["seg_total"] and m.cum_i == g["cum_I"] and m.cum_u == g["cum_U"]
    assert m.correct == list(g["seg_correct"])


def test_matches_official_numbers_torch(golden: dict) -> None:
    m = ReferringMetrics()
    ious = [m.update(p, t) for p, t in zip(golden["preds"], golden["targets"])]
    np.testing.assert_allclose(ious, golden["iou"], rtol=0, atol=1e-12)
    _check(m, golden)


def test_matches_official_numbers_numpy_bool(golden: dict) -> None:
    m = ReferringMetrics()
    for p, t in zip(golden["preds"], golden["targets"]):
        m.update(p.numpy().astype(bool), t.numpy())
    _check(m, golden)
    assert [intersection_union(p, t) for p, t in zip(golden["preds"], golden["targets"])] == list(
        zip(golden["I"], golden["U"])
    )


def test_sharded_state_sums_to_the_same(golden: dict) -> None:
    pairs = list(zip(golden["preds"], golden["targets"]))
    a, b = ReferringMetrics(), ReferringMetrics()
    for i, (p, t) in enumerate(pairs):
        (a if i % 3 else b).update(p, t)
    total = ReferringMetrics()
    total.load_state([x + y for x, y in zip(a.state(), b.state())])
    out, ref = total.compute(), golden
    assert out["mIoU"] == pytest.approx(ref["mIoU_percent"], abs=1e-9)
    assert out["oIoU"] == pytest.approx(ref["oIoU_percent"], abs=1e-12)
    a.merge(b)
    assert a.compute()["P@0.9"] == pytest.approx(ref["precision_percent"]["0.9"], abs=1e-12)


def test_batch_update_and_edge_cases() -> None:
    m = ReferringMetrics()
    preds = torch.zeros(3, 4, 4, dtype=torch.bool)
    gts = torch.zeros(3, 4, 4, dtype=torch.uint8)
    preds[0, :2] = True
    gts[0, :1] = 1  # IoU 1/2 exactly: counts at P@0.5 (>=)
    gts[1, 0] = 1  # empty prediction: IoU 0
    assert m.update_batch(preds, gts) == [0.5, 0.0, 0.0]  # the third pair has U == 0 -> 0
    out = m.compute()
    assert out["P@0.5"] == pytest.approx(100 / 3) and out["P@0.6"] == 0.0
    assert out["oIoU"] == pytest.approx(100 * 4 / (8 + 4))
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no expressions"):
        ReferringMetrics().compute()

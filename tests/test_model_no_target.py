"""The no-target switch: `none` is the official model (keys and outputs), `head` adds only its own
keys and leaves the masks alone, `area` is a rule; the head's loss is ReLA's weighted two-class CE."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lavt
from helpers import randomise, tiny_config
from lavt.errors import LAVTUserError
from lavt.models import LAVT, LAVTConfig
from lavt.models.no_target import decide, no_target_loss_sums

HEAD_KEYS = {"no_target_head.fc1.weight", "no_target_head.fc1.bias", "no_target_head.fc2.weight", "no_target_head.fc2.bias"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, 48, 48, generator=g)
    ids = torch.randint(1000, 2000, (n, 6), generator=g)
    mask = torch.ones(n, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return image, ids, mask


def test_none_is_the_official_key_set_and_config(golden_dir) -> None:
    d = torch.load(golden_dir / "lavt_one_tiny.pt", weights_only=True)
    official = lavt.load_official({"model": d["state_dict"]}, pwam_heads=d["config"]["num_heads_fusion"])
    assert official.config.no_target == "none" and official.no_target_head is None
    assert set(official.state_dict()) == set(d["state_dict"])
    assert "no_target" not in official.config.to_dict() and "no_target_threshold" not in official.config.to_dict()
    cfg = LAVTConfig.from_dict({**official.config.to_dict(), "no_target": "head"})
    head = LAVT(cfg)
    assert set(head.state_dict()) - set(d["state_dict"]) == HEAD_KEYS
    assert set(d["state_dict"]) <= set(head.state_dict())
    with torch.no_grad():
        logits, nt = official(d["image"], d["input_ids"], d["attention_mask"], return_no_target=True)
    torch.testing.assert_close(logits, d["logits"], atol=5e-5, rtol=0)
    assert nt is None


def test_head_keeps_the_masks_and_round_trips(tmp_path) -> None:
    plain = randomise(LAVT(tiny_config())).eval()
    head = LAVT(tiny_config(no_target="head")).eval()
    missing, unexpected = head.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == HEAD_KEYS and unexpected == []
    image, ids, mask = _inputs()
    with torch.no_grad():
        ref = plain.segment_expressions(image, ids, mask)
        logits, nt = head.segment_expressions(image, ids, mask, return_no_target=True)
        single = [head(image, ids[i : i + 1], mask[i : i + 1], return_no_target=True) for i in range(3)]
        assert torch.equal(head(image, ids[:1], mask[:1]), single[0][0])  # the default stays one tensor
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    assert nt.shape == (3,) and nt.dtype == torch.float32
    torch.testing.assert_close(nt, torch.cat([s[1] for s in single]), atol=1e-5, rtol=0)
    folder = head.save_pretrained(tmp_path / "m")
    again = LAVT.from_pretrained(folder)
    assert again.config.no_target == "head" and set(again.state_dict()) == set(head.state_dict())
    with torch.no_grad():
        assert torch.equal(again.segment_expressions(image, ids, mask, return_no_target=True)[1], nt)


def test_area_rule_and_head_decision() -> None:
    area = LAVT(tiny_config(no_target="area", no_target_threshold=0.25))
    assert area.no_target_head is None and area.config.to_dict()["no_target_threshold"] == 0.25
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[1, :1] = True  # 4 of 16 pixels: at the threshold, no target
    masks[2, :2] = True  # 8 of 16
    flags, prob = decide("area", 0.25, masks, None)
    assert flags.tolist() == [True, True, False] and prob is None
    flags, prob = decide("head", 0.0, masks, torch.tensor([-2.0, 0.0, 3.0]))
    assert flags.tolist() == [False, True, True]
    torch.testing.assert_close(prob, torch.sigmoid(torch.tensor([-2.0, 0.0, 3.0])))
    assert decide("none", 0.0, masks, None) is None


def test_loss_is_relas_weighted_two_class_cross_entropy() -> None:
    total, weights = no_target_loss_sums(torch.tensor([0.0, 0.0]), torch.tensor([True, False]))
    assert weights.item() == pytest.approx(2.0) and total.item() == pytest.approx(2.0 * math.log(2.0))
    z = torch.tensor([1.5, -0.3, 2.0, -4.0])
    y = torch.tensor([1, 0, 0, 1])
    total, weights = no_target_loss_sums(z, y)
    # ReLA: F.cross_entropy over [target, no-target] logits with class weights [0.9, 1.1]
    two_class = torch.stack([torch.zeros_like(z), z], dim=1)
    expected = F.cross_entropy(two_class, y, weight=torch.tensor([0.9, 1.1]))
    torch.testing.assert_close(total / weights, expected)


def test_config_refusals() -> None:
    with pytest.raises(LAVTUserError, match=r"no_target 'maybe' is not one of \('none', 'area', 'head'\)"):
        tiny_config(no_target="maybe")
    with pytest.raises(LAVTUserError, match=r"no_target_threshold 1.5 must lie in \[0, 1\)"):
        tiny_config(no_target="area", no_target_threshold=1.5)

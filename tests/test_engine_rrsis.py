"""The remote-sensing recipes: the rrsisd and refsegrs presets as resolved, the weighted CE +
Dice loss, the box-augmentation options, and `lavt train --preset debug` + `lavt evaluate` for
a few steps on the RRSIS-D and RefSegRS fixtures (tests/rs_fixtures.py) and on generated synthrs."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import make_tiny_text_encoder
from lavt.cli import main
from lavt.data.augment import BoxAugment
from lavt.data.synthref.aerial import generate_aerial
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.engine.config import TrainConfig, load_train_config
from lavt.engine.losses import SegmentationLoss, dice_loss_per_sample
from lavt.engine.train import build_datasets
from lavt.errors import LAVTUserError
from rs_fixtures import build_refsegrs, build_rrsisd

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning", "ignore:rrsisd. 1 of", "ignore:refsegrs. t03.tif has 5 bands"
)


def _changed(config: TrainConfig) -> dict:
    paper = TrainConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if paper[k] != v}


def test_presets_change_only_what_the_forks_publish() -> None:
    rrsisd = load_train_config(preset="rrsisd", check_paths=False)
    assert _changed(rrsisd) == {
        "dataset": "rrsisd", "lr": 3e-5, "loss": "ce+dice", "ce_loss_weight": 0.9, "dice_weight": 0.1, "box_aug_share": 0.2,
    }
    assert rrsisd.epochs == 40 and rrsisd.box_aug_count == (20, 60) and rrsisd.box_aug_size == 32 and rrsisd.val_split == "val"
    refsegrs = load_train_config(preset="refsegrs", check_paths=False)
    assert _changed(refsegrs) == {"dataset": "refsegrs", "epochs": 60}
    assert refsegrs.lr == 5e-5 and refsegrs.loss == "ce" and refsegrs.box_aug_share == 0.0
    # options, not hard-coded: every value can be set over the preset
    over = load_train_config(None, ["box_aug_share=0.5", "box_aug_count=[1, 3]", "box_aug_size=8", "ce_loss_weight=1.0"],
                             preset="rrsisd", check_paths=False)
    assert (over.box_aug_share, over.box_aug_count, over.box_aug_size, over.ce_loss_weight) == (0.5, (1, 3), 8, 1.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("box_aug_share=1.5", "box_aug_share = 1.5 is impossible: it must lie in [0, 1]"),
        ("box_aug_count=[5, 2]", "box_aug_count = [5, 2] is impossible: it must be [min, max]"),
        ("box_aug_size=0", "box_aug_size = 0 is impossible: it must be a positive number"),
        ("ce_loss_weight=-1", "ce_loss_weight = -1.0 is impossible: it must not be negative"),
    ],
)
def test_impossible_recipe_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(LAVTUserError) as caught:
        load_train_config(None, [override], preset="rrsisd", check_paths=False)
    assert message in str(caught.value)


def test_weighted_ce_plus_dice_is_the_sum_of_its_terms() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(3, 2, 8, 8), torch.randint(0, 2, (3, 8, 8))
    weight = torch.tensor([0.9, 1.1])
    ce = F.cross_entropy(logits, target, weight=weight)
    dice = dice_loss_per_sample(logits, target).mean()
    loss = SegmentationLoss("ce+dice", (0.9, 1.1), dice_weight=0.1, ce_factor=0.9)(logits, target)
    torch.testing.assert_close(loss, 0.9 * ce + 0.1 * dice)
    torch.testing.assert_close(SegmentationLoss("ce")(logits, target), ce)  # the official loss is unchanged


def test_the_rrsisd_recipe_puts_boxes_on_its_share_of_training_refs(tmp_path: Path) -> None:
    root = build_rrsisd(tmp_path / "data")
    config = load_train_config(None, {"data_root": str(root), "output_dir": str(tmp_path / "run"), "box_aug_share": 0.5},
                               preset="rrsisd", check_paths=False)
    train, val = build_datasets(config, ExpressionTokenizer.from_pretrained(default_text_encoder_dir()))
    assert isinstance(train.augment, BoxAugment) and len(train.augment.chosen) == 2 and val.augment is None
    assert (train.augment.count, train.augment.size, train.augment.seed) == ((20, 60), 32, 0)


def build_synthrs(root: Path) -> Path:
    generate_aerial(root, seed=0, num_images=10, image_size=(64, 64))
    return root


@pytest.mark.parametrize(("dataset", "build", "split", "expressions"), [
    ("rrsisd", build_rrsisd, "val", 2),  # val holds the padded 40x41 image
    ("refsegrs", build_refsegrs, "train", 5),  # train holds the five-band tile
    ("synthrs", build_synthrs, "test", None),  # the generated aerial scenes
])
def test_train_debug_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture, dataset: str, build, split: str,
                                   expressions: int | None) -> None:
    root = build(tmp_path / "data")
    run = tmp_path / "run"
    args = ["train", "--preset", "debug", "--data-root", str(root), "--dataset", dataset, "--output-dir", str(run),
            "--text-encoder", str(make_tiny_text_encoder(tmp_path / "bert")), "--epochs", "1", "--image-size", "32",
            "--batch-size", "2", "--no-progress", "--set", "steps_per_epoch=2", "--set", "plot=false"]
    if dataset == "rrsisd":
        args += ["--set", "box_aug_share=0.5", "--set", "box_aug_size=8", "--set", "loss=ce+dice", "--set", "ce_loss_weight=0.9",
                 "--set", "dice_weight=0.1"]
    assert main(args) == 0, capsys.readouterr().err
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2]
    assert np.isfinite([e["loss"] for e in events if e["event"] == "train"]).all()
    assert "oIoU" in next(e for e in events if e["event"] == "epoch")["val"]  # model selection on val
    scores = tmp_path / "scores.json"
    assert main(["evaluate", "-c", str(run), "--data-root", str(root), "--dataset", dataset, "--split", split,
                 "--no-progress", "--json", str(scores)]) == 0, capsys.readouterr().err
    result = json.loads(scores.read_text())
    if expressions is None:  # as many as the split's refs hold
        expressions = sum(len(r["sentences"]) for r in pickle.loads((root / "synthrs/refs(unc).p").read_bytes()) if r["split"] == split)
    assert result["counts"]["expressions"] == expressions and set(result["metrics"]) == {"official", "original"}
    assert result["protocols"]["official"]["resolution"] == "32x32"
    out = capsys.readouterr().out
    assert "official 32x32" in out and "original resolution" in out

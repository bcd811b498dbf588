"""The gRefCOCO-layout reader on a hand-made fixture: multi-target, no-target ([-1] and the flag),
a crowd annotation, a single-int ann_id, both image layouts, the .p variant, the datasets and `data info`."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavt.data import ExpressionTokenizer, ReferDataset, ReferImageGroups, default_text_encoder_dir
from lavt.data.grefcoco import GRefer, open_refer
from lavt.data.info import dataset_info
from lavt.data.refer import Refer
from lavt.errors import LAVTUserError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZES = {1: (20, 30), 2: (16, 16)}  # image_id -> (height, width)


def _box(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A rectangle polygon covering pixels x0..x1-1, y0..y1-1 (pycocotools rasterises its inside)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rect(image_id: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros(SIZES[image_id], dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _sentence(sent_id: int, raw: str) -> dict:
    return {"sent_id": sent_id, "raw": raw, "sent": raw, "tokens": raw.split()}


def build(root: Path, image_layout: str = "images/train2014", fmt: str = "json", refs: list | None = None) -> Path:
    """grefcoco/grefs(unc).json (or .p) + instances.json + two images under `image_layout`."""
    images = root / image_layout
    images.mkdir(parents=True, exist_ok=True)
    for image_id, (h, w) in SIZES.items():
        Image.new("RGB", (w, h), (image_id * 40, 90, 160)).save(images / f"COCO_train2014_{image_id:012d}.jpg")
    anns = [
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": _box(2, 3, 8, 9)},
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": _box(20, 10, 26, 18)},
        {"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": _rle(_rect(1, 10, 0, 14, 20))},
        {"id": 21, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": _box(4, 4, 12, 10)},
    ]
    instances = {
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": h, "width": w} for i, (h, w) in SIZES.items()],
        "annotations": anns,
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cup"}],
    }
    if refs is None:
        refs = [
            # two dogs and a crowd region: the crowd annotation is not part of the mask
            {"ref_id": 1, "image_id": 1, "ann_id": [11, 12, 13], "category_id": [1], "split": "train", "no_target": False,
             "sentences": [_sentence(1, "the two dogs"), _sentence(2, "all dogs")]},
            {"ref_id": 2, "image_id": 1, "ann_id": [-1], "category_id": [], "split": "train", "no_target": True,
             "sentences": [_sentence(3, "the cat on the sofa")]},
            # a single int ann_id, and a no-target ref told only by [-1] (no flag)
            {"ref_id": 3, "image_id": 2, "ann_id": 21, "category_id": 2, "split": "val", "sentences": [_sentence(4, "the cup")]},
            {"ref_id": 4, "image_id": 2, "ann_id": [-1], "category_id": [], "split": "val", "sentences": [_sentence(5, "the red cup")]},
            # the flag alone also means no target
            {"ref_id": 5, "image_id": 1, "ann_id": [12], "category_id": [1], "split": "testA", "no_target": True,
             "sentences": [_sentence(6, "the dog in a hat")]},
            {"ref_id": 6, "image_id": 1, "ann_id": [12], "category_id": [1], "split": "testB",
             "sentences": [_sentence(7, "right dog"), _sentence(8, "dog on the right")]},
        ]
    folder = root / "grefcoco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(instances))
    if fmt == "json":
        (folder / "grefs(unc).json").write_text(json.dumps(refs))
    else:
        (folder / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


@pytest.fixture(scope="module")
def tokenizer() -> ExpressionTokenizer:
    return ExpressionTokenizer.from_pretrained(default_text_encoder_dir())


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return build(tmp_path / "data")


def test_targets_and_masks_by_hand(root: Path) -> None:
    refer = open_refer(root, "grefcoco", "unc")
    assert isinstance(refer, GRefer) and refer.image_dir == root / "images/train2014"
    assert [refer.no_target(r) for r in (1, 2, 3, 4, 5, 6)] == [False, True, False, True, True, False]
    assert refer.target_ann_ids(1) == [11, 12] and refer.num_targets(1) == 3  # crowd 13 named, not in the mask
    assert refer.target_ann_ids(3) == [21] and refer.target_ann_ids(5) == [] and refer.num_targets(5) == 0
    np.testing.assert_array_equal(refer.mask(1), _rect(1, 2, 3, 8, 9) | _rect(1, 20, 10, 26, 18))
    np.testing.assert_array_equal(refer.mask(3), _rect(2, 4, 4, 12, 10))
    for ref_id in (2, 4, 5):
        mask = refer.mask(ref_id)
        assert mask.dtype == np.uint8 and mask.shape == SIZES[refer.refs[ref_id]["image_id"]] and not mask.any()
    assert refer.mask(6).sum() == 6 * 8


def test_counts_per_split(root: Path) -> None:
    refer = open_refer(root, "grefcoco", "unc")
    assert refer.generalized_counts() == {
        "train": dict(refs=2, expressions=3, no_target=1, multi_target=2, images=1),
        "val": dict(refs=2, expressions=2, no_target=1, multi_target=0, images=1),
        "testA": dict(refs=1, expressions=1, no_target=1, multi_target=0, images=1),
        "testB": dict(refs=1, expressions=2, no_target=0, multi_target=0, images=1),
    }
    info = dataset_info(root, "grefcoco", "unc")
    assert info.splits["train"].no_target == 1 and info.splits["train"].multi_target == 2 and info.ok
    table = info.format()
    assert "no-target  multi-target" in table
    assert [line.split() for line in table.splitlines() if line.startswith("train")] == [["train", "2", "3", "1", "1", "2"]]


def test_pickle_refer_layout_and_image_override(tmp_path: Path) -> None:
    root = build(tmp_path / "p", image_layout="images/mscoco/images/train2014", fmt="p")
    refer = open_refer(root, "grefcoco", "unc")
    assert refer.refs_file.name == "grefs(unc).p" and refer.image_dir == root / "images/mscoco/images/train2014"
    assert refer.load_image(1).size == (30, 20)
    (root / "images/train2014").mkdir()  # both layouts present: the refer layout comes first
    assert open_refer(root, "grefcoco", "unc").image_dir == root / "images/mscoco/images/train2014"
    assert open_refer(root, "grefcoco", "unc", image_dir=tmp_path / "elsewhere").image_dir == tmp_path / "elsewhere"


def test_classic_layout_still_opens_refer(tmp_path: Path) -> None:
    import helpers

    root = helpers.build_refer_dataset(tmp_path / "classic")
    refer = open_refer(root, "refcoco", "unc")
    assert type(refer) is Refer and not getattr(refer, "generalized", False)


def test_bad_records_are_named(tmp_path: Path) -> None:
    base = {"image_id": 1, "split": "train", "sentences": [_sentence(1, "a dog")]}
    with pytest.raises(LAVTUserError, match=r"ref_id 7 points to ann_id 99, which is not in"):
        GRefer(build(tmp_path / "a", refs=[{**base, "ref_id": 7, "ann_id": [11, 99]}]), "grefcoco")
    with pytest.raises(LAVTUserError, match=r"ref_id 7 \(image 1\) names ann_id 21 of image 2"):
        GRefer(build(tmp_path / "b", refs=[{**base, "ref_id": 7, "ann_id": [21]}]), "grefcoco")
    with pytest.raises(LAVTUserError, match=r"record 0 is malformed \(ValueError"):
        GRefer(build(tmp_path / "c", refs=[{**base, "ref_id": 7, "ann_id": ["eleven"]}]), "grefcoco")
    with pytest.raises(LAVTUserError, match=r"has no grefs\(umd\).json or grefs\(umd\).p \(found: grefs\(unc\).json\)"):
        GRefer(tmp_path / "c", "grefcoco", "umd")
    # the ref and sentence checks are Refer's own, with its messages
    with pytest.raises(LAVTUserError, match=r"ref_id 7 appears twice"):
        GRefer(build(tmp_path / "d", refs=[{**base, "ref_id": 7, "ann_id": [11]}] * 2), "grefcoco")
    with pytest.raises(LAVTUserError, match=r"record 0 \(ref_id 7\) lacks split"):
        GRefer(build(tmp_path / "e", refs=[{"ref_id": 7, "ann_id": [11], "image_id": 1, "sentences": []}]), "grefcoco")
    with pytest.raises(LAVTUserError, match=r"ref_id 7, sent_id 1 has an empty expression \(' '\)"):
        GRefer(build(tmp_path / "f", refs=[{**base, "ref_id": 7, "ann_id": [11], "sentences": [_sentence(1, " ")]}]), "grefcoco")


def test_datasets_carry_the_no_target_label(root: Path, tokenizer: ExpressionTokenizer) -> None:
    train = ReferDataset(root, "grefcoco", "unc", "train", tokenizer=tokenizer, image_size=16)
    assert train.generalized and len(train) == 2
    items = [train[0], train[1]]
    assert [bool(i["no_target"]) for i in items] == [False, True] and items[0]["no_target"].dtype == torch.bool
    assert items[0]["mask"].sum() > 0 and items[1]["mask"].sum() == 0
    ev = ReferDataset(root, "grefcoco", "unc", "val", tokenizer=tokenizer, image_size=16, mode="eval")
    assert [(i["expression"], bool(i["no_target"])) for i in ev] == [("the cup", False), ("the red cup", True)]
    assert ev[1]["orig_mask"].shape == (16, 16) and ev[1]["orig_mask"].sum() == 0
    groups = ReferImageGroups(root, "grefcoco", "unc", "train", tokenizer=tokenizer, image_size=16)
    group = groups[0]
    assert group["expressions"] == ["the two dogs", "all dogs", "the cat on the sofa"]
    assert group["no_targets"].tolist() == [False, False, True] and group["masks"][2].sum() == 0


def test_cli_info_counts_and_image_root(root: Path, tmp_path: Path, capsys) -> None:
    from lavt.cli import main

    assert main(["data", "info", "--data-root", str(root), "--dataset", "grefcoco"]) == 0
    out = capsys.readouterr().out
    assert "no-target  multi-target" in out and f"images under {root / 'images/train2014'}" in out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert main(["data", "info", "--data-root", str(root), "--dataset", "grefcoco", "--image-root", str(elsewhere)]) == 1
    assert f"images under {elsewhere} (exists checked): 2 missing" in capsys.readouterr().out

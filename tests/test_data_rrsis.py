"""The remote-sensing readers on fixtures made here (tests/rs_fixtures.py): RRSIS-D's RLE-list
segmentations and size-mismatched images, RefSegRS's phrase files, multi-band TIFFs and the
errors for broken folders; the datasets, `data info` and the black-box augmentation."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavt.cli import main
from lavt.data import ExpressionTokenizer, ReferDataset, ReferImageGroups, default_text_encoder_dir
from lavt.data.augment import BoxAugment
from lavt.data.grefcoco import open_refer
from lavt.data.info import PUBLISHED_SIZES, PUBLISHED_TOTALS, dataset_info
from lavt.data.rrsis import RefSegRSRefer, RRSISDRefer, fit_mask
from lavt.data.transforms import image_to_tensor
from lavt.errors import LAVTUserError
from rs_fixtures import (
    MULTIBAND,
    REFSEGRS_LINES,
    REFSEGRS_TILES,
    RRSISD_IMAGES,
    RRSISD_TEXT,
    build_refsegrs,
    build_rrsisd,
    refsegrs_bands,
    refsegrs_mask,
    rrsisd_expected_mask,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rs") / "data"
    build_rrsisd(root)
    build_refsegrs(root)
    return root


@pytest.fixture(scope="module")
def tokenizer() -> ExpressionTokenizer:
    return ExpressionTokenizer.from_pretrained(default_text_encoder_dir())


def _messages(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record]


# ---------------------------------------------------------------------- RRSIS-D


def test_rrsisd_masks_are_cropped_or_padded_to_the_file_never_stretched(data: Path) -> None:
    refer = open_refer(data, "rrsisd", "unc")
    assert isinstance(refer, RRSISDRefer) and refer.image_dir == data / "images/rrsisd/JPEGImages"
    for image_id, (_, h, w, *_) in RRSISD_IMAGES.items():
        mask = refer.mask(image_id)
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, rrsisd_expected_mask(image_id))
    assert refer.mask(2).sum() == 10 * 7  # rows 30..36 of a 10 x 10 box survive the crop to 37 rows
    assert refer.mask(5)[40].sum() == 0  # the padded row is background
    assert [m[0] for m in refer.size_mismatches(refer.image_refs)] == [2, 5]
    np.testing.assert_array_equal(fit_mask(np.ones((2, 3), np.uint8), 3, 2), [[1, 1], [1, 1], [0, 0]])


def test_rrsisd_datasets_warn_once_with_the_count(data: Path, tokenizer: ExpressionTokenizer) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train = ReferDataset(data, "rrsisd", "unc", "train", tokenizer=tokenizer, mode="eval", image_size=24)
    assert _messages(record) == [
        "rrsisd: 1 of 4 image(s) differ in size from their masks (e.g. 00002.jpg is 40x37, its mask 40x40); the masks "
        "are cropped or padded at the bottom/right edges to the image, not stretched"
    ]
    item = train[1]
    assert item["expression"] == RRSISD_TEXT[2] and item["image"].shape == (3, 24, 24)
    np.testing.assert_array_equal(item["orig_mask"].numpy(), rrsisd_expected_mask(2))
    with pytest.warns(UserWarning, match="1 of 2 image"):
        groups = ReferImageGroups(data, "rrsisd", "unc", "val", tokenizer=tokenizer, image_size=24)
    group = groups[0]
    assert group["image_id"] == 5 and group["orig_masks"][0].shape == (41, 40)
    assert group["masks"].shape == (1, 24, 24)


def test_rrsisd_info_checks_the_published_total(data: Path, capsys: pytest.CaptureFixture) -> None:
    info = dataset_info(data, "rrsisd", "unc")
    text = info.format()
    assert "train            4            4       4   12181 / 12181 / ?   <- differs" in text
    assert "total: 8 expressions, published 17402   <- differs" in text
    assert "2 image(s) differ in size from their masks" in text
    assert "rrsisd has 8 expressions in all; published 17402" in info.warnings
    # the per-split table adds up to the totals the papers state
    for dataset, total in PUBLISHED_TOTALS.items():
        assert sum(e for _, e, _ in PUBLISHED_SIZES[(dataset, "unc")].values()) == total
    assert main(["data", "info", "--data-root", str(data), "--dataset", "rrsisd"]) == 1
    assert "total: 8 expressions, published 17402" in capsys.readouterr().out


# ---------------------------------------------------------------------- RefSegRS


def test_refsegrs_refs_masks_and_splits(data: Path) -> None:
    refer = open_refer(data, "refsegrs", "unc")  # the folder is RefSegRS/: found ignoring case
    assert isinstance(refer, RefSegRSRefer) and refer.image_dir == data / "RefSegRS/images"
    assert refer.split_counts() == {"train": (4, 5, 4), "val": (1, 1, 1), "test": (1, 1, 1)}
    t01 = next(r for r in refer.ref_ids("train") if refer.images[refer.refs[r]["image_id"]]["name"] == "t01")
    assert [s["raw"] for s in refer.refs[t01]["sentences"]] == ["road along the river", "the road"]  # one object, two lines
    for ref_id, ref in refer.refs.items():
        name = refer.images[ref["image_id"]]["name"]
        np.testing.assert_array_equal(refer.mask(ref_id), refsegrs_mask(name))
        assert refer.image_path(ref["image_id"]) == data / "RefSegRS/images" / f"{name}.tif"
    assert sorted(refer.images[i]["name"] for i in refer.image_refs) == sorted(REFSEGRS_TILES)


def test_multiband_tiff_reads_the_rgb_bands_and_says_so_once(data: Path) -> None:
    refer = open_refer(data, "refsegrs", "unc")
    image_id = next(i for i, info in refer.images.items() if info["name"] == MULTIBAND)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first, again = refer.load_image(image_id), refer.load_image(image_id)
        plain = refer.load_image(next(i for i, info in refer.images.items() if info["name"] == "t01"))
    assert _messages(record) == [f"refsegrs: {MULTIBAND}.tif has 5 bands; reading the first three as RGB"]
    assert first.mode == "RGB" and first.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(first), refsegrs_bands(MULTIBAND)[..., :3])
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    np.testing.assert_array_equal(np.asarray(plain), refsegrs_bands("t01"))


@pytest.mark.filterwarnings("ignore:refsegrs. t03.tif has 5 bands")
def test_refsegrs_datasets_and_info(data: Path, tokenizer: ExpressionTokenizer) -> None:
    train = ReferDataset(data, "refsegrs", "unc", "train", tokenizer=tokenizer, mode="eval", image_size=16)
    assert len(train) == 5 and train.num_refs == 4
    assert [train[i]["expression"] for i in range(5)] == [line.split(" ", 1)[1] for line in
                                                          [REFSEGRS_LINES["train"][k] for k in (0, 3, 1, 2, 4)]]
    groups = ReferImageGroups(data, "refsegrs", "unc", "test", tokenizer=tokenizer, image_size=16)
    np.testing.assert_array_equal(groups[0]["orig_masks"][0].numpy(), refsegrs_mask("t06"))
    text = dataset_info(data, "refsegrs", "unc", check_images="decode").format()
    assert "train            4            5       4   ? / 2172 / ?   <- differs" in text
    assert "total: 7 expressions, published 4420   <- differs" in text
    assert "(decode checked): 0 missing, 0 unreadable" in text


@pytest.mark.parametrize(
    ("lines", "remove", "message"),
    [
        ({"train": ["t01 the road", "", "t02 the building"]}, None, "output_phrase_train.txt:2 is empty; each line must be "
         "'<id> <expression>': delete the line"),
        ({"train": ["t01 the road", "t02"]}, None, "output_phrase_train.txt:2 has the id 't02' but no expression"),
        ({"train": ["t01 the road", "t99 a lake"]}, None, "output_phrase_train.txt:2: id 't99' has no image"),
        ({"train": ["t01 the road", "t02 a roof"]}, "masks/t02.tif", "output_phrase_train.txt:2: id 't02' has no mask"),
    ],
)
def test_refsegrs_errors_name_the_line(tmp_path: Path, lines: dict, remove: str | None, message: str) -> None:
    root = build_refsegrs(tmp_path, lines=lines)
    if remove:
        (root / "RefSegRS" / remove).unlink()
    with pytest.raises(LAVTUserError, match="RefSegRS/") as caught:
        open_refer(root, "refsegrs", "unc")
    assert message in str(caught.value)


def test_refsegrs_trailing_blank_lines_are_not_records(tmp_path: Path) -> None:
    root = build_refsegrs(tmp_path, lines={"train": ["t01 the road", "t02 the roof", "", ""]})
    assert open_refer(root, "refsegrs", "unc").split_counts() == {"train": (2, 2, 2)}


def test_a_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    root = build_refsegrs(tmp_path, lines={"train": ["t01 the road"]})
    Image.new("L", (16, 16)).save(root / "RefSegRS/masks/t01.tif")
    with pytest.raises(LAVTUserError, match=r"t01.tif is 16x16 but image .*t01.tif is 32x32"):
        open_refer(root, "refsegrs", "unc").mask(1)


# ---------------------------------------------------------------------- the box augmentation


def test_box_augment_is_deterministic_and_keeps_to_its_share() -> None:
    aug = BoxAugment(0.2, (3, 5), 4, seed=7, num_refs=50)
    assert len(aug.chosen) == 10
    assert aug.chosen == BoxAugment(0.2, (3, 5), 4, seed=7, num_refs=50).chosen
    assert aug.chosen != BoxAugment(0.2, (3, 5), 4, seed=8, num_refs=50).chosen
    index = min(aug.chosen)
    boxes = aug.boxes(index, epoch=0, width=40, height=30)
    assert 3 <= len(boxes) <= 5 and boxes == aug.boxes(index, 0, 40, 30) and boxes != aug.boxes(index, 1, 40, 30)
    assert all(x1 - x0 == 4 and y1 - y0 == 4 and 0 <= x0 and x1 <= 40 and 0 <= y0 and y1 <= 30 for x0, y0, x1, y1 in boxes)
    image = Image.new("RGB", (40, 30), (200, 100, 50))
    out = np.asarray(aug(image, index, 0))
    black = np.zeros((30, 40), bool)
    for x0, y0, x1, y1 in boxes:
        black[y0:y1, x0:x1] = True
    assert (out[black] == 0).all() and (out[~black] == (200, 100, 50)).all()
    outside = next(i for i in range(50) if i not in aug.chosen)
    assert aug.boxes(outside, 0, 40, 30) == [] and aug(image, outside, 0) is image
    assert len(BoxAugment(1.0, (1, 1), 2, 0, 9).chosen) == 9 and not BoxAugment(0.0, (1, 1), 2, 0, 9).chosen
    with pytest.raises(LAVTUserError, match=r"box_aug_count = \[5, 2\] is impossible"):
        BoxAugment(0.5, (5, 2), 4, 0, 10)


@pytest.mark.filterwarnings("ignore:rrsisd. 1 of 4 image")
def test_training_items_carry_the_boxes_and_keep_the_mask(data: Path, tokenizer: ExpressionTokenizer) -> None:
    plain = ReferDataset(data, "rrsisd", "unc", "train", tokenizer=tokenizer, image_size=40)
    boxed = ReferDataset(data, "rrsisd", "unc", "train", tokenizer=tokenizer, image_size=40)
    boxed.augment = BoxAugment(0.5, (2, 2), 6, seed=0, num_refs=len(boxed))
    chosen = sorted(boxed.augment.chosen)
    assert len(chosen) == 2
    for index in range(len(boxed)):
        a, b = plain[index], boxed[index]
        assert torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["image"], b["image"]) == (index not in chosen)
    index = chosen[0]
    image = plain.refer.load_image(plain.refer.refs[plain.ref_ids[index]]["image_id"])
    expected = image_to_tensor(boxed.augment(image, index, 0), 40)
    assert torch.equal(boxed[index]["image"], expected)


@pytest.mark.filterwarnings("ignore:refsegrs. t03.tif has 5 bands")
@pytest.mark.parametrize("dataset", ["rrsisd", "refsegrs"])
def test_data_view_draws_both_layouts(data: Path, tmp_path: Path, dataset: str) -> None:
    out = tmp_path / f"{dataset}.png"
    assert main(["data", "view", "--data-root", str(data), "--dataset", dataset, "--out", str(out)]) == 0
    with Image.open(out) as sheet:
        assert sheet.width > 0 and sheet.height > 0

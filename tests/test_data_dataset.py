"""ReferDataset / ReferImageGroups on the hand-made fixture: items, preprocessing, sampling, skipping."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import helpers
from lavt.data import ExpressionTokenizer, ReferDataset, ReferImageGroups, collate_eval, default_text_encoder_dir
from lavt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lavt.errors import LAVTUserError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def tokenizer():
    return ExpressionTokenizer.from_pretrained(default_text_encoder_dir())


@pytest.fixture()
def root(tmp_path):
    return helpers.build_refer_dataset(tmp_path / "data")


def _dataset(root, tokenizer, split="train", **kw):
    return ReferDataset(root, "refcoco", "unc", split, tokenizer=tokenizer, image_size=kw.pop("image_size", 24), **kw)


def test_train_items(root, tokenizer):
    ds = _dataset(root, tokenizer)
    assert len(ds) == ds.num_refs == 2 and ds.num_expressions == 5 and ds.num_images == 1 and ds.skipped == 0
    item = ds[0]
    assert set(item) == {"image", "mask", "input_ids", "attention_mask", "ref_id", "sent_id", "image_id"}
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (24, 24) and item["mask"].dtype == torch.int64
    assert item["input_ids"].shape == (20,) and item["input_ids"].dtype == torch.int64
    assert item["ref_id"] == 1 and item["image_id"] == 1 and item["sent_id"] in (1, 2, 3)
    raw = ds.refer.sentences[item["sent_id"]]["raw"]
    ids, mask = tokenizer.encode(raw)
    assert item["input_ids"].tolist() == ids and item["attention_mask"].tolist() == mask
    with pytest.raises(IndexError):
        ds[2]


def test_preprocessing_is_official(root, tokenizer):
    """Image: PIL bilinear to SxS, /255, ImageNet mean/std. Mask: nearest."""
    ds = _dataset(root, tokenizer, image_size=24)
    item = ds[0]
    pil = Image.open(ds.refer.image_path(1)).convert("RGB").resize((24, 24), Image.Resampling.BILINEAR)
    expected = (np.asarray(pil, dtype=np.float32) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    full = helpers.refer_expected_masks()[101]["any"]
    nearest = np.asarray(Image.fromarray(full).resize((24, 24), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(item["mask"].numpy(), nearest)


def test_expression_choice_is_seeded_per_epoch_and_ref(root, tokenizer):
    a = _dataset(root, tokenizer, seed=5)
    b = _dataset(root, tokenizer, seed=5)
    # Same (seed, epoch, index) -> same expression, whatever the access order.
    seen = set()
    for epoch in range(12):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        first = a[0]["sent_id"]
        assert [b[1]["sent_id"], b[0]["sent_id"]] == [a[1]["sent_id"], first]
        seen.add(first)
    assert seen == {1, 2, 3}  # every expression of ref 1 shows up over the epochs
    c = _dataset(root, tokenizer, seed=6)
    choices = lambda ds: [(ds.set_epoch(e), ds.expression_row(0))[1] for e in range(12)]  # noqa: E731
    assert choices(a) != choices(c)


def test_choice_is_the_same_in_dataloader_workers(root, tokenizer):
    ds = _dataset(root, tokenizer, seed=3)
    ds.set_epoch(4)
    direct = [ds[i]["sent_id"] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
    assert [int(batch["sent_id"]) for batch in loader] == direct


def test_eval_items_and_collate(root, tokenizer):
    ds = _dataset(root, tokenizer, mode="eval", image_size=16)
    assert len(ds) == 5 and ds.num_expressions == 5
    items = [ds[i] for i in range(len(ds))]
    assert [it["sent_id"] for it in items] == [1, 2, 3, 4, 5]  # ref order, then sentence order
    assert [it["expression"] for it in items[:2]] == ["Man on the left", "left guy in two parts"]
    assert {it["kind"] for it in items} == {""}  # real data has no expression kinds
    expected = helpers.refer_expected_masks()
    for it in items:
        ann_id = ds.refer.refs[it["ref_id"]]["ann_id"]
        assert it["orig_mask"].dtype == torch.uint8 and it["orig_mask"].shape == (30, 40)
        np.testing.assert_array_equal(it["orig_mask"].numpy(), expected[ann_id]["any"])
        assert it["mask"].shape == (16, 16)
    items[0]["image"].zero_()  # a cached image must not leak changes into the next item
    assert ds[1]["image"].abs().sum() > 0
    batch = collate_eval(items[:3])
    assert batch["image"].shape == (3, 3, 16, 16) and batch["input_ids"].shape == (3, 20)
    assert batch["sent_id"].tolist() == [1, 2, 3]
    assert isinstance(batch["orig_mask"], list) and batch["orig_mask"][0].shape == (30, 40)
    assert batch["expression"][2] == "the person standing."


def test_official_mask_mode(root, tokenizer):
    ds = _dataset(root, tokenizer, mode="eval", mask_mode="official")
    np.testing.assert_array_equal(ds[0]["orig_mask"].numpy(), helpers.refer_expected_masks()[101]["official"])
    with pytest.raises(LAVTUserError, match="mask_mode"):
        _dataset(root, tokenizer, mask_mode="strict")
    with pytest.raises(LAVTUserError, match="mode must be"):
        _dataset(root, tokenizer, mode="test")


def test_image_groups(tmp_path, tokenizer):
    root = helpers.build_refer_dataset(tmp_path / "d")
    groups = ReferImageGroups(root, "refcoco", "unc", "test", tokenizer=tokenizer, image_size=16)
    assert len(groups) == 1 and groups.num_expressions == 4
    item = groups[0]
    assert item["image_id"] == 2 and item["ref_ids"] == [4, 4, 4, 5] and item["sent_ids"] == [8, 9, 10, 11]
    assert item["input_ids"].shape == (4, 20) and item["masks"].shape == (4, 16, 16)
    assert item["expressions"][3] == "dog at the bottom"
    expected = helpers.refer_expected_masks()
    np.testing.assert_array_equal(item["orig_masks"][0].numpy(), expected[201]["any"])
    np.testing.assert_array_equal(item["orig_masks"][3].numpy(), expected[202]["any"])
    assert item["input_ids"][3].tolist() == tokenizer.encode("dog at the bottom")[0]


def test_missing_image_is_an_error_unless_skipping(root, tokenizer):
    path = root / helpers.REFER_IMAGE_DIR / "COCO_train2014_000000000001.jpg"
    path.unlink()
    with pytest.raises(LAVTUserError, match=r"000000000001\.jpg .image_id 1, ref_id 1, split train. does not exist"):
        _dataset(root, tokenizer)
    ds = _dataset(root, tokenizer, split="test", skip_unreadable=True)
    assert ds.skipped == 0 and ds.num_refs == 2  # the test split does not use image 1
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*000000000001\.jpg .missing."):
        with pytest.raises(LAVTUserError, match="no refs left"):
            _dataset(root, tokenizer, skip_unreadable=True)


def test_corrupt_image_skipped_and_counted(root, tokenizer):
    path = root / helpers.REFER_IMAGE_DIR / "COCO_train2014_000000000002.jpg"
    path.write_bytes(path.read_bytes()[:150])
    ds = _dataset(root, tokenizer, split="test", mode="eval")  # not checked up front...
    with pytest.raises(LAVTUserError, match=r"000000000002\.jpg .image_id 2. cannot be decoded"):
        ds[0]  # ...but reading it names the file
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*000000000002\.jpg"):
        with pytest.raises(LAVTUserError, match="no refs left"):
            _dataset(root, tokenizer, split="test", skip_unreadable=True)

"""The refer-format reader on a hand-made fixture: index, masks (both modes), bad input, `lavt data info`."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

import helpers
from lavt.cli import main
from lavt.data.info import dataset_info
from lavt.data.refer import Refer, decode_segmentation
from lavt.errors import LAVTUserError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture()
def root(tmp_path):
    return helpers.build_refer_dataset(tmp_path / "data")


def test_index_and_fields(root):
    refer = Refer(root, "refcoco", "unc")
    assert len(refer.refs) == 5 and len(refer.sentences) == 11 and len(refer.anns) == 5
    assert refer.split_names() == ["train", "val", "testA", "testB"]
    assert refer.ref_ids("train") == [1, 2]
    assert refer.ref_ids("testA") == [4] and refer.ref_ids("test") == [4, 5]
    assert refer.image_ids([1, 2, 3]) == [1]
    assert refer.image_path(1) == root / "images/mscoco/images/train2014/COCO_train2014_000000000001.jpg"
    assert refer.load_image(2).size == (32, 48)
    assert refer.sentence_ref[3] == 1 and refer.categories[2] == "dog"
    assert {s: c for s, c in refer.split_counts().items()} == helpers.REFER_COUNTS
    with pytest.raises(LAVTUserError, match="split 'testC' has no refs"):
        refer.ref_ids("testC")


@pytest.mark.parametrize("mode", ["any", "official"])
def test_masks_match_hand_drawn(root, mode):
    refer = Refer(root, "refcoco", "unc")
    expected = helpers.refer_expected_masks()
    for ref_id, ref in refer.refs.items():
        mask = refer.mask(ref_id, mode)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected[ref["ann_id"]][mode], err_msg=f"ref {ref_id} {mode}")


def test_overlapping_parts_differ_between_modes(root):
    refer = Refer(root, "refcoco", "unc")
    any_mask, official = refer.mask(1, "any"), refer.mask(1, "official")
    overlap = np.zeros_like(any_mask)
    overlap[10:20, 15:20] = 1  # the two rectangles overlap on x 15..19, y 10..19
    np.testing.assert_array_equal(any_mask - official, overlap)
    with pytest.raises(LAVTUserError, match="mask_mode"):
        refer.mask(1, "all")


def test_decode_rejects_broken_segmentations():
    with pytest.raises(ValueError, match="coordinates"):
        decode_segmentation([[1, 2, 3, 4]], 10, 10)
    with pytest.raises(ValueError, match="RLE runs cover"):
        decode_segmentation({"size": [10, 10], "counts": [5, 5]}, 10, 10)
    with pytest.raises(ValueError, match="differs from the image size"):
        decode_segmentation({"size": [4, 25], "counts": [50, 50]}, 10, 10)


def test_python2_style_latin1_pickle(root):
    # Python 2 byte strings with non-ASCII content need latin1 decoding.
    path = root / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    refs[0]["sentences"][0]["raw"] = "caf\xe9 man"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert Refer(root, "refcoco", "unc").sentences[1]["raw"] == "caf\xe9 man"


# ----------------------------------------------------------------------------- bad input
def _rewrite_refs(root, change):
    path = root / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    change(refs)
    path.write_bytes(pickle.dumps(refs, protocol=2))


def _rewrite_instances(root, change):
    path = root / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    change(instances)
    path.write_text(json.dumps(instances))


def test_missing_root_and_files(root, tmp_path):
    with pytest.raises(LAVTUserError, match="data root .* does not exist"):
        Refer(tmp_path / "nowhere", "refcoco", "unc")
    with pytest.raises(LAVTUserError, match=r"dataset folder .*refcoco\+ does not exist"):
        Refer(root, "refcoco+", "unc")
    with pytest.raises(LAVTUserError, match=r"refs\(umd\)\.p does not exist \(found: refs\(unc\)\.p\)"):
        Refer(root, "refcoco", "umd")
    (root / "refcoco" / "instances.json").unlink()
    with pytest.raises(LAVTUserError, match="instances.json does not exist"):
        Refer(root, "refcoco", "unc")


def test_corrupt_annotation_files(root):
    refs_file = root / "refcoco" / "refs(unc).p"
    good = refs_file.read_bytes()
    refs_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(LAVTUserError, match=r"cannot read refs file .*refs\(unc\)\.p"):
        Refer(root, "refcoco", "unc")
    refs_file.write_bytes(good)
    (root / "refcoco" / "instances.json").write_text('{"images": [')
    with pytest.raises(LAVTUserError, match="instances.json: not valid JSON"):
        Refer(root, "refcoco", "unc")


def test_refs_pickle_cannot_run_code(root):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(root),))

    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(LAVTUserError, match="refuses to load shutil.rmtree"):
        Refer(root, "refcoco", "unc")
    assert root.exists()


def test_ref_pointing_to_missing_annotation(root):
    _rewrite_refs(root, lambda refs: refs[2].update(ann_id=999))
    with pytest.raises(LAVTUserError, match=r"refs\(unc\)\.p: ref_id 3 points to ann_id 999"):
        Refer(root, "refcoco", "unc")


def test_ref_pointing_to_missing_image(root):
    _rewrite_instances(root, lambda inst: inst.update(images=inst["images"][:1]))
    with pytest.raises(LAVTUserError, match="ref_id 4 points to image_id 2"):
        Refer(root, "refcoco", "unc")


def test_empty_expression(root):
    _rewrite_refs(root, lambda refs: refs[1]["sentences"][1].update(raw="  "))
    with pytest.raises(LAVTUserError, match=r"refs\(unc\)\.p: ref_id 2, sent_id 5 has an empty expression"):
        Refer(root, "refcoco", "unc")


def test_record_missing_fields(root):
    _rewrite_refs(root, lambda refs: refs[0].pop("sentences"))
    with pytest.raises(LAVTUserError, match="record 0 .ref_id 1. lacks sentences"):
        Refer(root, "refcoco", "unc")


def test_unusable_segmentation_names_record(root):
    _rewrite_instances(root, lambda inst: inst["annotations"][1].update(segmentation=[[1, 2]]))
    refer = Refer(root, "refcoco", "unc")
    with pytest.raises(LAVTUserError, match="annotation 102 .ref_id 2. has an unusable segmentation"):
        refer.mask(2)


def test_missing_and_corrupt_images(root):
    refer = Refer(root, "refcoco", "unc")
    path = refer.image_path(2)
    path.write_bytes(path.read_bytes()[:200])  # truncated JPEG
    assert refer.check_image(2, decode=False) is None
    assert refer.check_image(2) not in (None, "missing")
    with pytest.raises(LAVTUserError, match=r"COCO_train2014_000000000002\.jpg .image_id 2. cannot be decoded"):
        refer.load_image(2)
    path.unlink()
    assert refer.check_image(2) == "missing"
    with pytest.raises(LAVTUserError, match=r"COCO_train2014_000000000002\.jpg .image_id 2. does not exist"):
        refer.load_image(2)


# ----------------------------------------------------------------------------- data info
def test_info_counts_and_published_check(root):
    info = dataset_info(root, "refcoco", "unc")
    assert {s: (i.refs, i.expressions, i.images) for s, i in info.splits.items()} == helpers.REFER_COUNTS
    assert not info.missing_images and not info.unreadable_images
    assert len(info.warnings) == 4 and not info.ok  # the fixture is not the real RefCOCO
    assert "split train has 2 refs / 5 expressions / 1 images; published 42404 / 120624 / 16994" in info.warnings[0]
    text = info.format()
    assert "42404 / 120624 / 16994   <- differs" in text


def test_info_without_published_sizes(tmp_path):
    root = helpers.build_refer_dataset(tmp_path / "d", dataset="mydata")
    (root / "images" / "mscoco").rename(root / "images" / "other")
    info = dataset_info(root, "mydata", "unc", image_dir=root / "images/other/images/train2014")
    assert info.ok and info.published is None
    assert "no published sizes for mydata" in info.format()


def test_info_cli_names_missing_and_unreadable_images(root, capsys):
    image_dir = root / helpers.REFER_IMAGE_DIR
    (image_dir / "COCO_train2014_000000000001.jpg").unlink()
    broken = image_dir / "COCO_train2014_000000000002.jpg"
    broken.write_bytes(b"not an image")
    code = main(["data", "info", "--data-root", str(root), "--dataset", "refcoco", "--split-by", "unc",
                 "--check-images", "decode"])
    out = capsys.readouterr()
    assert code == 1
    assert "1 missing, 1 unreadable" in out.out
    assert "missing: " in out.out and "COCO_train2014_000000000001.jpg" in out.out
    assert "unreadable: " in out.out and "COCO_train2014_000000000002.jpg" in out.out
    assert "warning: split val has 1 refs" in out.err


def test_info_cli_bad_root_is_a_clean_error(tmp_path, capsys):
    code = main(["data", "info", "--data-root", str(tmp_path / "none"), "--dataset", "refcoco"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: data root")

"""`lavt data synth --style aerial`: synthrs in the RRSIS-D layout, the same files for a seed, and
every expression checked with this test's own reading of the written masks."""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from lavt.cli import main
from lavt.data.grefcoco import open_refer
from lavt.data.refer import decode_segmentation
from lavt.data.rrsis import RRSISDRefer
from lavt.data.synthref.aerial import generate_aerial
from lavt.data.synthref.aerial_scenes import ROOF_COLOURS, VEHICLE_COLOURS

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
CELLS = {"upper left": (0, 0), "top": (1, 0), "upper right": (2, 0), "left": (0, 1), "centre": (1, 1), "right": (2, 1),
         "lower left": (0, 2), "bottom": (1, 2), "lower right": (2, 2)}
NOUNS = {"group of trees": "tree", "vehicle": "vehicle", "building": "building", "storage tank": "storage tank",
         "tennis court": "tennis court"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aerial")
    generate_aerial(out, seed=3, num_images=12)
    return out


def test_same_seed_same_files(root: Path, tmp_path: Path) -> None:
    generate_aerial(tmp_path, seed=3, num_images=12)
    for rel in ("synthrs/refs(unc).p", "synthrs/instances.json", "images/synthrs/JPEGImages/synthrs_000007.jpg"):
        assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), rel
    generate_aerial(tmp_path / "other", seed=4, num_images=3)
    assert (tmp_path / "other/synthrs/instances.json").read_bytes() != (root / "synthrs/instances.json").read_bytes()


def test_rrsisd_layout_with_rle_list_segmentations(root: Path) -> None:
    instances = json.loads((root / "synthrs/instances.json").read_text())
    sizes = {i["id"]: (i["height"], i["width"]) for i in instances["images"]}
    for ann in instances["annotations"]:
        (rle,) = ann["segmentation"]
        assert isinstance(rle["counts"], str) and tuple(rle["size"]) == sizes[ann["image_id"]]
    refer = open_refer(root, "synthrs", "unc")
    assert isinstance(refer, RRSISDRefer) and refer.image_dir == root / "images/synthrs/JPEGImages"
    assert set(refer.split_names()) == {"train", "val", "test"}
    for image_id, ref_ids in refer.image_refs.items():
        masks = [refer.mask(r).astype(int) for r in ref_ids]
        assert all(m.any() for m in masks) and np.sum(masks, axis=0).max() == 1  # objects never overlap
        assert refer.load_image(image_id).size == sizes[image_id][::-1]


class Seen:
    """One annotated object as this test reads it from the written files."""

    def __init__(self, category: str, mask: np.ndarray, pixels: np.ndarray, ann_id: int) -> None:
        ys, xs = np.nonzero(mask)
        self.category, self.ann_id, self.area = category, ann_id, len(xs)
        self.centre = (float(xs.mean()), float(ys.mean()))
        palette = VEHICLE_COLOURS if category == "vehicle" else ROOF_COLOURS
        median = np.median(pixels[mask.astype(bool)], axis=0)
        self.colour = min(palette, key=lambda c: float(np.sum((np.asarray(palette[c]) - median) ** 2)))


def _objects(refer: RRSISDRefer, image_id: int) -> list[Seen]:
    h, w = refer.images[image_id]["height"], refer.images[image_id]["width"]
    pixels = np.asarray(refer.load_image(image_id), dtype=np.float64)
    return [Seen(refer.categories[a["category_id"]], decode_segmentation(a["segmentation"], h, w), pixels, a["id"])
            for a in refer.anns.values() if a["image_id"] == image_id]


def _read(text: str, objects: list[Seen], size: int) -> list[int]:
    """Annotation ids that `text` can mean, by this test's own rules."""
    nouns = "|".join(sorted(NOUNS, key=len, reverse=True))
    if m := re.fullmatch(rf"the ({nouns}) (?:closest to|nearest) (the .+)", text):
        (anchor,) = _read(m.group(2), objects, size)
        a = next(o for o in objects if o.ann_id == anchor)
        same = [o for o in objects if o.category == NOUNS[m.group(1)] and o is not a]
        return [min(same, key=lambda o: math.dist(o.centre, a.centre)).ann_id]
    if m := re.fullmatch(r"the building with the (\w+) roof|the (\w+)-roofed building", text):
        return [o.ann_id for o in objects if o.category == "building" and o.colour == (m.group(1) or m.group(2))]
    if m := re.fullmatch(rf"the ({nouns}) at the (.+)", text):
        words, cell = m.group(1), CELLS[m.group(2)]
    elif m := re.fullmatch(rf"the (.+ )?({nouns})", text):
        head, words = (m.group(1) or "").strip(), m.group(2)
        cell = CELLS.get(head)
    else:
        raise AssertionError(f"unread expression {text!r}")
    same = [o for o in objects if o.category == NOUNS[words]]
    if cell is not None:
        return [o.ann_id for o in same if (int(o.centre[0] * 3 // size), int(o.centre[1] * 3 // size)) == cell]
    if not head:
        return [o.ann_id for o in same]
    if head in ("largest", "smallest"):
        return [(max if head == "largest" else min)(same, key=lambda o: o.area).ann_id]
    if head in ("leftmost", "rightmost", "topmost", "lowest"):
        axis, sign = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "lowest": (1, 1)}[head]
        return [max(same, key=lambda o: sign * o.centre[axis]).ann_id]
    return [o.ann_id for o in same if o.colour == head]  # "the red vehicle"


def test_every_expression_singles_out_its_object(root: Path) -> None:
    refer = open_refer(root, "synthrs", "unc")
    kinds: set[str] = set()
    checked = 0
    for image_id, ref_ids in refer.image_refs.items():
        objects = _objects(refer, image_id)
        for ref_id in ref_ids:
            ref = refer.refs[ref_id]
            for sentence in ref["sentences"]:
                kinds.add(sentence["kind"])
                meant = _read(sentence["raw"], objects, refer.images[image_id]["width"])
                assert meant == [ref["ann_id"]], (sentence["raw"], meant, ref["ann_id"])
                checked += 1
    assert kinds == {"attribute", "position", "relation"} and checked > 50


def test_cli_writes_synthrs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", "--style", "aerial", "--out", str(tmp_path), "--images", "5", "--image-size", "96-112"]) == 0
    out = capsys.readouterr().out
    assert "synthrs/refs(unc).p" in out and "5 images in" in out
    refs = pickle.loads((tmp_path / "synthrs/refs(unc).p").read_bytes())
    assert refs and all(r["sentences"] for r in refs)
    sizes = {i["width"] for i in json.loads((tmp_path / "synthrs/instances.json").read_text())["images"]}
    assert sizes and all(96 <= s <= 112 for s in sizes)
    assert main(["data", "synth", "--style", "aerial", "--out", str(tmp_path), "--generalized"]) == 2
    assert "leave it out with --style aerial" in capsys.readouterr().err

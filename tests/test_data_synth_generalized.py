"""`lavt data synth --generalized`: synthgref's multi-target and no-target expressions checked against
the scenes by a reading written here (attributes from the annotations, words from the text), the mix
of expressions, synthref's files unchanged, and the reader on the result."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lavt.cli import main
from lavt.data.grefcoco import open_refer
from lavt.data.info import dataset_info
from lavt.data.synthref import GROUP_A, GROUP_B, SHAPES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ARGS = ["--seed", "5", "--images", "60", "--image-size", "40-56"]
SHAPE_WORDS = {"circle": {"circles", "discs", "circle", "disc"}, "square": {"squares", "blocks", "square", "block"},
               "triangle": {"triangles", "triangle"}, "star": {"stars", "star"}, "ring": {"rings", "donuts", "ring", "donut", "hoop"},
               "cross": {"crosses", "cross", "plus"}}
COUNT_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "both": 2}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("gsynth")
    assert main(["data", "synth", "--out", str(base / "g"), *ARGS, "--generalized"]) == 0
    assert main(["data", "synth", "--out", str(base / "plain"), *ARGS]) == 0
    return base / "g", base / "plain"


@pytest.fixture(scope="module")
def data(roots: tuple[Path, Path]) -> tuple[list[dict], dict[int, list[dict]], dict[int, dict]]:
    root = roots[0]
    grefs = json.loads((root / "synthgref" / "grefs(unc).json").read_text())
    instances = json.loads((root / "synthgref" / "instances.json").read_text())
    anns: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    return grefs, anns, {im["id"]: im for im in instances["images"]}


def _attrs(ann: dict) -> dict[str, str]:
    return {"shape": SHAPES[ann["category_id"] - 1], "colour": ann["color"], "size": ann["size"]}


def _fits(ann: dict, target: dict[str, str]) -> bool:
    return all(_attrs(ann)[k] == v for k, v in target.items())


def _in_half(ann: dict, direction: str, image: dict) -> bool:
    x, y = ann["center"]
    return {"left": x < image["width"] / 2, "right": x > image["width"] / 2,
            "top": y < image["height"] / 2, "bottom": y > image["height"] / 2}[direction]


def test_synthref_files_are_unchanged(roots: tuple[Path, Path]) -> None:
    g, plain = roots
    for name in ("synthref/refs(unc).p", "synthref/instances.json"):
        assert (g / name).read_bytes() == (plain / name).read_bytes(), name
    assert sorted(p.name for p in (g / "images/synthref").iterdir()) == sorted(p.name for p in (plain / "images/synthref").iterdir())
    assert (g / "synthgref/instances.json").read_bytes() == (g / "synthref/instances.json").read_bytes()
    assert not (plain / "synthgref").exists()


def test_multi_target_expressions_fit_exactly_their_set(data) -> None:
    grefs, anns, images = data
    multi = [r for r in grefs if len(r["ann_id"]) > 1]
    assert multi and any(r["meaning"]["kind"] == "half" for r in multi)
    for ref in multi:
        meaning, scene = ref["meaning"], anns[ref["image_id"]]
        fitting = {a["id"] for a in scene if _fits(a, meaning["target"])}
        if meaning["kind"] == "half":
            fitting = {a["id"] for a in scene if a["id"] in fitting and _in_half(a, meaning["direction"], images[ref["image_id"]])}
        assert fitting == set(ref["ann_id"]) and not ref["no_target"], ref
        if ref["split"] in ("testA", "testB"):
            group = GROUP_A if ref["split"] == "testA" else GROUP_B
            assert all(_attrs(a)["shape"] in group for a in scene if a["id"] in fitting)
        for sentence in ref["sentences"]:
            words = set(sentence["sent"].split())
            if "colour" in meaning["target"]:
                assert meaning["target"]["colour"] in words or (meaning["target"]["colour"] == "purple" and "violet" in words)
            if "shape" in meaning["target"]:
                assert words & SHAPE_WORDS[meaning["target"]["shape"]], sentence
            counted = [COUNT_WORDS[w] for w in words if w in COUNT_WORDS]
            assert counted in ([], [len(ref["ann_id"])]), sentence


def test_no_target_expressions_fit_nothing_but_use_the_scene_words(data) -> None:
    grefs, anns, _ = data
    none = [r for r in grefs if r["no_target"]]
    assert none
    for ref in none:
        scene, target = anns[ref["image_id"]], ref["meaning"]["target"]
        assert ref["ann_id"] == [-1] and len(target) >= 2
        assert not any(_fits(a, target) for a in scene), ref
        for key, value in target.items():  # each word names something in the image
            assert any(_attrs(a)[key] == value for a in scene), (ref, key)


def test_the_mix_is_like_grefcoco(data) -> None:
    grefs, _, _ = data
    count = {"none": 0, "multi": 0, "single": 0}
    for r in grefs:
        kind = "none" if r["no_target"] else "multi" if len(r["ann_id"]) > 1 else "single"
        count[kind] += len(r["sentences"])
    total = sum(count.values())
    assert 0.15 <= count["none"] / total <= 0.25, count
    assert 0.20 <= count["multi"] / total <= 0.30, count


def test_reader_and_info_on_synthgref(roots: tuple[Path, Path], data) -> None:
    root = roots[0]
    refer = open_refer(root, "synthgref", "unc")
    assert refer.image_dir == root / "images/synthref"
    grefs = data[0]
    multi = next(r for r in grefs if len(r["ann_id"]) > 1)
    union = np.zeros_like(refer.mask(multi["ref_id"]))
    for ann_id in multi["ann_id"]:
        single = next(r for r in grefs if r["ann_id"] == [ann_id]) if any(r["ann_id"] == [ann_id] for r in grefs) else None
        if single is not None:
            union |= refer.mask(single["ref_id"])
    assert (refer.mask(multi["ref_id"]) >= union).all() and refer.mask(multi["ref_id"]).sum() > 0
    info = dataset_info(root, "synthgref", "unc")
    assert info.ok and sum(s.no_target for s in info.splits.values()) == sum(len(r["sentences"]) for r in grefs if r["no_target"])

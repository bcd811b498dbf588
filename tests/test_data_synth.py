"""The synthref generator: layout, masks, determinism, options, and that every expression is unique.

Uniqueness is checked by an interpreter written here from the wording alone (its own word
lists, its own reading of each template) against the annotations, not by the generator's
own `resolve`.
"""
from __future__ import annotations

import json
import pickle
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image, ImageDraw

import helpers
from lavt.cli import main
from lavt.data import ExpressionTokenizer, ReferDataset, ReferImageGroups, default_text_encoder_dir
from lavt.data.info import dataset_info
from lavt.data.refer import Refer, decode_segmentation
from lavt.data.synthref import COLOURS, GROUP_A, GROUP_B, generate, sample_scene
from lavt.errors import LAVTUserError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    code = main(["data", "synth", "--out", str(root), "--seed", "7", "--images", "40"])
    assert code == 0
    return root


@pytest.fixture(scope="module")
def refer(synth_root):
    return Refer(synth_root, "synthref", "unc")


# ----------------------------------------------------------------------------- an independent reader
SIZE_WORDS = {"large": "large", "big": "large", "larger": "large", "bigger": "large",
              "small": "small", "little": "small", "smaller": "small"}
COLOUR_WORDS = {c: c for c in ("red", "green", "blue", "yellow", "purple", "orange", "white")} | {"violet": "purple"}
SHAPE_WORDS = {"circle": "circle", "disc": "circle", "square": "square", "block": "square",
               "triangle": "triangle", "star": "star", "ring": "ring", "donut": "ring", "hoop": "ring",
               "cross": "cross", "plus_sign": "cross"}
GENERIC = {"shape", "object", "thing", "figure", "one"}
SUPERLATIVE = {"leftmost": "left", "left-most": "left", "rightmost": "right", "right-most": "right",
               "topmost": "top", "highest": "top", "bottom-most": "bottom", "lowest": "bottom"}
SUFFIX = {"on the far left": "left", "furthest to the left": "left", "on the far right": "right",
          "furthest to the right": "right", "at the top": "top", "nearest the top": "top",
          "at the bottom": "bottom", "nearest the bottom": "bottom"}
PAIR_SUFFIX = {"on the left": "left", "on the right": "right"}
PAIR_PREFIX = {"left": "left", "right": "right", "upper": "top", "top": "top", "lower": "bottom", "bottom": "bottom"}
RELATIONS = {"to the left of": "left", "on the left of": "left", "left of": "left", "to the right of": "right",
             "on the right of": "right", "right of": "right", "that is above": "above", "above": "above",
             "over": "above", "below": "below", "under": "below", "beneath": "below", "closest to": "near",
             "nearest to": "near", "next to": "near", "nearest": "near"}


def parse_np(text: str) -> tuple[dict, bool]:
    """'big red circle' -> ({'size': 'large', 'colour': 'red', 'shape': 'circle'}, comparative)."""
    text = text.removeprefix("the ").replace("plus sign", "plus_sign")
    match = re.fullmatch(r"(\w+) that is (\w+)", text)
    if match:
        text = f"{match.group(2)} {match.group(1)}"
    flt, comparative = {}, False
    for word in text.split():
        if word in SIZE_WORDS:
            flt["size"] = SIZE_WORDS[word]
            comparative = word.endswith("er")
        elif word in COLOUR_WORDS:
            flt["colour"] = COLOUR_WORDS[word]
        elif word in SHAPE_WORDS:
            flt["shape"] = SHAPE_WORDS[word]
        elif word not in GENERIC:
            raise AssertionError(f"unknown word {word!r} in {text!r}")
    return flt, comparative


def parse(sent: str) -> tuple:
    """A sentence -> (kind, target filter, direction, anchor filter, comparative, pair-only)."""
    words = sent.split()
    if words[0] == "the" and words[1] in SUPERLATIVE:
        return "position", parse_np(" ".join(words[2:]))[0], SUPERLATIVE[words[1]], None, False, False
    for suffix, direction in {**SUFFIX, **PAIR_SUFFIX}.items():
        if sent.startswith("the ") and sent.endswith(" " + suffix):
            flt = parse_np(sent[4: -len(suffix) - 1])[0]
            return "position", flt, direction, None, False, suffix in PAIR_SUFFIX
    if words[0] == "the" and words[1] in PAIR_PREFIX:
        return "position", parse_np(" ".join(words[2:]))[0], PAIR_PREFIX[words[1]], None, False, True
    for phrase in sorted(RELATIONS, key=len, reverse=True):
        match = re.fullmatch(rf"the (.+?) {phrase} the (.+)", sent)
        if match:
            return ("relation", parse_np(match.group(1))[0], RELATIONS[phrase], parse_np(match.group(2))[0],
                    False, False)
    flt, comparative = parse_np(sent)
    return "attribute", flt, None, None, comparative, False


def check_expression(sent: str, kind: str, target: dict, objects: list[dict]) -> None:
    """Assert that `sent` means exactly `target` among `objects` (dicts with shape/colour/size/x/y)."""
    parsed_kind, flt, direction, anchor, comparative, pair = parse(sent)
    assert parsed_kind == kind, f"{sent!r}: stored kind {kind}, reads as {parsed_kind}"
    members = [o for o in objects if all(o[k] == v for k, v in flt.items())]
    if kind == "attribute":
        assert members == [target], f"{sent!r} fits {len(members)} objects"
        if comparative:
            rest = [o for o in objects if all(o[k] == v for k, v in flt.items() if k != "size")]
            assert len(rest) == 2 and rest[0]["size"] != rest[1]["size"], sent
        return
    assert len(members) >= 2, f"{sent!r}: the attributes alone would do"
    if kind == "position":
        if pair:
            assert len(members) == 2, f"{sent!r} is a two-object phrase but the class has {len(members)}"
        key = {"left": lambda o: o["x"], "right": lambda o: -o["x"], "top": lambda o: o["y"],
               "bottom": lambda o: -o["y"]}[direction]
        best = min(members, key=key)
        assert best is target and sum(key(o) == key(best) for o in members) == 1, sent
        return
    anchors = [o for o in objects if all(o[k] == v for k, v in anchor.items())]
    assert len(anchors) == 1, f"{sent!r}: anchor fits {len(anchors)} objects"
    a = anchors[0]
    candidates = [o for o in members if o is not a]
    if direction == "near":
        dist = lambda o: np.hypot(o["x"] - a["x"], o["y"] - a["y"])  # noqa: E731
        assert min(candidates, key=dist) is target, sent
        assert sorted(dist(o) for o in candidates).count(dist(target)) == 1, sent
        return
    side = {"left": lambda o: a["x"] - o["x"], "right": lambda o: o["x"] - a["x"],
            "above": lambda o: a["y"] - o["y"], "below": lambda o: o["y"] - a["y"]}[direction]
    assert [o for o in candidates if side(o) > 0] == [target], sent


def _objects(refer: Refer, image_id: int) -> dict[int, dict]:
    out = {}
    for ann in refer.anns.values():
        if ann["image_id"] == image_id:
            out[ann["id"]] = {"shape": refer.categories[ann["category_id"]], "colour": ann["color"],
                              "size": ann["size"], "x": ann["center"][0], "y": ann["center"][1]}
    return out


# ----------------------------------------------------------------------------- tests
def test_every_expression_names_exactly_its_object(refer):
    checked = Counter()
    for ref in refer.refs.values():
        objects = _objects(refer, ref["image_id"])
        target = objects[ref["ann_id"]]
        for sentence in ref["sentences"]:
            check_expression(sentence["sent"], sentence["kind"], target, list(objects.values()))
            checked[sentence["kind"]] += 1
    assert min(checked.values()) >= 50, checked  # every kind well represented


def test_the_checker_catches_wrong_expressions():
    a = {"shape": "circle", "colour": "red", "size": "small", "x": 10, "y": 10}
    b = {"shape": "circle", "colour": "blue", "size": "small", "x": 50, "y": 10}
    c = {"shape": "square", "colour": "red", "size": "large", "x": 30, "y": 40}
    objects = [a, b, c]
    check_expression("the red circle", "attribute", a, objects)
    check_expression("the leftmost circle", "position", a, objects)
    check_expression("the circle left of the blue disc", "relation", a, objects)
    for sent, kind in [("the circle", "attribute"), ("the red shape", "attribute"),
                       ("the rightmost circle", "position"), ("the red circle", "position"),
                       ("the circle right of the blue circle", "relation"),
                       ("the shape closest to the circle", "relation")]:
        with pytest.raises(AssertionError):
            check_expression(sent, kind, a, objects)


def test_layout_and_fields(synth_root, refer):
    assert (synth_root / "synthref" / "refs(unc).p").is_file()
    assert (synth_root / "synthref" / "instances.json").is_file()
    assert refer.image_dir == synth_root / "images" / "synthref"
    refs = pickle.loads((synth_root / "synthref" / "refs(unc).p").read_bytes())
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(set(sent_ids)) == len(sent_ids) and len({r["ref_id"] for r in refs}) == len(refs)
    for ref in refs:
        assert set(ref) >= {"ref_id", "ann_id", "image_id", "category_id", "split", "file_name", "sent_ids",
                            "sentences"}
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        assert 1 <= len(ref["sentences"]) <= 3
        assert ref["category_id"] == refer.anns[ref["ann_id"]]["category_id"]
        assert ref["file_name"] == refer.images[ref["image_id"]]["file_name"]
        for s in ref["sentences"]:
            assert set(s) == {"raw", "sent", "tokens", "sent_id", "kind"}
            assert s["sent"] == s["raw"].lower().rstrip(".") and s["tokens"] == s["sent"].split()
        assert len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"])
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}
    instances = json.loads((synth_root / "synthref" / "instances.json").read_text())
    assert [c["name"] for c in instances["categories"]] == ["circle", "square", "triangle", "star", "ring", "cross"]
    for image in instances["images"]:
        assert 160 <= image["width"] <= 256 and 160 <= image["height"] <= 256
        with Image.open(synth_root / "images" / "synthref" / image["file_name"]) as pil:
            assert pil.size == (image["width"], image["height"]) and pil.format == "JPEG"
    per_image = Counter(a["image_id"] for a in instances["annotations"])
    assert set(per_image.values()) <= set(range(2, 7))


def test_masks_match_annotations_and_pixels(synth_root, refer):
    polygons = rles = 0
    for ann in refer.anns.values():
        image = refer.images[ann["image_id"]]
        mask = decode_segmentation(ann["segmentation"], image["height"], image["width"]).astype(bool)
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        if ann["occluded"]:
            rles += 1
            assert isinstance(ann["segmentation"], dict)
        else:
            polygons += 1
            assert isinstance(ann["segmentation"], list)
            # An independent rasteriser (PIL) of the same polygons agrees up to boundary pixels.
            drawn = Image.new("1", (image["width"], image["height"]))
            for part in ann["segmentation"]:
                ImageDraw.Draw(drawn).polygon(part, fill=1)
            drawn = np.asarray(drawn, dtype=bool)
            assert (drawn & mask).sum() / (drawn | mask).sum() > 0.85, ann["id"]
        # The painted pixels inside the mask carry the object's colour (JPEG and shading aside).
        pixels = np.asarray(refer.load_image(ann["image_id"]), dtype=np.float32)
        inner = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1) & np.roll(mask, -2, 1)
        mean = pixels[inner if inner.any() else mask].mean(axis=0)
        assert np.abs(mean - np.array(COLOURS[ann["color"]])).max() < 40, (ann["id"], ann["color"], mean)
    assert polygons > 50 and rles >= 1


def test_rings_show_the_official_overlap_quirk(refer):
    ring = next(r for r in refer.refs.values()
                if refer.categories[r["category_id"]] == "ring" and not refer.anns[r["ann_id"]]["occluded"])
    any_mask, official = refer.mask(ring["ref_id"], "any"), refer.mask(ring["ref_id"], "official")
    assert 0 < (any_mask != official).sum() < 0.1 * any_mask.sum()
    assert (official <= any_mask).all()


def test_language_is_needed(refer):
    """Most images hold several referred objects that share a colour or a shape."""
    by_image = defaultdict(list)
    for ref in refer.refs.values():
        by_image[ref["image_id"]].append(refer.anns[ref["ann_id"]])
    several = [anns for anns in by_image.values() if len(anns) >= 2]
    assert len(several) >= 0.85 * len(by_image)
    shared = [anns for anns in several
              if len({a["color"] for a in anns}) < len(anns) or len({a["category_id"] for a in anns}) < len(anns)]
    assert len(shared) >= 0.75 * len(several)


def test_test_splits_refer_to_their_shape_groups(refer):
    for split, group in (("testA", GROUP_A), ("testB", GROUP_B)):
        ref_ids = refer.ref_ids(split)
        assert ref_ids
        assert {refer.categories[refer.refs[r]["category_id"]] for r in ref_ids} <= set(group)
        for image_id in refer.image_ids(ref_ids):
            shapes = [refer.categories[a["category_id"]] for a in refer.anns.values() if a["image_id"] == image_id]
            assert sum(s in group for s in shapes) >= 2


def test_expressions_fit_the_token_budget(refer):
    tokenizer = ExpressionTokenizer.from_pretrained(default_text_encoder_dir())
    assert not [s["raw"] for s in refer.sentences.values() if tokenizer.is_truncated(s["raw"])]


def test_datasets_read_synthref(synth_root):
    tokenizer = ExpressionTokenizer.from_pretrained(default_text_encoder_dir())
    train = ReferDataset(synth_root, "synthref", "unc", "train", tokenizer=tokenizer, image_size=64)
    item = train[0]
    assert item["image"].shape == (3, 64, 64) and set(item["mask"].unique().tolist()) == {0, 1}
    evaluation = ReferDataset(synth_root, "synthref", "unc", "val", tokenizer=tokenizer, mode="eval",
                              image_size=64, max_images=2)
    assert evaluation.num_images == 2 and len(evaluation) == evaluation.num_expressions
    first = evaluation[0]
    np.testing.assert_array_equal(first["orig_mask"].numpy(), evaluation.refer.mask(first["ref_id"]))


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    generate(tmp_path, seed=3, num_images=12, image_format="png")
    tokenizer = ExpressionTokenizer.from_pretrained(default_text_encoder_dir())
    full = ReferDataset(tmp_path, "synthref", "unc", "train", tokenizer=tokenizer, image_size=32)
    victim = full.refer.image_path(full.refer.refs[full.ref_ids[0]]["image_id"])
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        skipped = ReferDataset(tmp_path, "synthref", "unc", "train", tokenizer=tokenizer, image_size=32,
                               skip_unreadable=True)
    assert skipped.skipped == 1 and skipped.skipped_files[0][0] == victim
    assert skipped.num_images == full.num_images - 1 and 0 < skipped.num_refs < full.num_refs


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", seed=11, num_images=10)
    b = generate(tmp_path / "b", seed=11, num_images=10)
    c = generate(tmp_path / "c", seed=12, num_images=10)
    for name in ("refs(unc).p", "instances.json"):
        assert (a.root / "synthref" / name).read_bytes() == (b.root / "synthref" / name).read_bytes()
        assert (a.root / "synthref" / name).read_bytes() != (c.root / "synthref" / name).read_bytes()
    images_a = sorted(a.image_dir.iterdir())
    assert [p.read_bytes() for p in images_a] == [p.read_bytes() for p in sorted(b.image_dir.iterdir())]


def test_options(tmp_path):
    summary = generate(tmp_path, seed=1, num_images=16, kinds=["attribute", "relation"], objects=(3, 3),
                       image_size=(96, 120), expressions_per_object=2, occlusion=0.0)
    assert summary.kinds["position"] == 0 and summary.kinds["attribute"] > 0 and summary.kinds["relation"] > 0
    refer = Refer(tmp_path, "synthref", "unc")
    assert all(1 <= len(r["sentences"]) <= 2 for r in refer.refs.values())
    assert {s["kind"] for s in refer.sentences.values()} == {"attribute", "relation"}
    assert not any(a["occluded"] for a in refer.anns.values())
    assert set(Counter(a["image_id"] for a in refer.anns.values()).values()) == {3}
    assert all(96 <= i["width"] <= 120 and 96 <= i["height"] <= 120 for i in refer.images.values())
    assert sum(summary.images.values()) == 16 and all(summary.images[s] >= 1 for s in summary.images)
    with pytest.raises(LAVTUserError, match="already exists"):
        generate(tmp_path, seed=1, num_images=2)
    generate(tmp_path, seed=1, num_images=2, overwrite=True)
    assert len(list((tmp_path / "images" / "synthref").iterdir())) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"kinds": ["colour"]}, "kinds must be"),
    ({"objects": (3, 2)}, "objects must satisfy"),
    ({"image_size": (20, 40)}, "image_size must satisfy"),
    ({"num_images": 0}, "num_images"),
    ({"occlusion": 2.0}, "occlusion"),
    ({"image_format": "gif"}, "image_format"),
    ({"split_fractions": (1, 0, 0)}, "split_fractions"),
])
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(LAVTUserError, match=message):
        generate(tmp_path, **{"num_images": 4, **kwargs})


def test_info_on_synthref(synth_root, capsys):
    info = dataset_info(synth_root, "synthref", "unc", check_images="decode")
    assert info.ok and sum(i.images for i in info.splits.values()) == 40
    assert set(info.splits["train"].kinds) == {"attribute", "position", "relation"}
    assert main(["data", "info", "--data-root", str(synth_root), "--dataset", "synthref"]) == 0
    assert "expression kinds: attribute" in capsys.readouterr().out


def test_occluded_objects_are_covered_by_another_colour():
    """A same-coloured occluder would merge with what it covers into one blob."""
    rng = np.random.default_rng(0)
    covered_pairs = 0
    for _ in range(60):
        scene = sample_scene(rng, 160, 160, 4, None, occlusion=1.0)
        for i, low in enumerate(scene):
            for high in scene[i + 1:]:
                if (low.full & high.full).any():
                    covered_pairs += 1
                    assert low.colour != high.colour
                    assert low.visible.sum() >= 0.6 * low.full.sum()
    assert covered_pairs >= 10


def test_datasets_select_expression_kinds(synth_root, tmp_path):
    tokenizer = ExpressionTokenizer.from_pretrained(default_text_encoder_dir())
    full = ReferDataset(synth_root, "synthref", "unc", "val", tokenizer=tokenizer, mode="eval", image_size=32)
    only = ReferDataset(synth_root, "synthref", "unc", "val", tokenizer=tokenizer, mode="eval", image_size=32,
                        kinds=["relation"])
    assert {full[i]["kind"] for i in range(len(full))} == {"attribute", "position", "relation"}
    assert {only[i]["kind"] for i in range(len(only))} == {"relation"}
    expected = sum(s["kind"] == "relation" for r in full.ref_ids for s in full.refer.refs[r]["sentences"])
    assert len(only) == only.num_expressions == expected < len(full)
    groups = ReferImageGroups(synth_root, "synthref", "unc", "val", tokenizer=tokenizer, image_size=32,
                              kinds=("attribute",))
    assert {k for i in range(len(groups)) for k in groups[i]["kinds"]} == {"attribute"}
    fixture_root = helpers.build_refer_dataset(tmp_path / "fixture")
    with pytest.raises(LAVTUserError, match="no 'kind' field"):
        ReferDataset(fixture_root, "refcoco", "unc", "train", tokenizer=tokenizer, kinds=["relation"])

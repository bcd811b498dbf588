"""`synthrs`: generated aerial scenes in the RRSIS-D layout, with expressions of the kinds RRSIS uses.

Output under the data root (read with `--dataset synthrs`, `lavt.data.rrsis`)::

    <root>/synthrs/refs(unc).p            splits train / val / test, by image
    <root>/synthrs/instances.json         segmentations: a list holding one compressed RLE
    <root>/images/synthrs/JPEGImages/     the scenes (`aerial_scenes`)

Expressions (`kind` in each sentence): attribute ("the red vehicle", "the largest storage
tank", "the tennis court"), position ("the tank at the lower left", "the leftmost vehicle")
and relation ("the vehicle closest to the largest building"). Each is a `spec` that `resolve`
reads back on the scene, independently of how it was proposed; it is kept only when it picks
out exactly its object, with clear margins for sizes, positions and distances. Each image
draws from its own RNG seeded by (seed, image index): the same seed gives the same files.
synthref's own generator and files are untouched.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from lavt.data.synthref.aerial_scenes import CATEGORIES, AerialObject, render, sample_scene
from lavt.data.synthref.writer import prepare_output, write_refer_files
from lavt.errors import LAVTUserError

DATASET = "synthrs"
SPLITS = ("train", "val", "test")
REGIONS = {  # 3 x 3 grid cell (column, row) -> words
    (0, 0): "upper left", (1, 0): "top", (2, 0): "upper right", (0, 1): "left", (1, 1): "centre", (2, 1): "right",
    (0, 2): "lower left", (1, 2): "bottom", (2, 2): "lower right",
}
EXTREMES = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "lowest": (1, 1)}
SIZE_MARGIN = 1.4  # the largest is at least this much larger than the next (smallest: smaller)
POSITION_MARGIN = 0.06  # of the side: distance to a cell border, gap between extremes
NEAR_MARGIN = 1.3  # the closest is at least this much closer than the next
Spec = tuple


def resolve(spec: Spec, objects: list[AerialObject], size: int) -> list[int]:
    """Indices of the objects that `spec` describes, read on the scene."""
    kind, category = spec[0], spec[1]
    same = [i for i, o in enumerate(objects) if o.category == category]
    if kind == "category":
        return same
    if kind == "colour":
        return [i for i in same if objects[i].colour == spec[2]]
    if kind == "size":
        if len(same) < 2:
            return same
        order = sorted(same, key=lambda i: objects[i].area, reverse=spec[2] == "largest")
        a, b = objects[order[0]].area, objects[order[1]].area
        clear = a >= SIZE_MARGIN * b if spec[2] == "largest" else b >= SIZE_MARGIN * a
        return [order[0]] if clear else order[:2]
    if kind == "region":  # an object near the cell's border counts as possibly there
        return [i for i in same if _in_cell(objects[i], spec[2], size, POSITION_MARGIN)]
    if kind == "extreme":
        axis, sign = EXTREMES[spec[2]]
        order = sorted(same, key=lambda i: -sign * objects[i].centre[axis])
        if len(order) >= 2 and abs(objects[order[0]].centre[axis] - objects[order[1]].centre[axis]) < POSITION_MARGIN * size:
            return order[:2]
        return order[:1]
    if kind == "closest":
        anchors = resolve(spec[2], objects, size)
        if len(anchors) != 1:
            return []
        ax, ay = objects[anchors[0]].centre
        order = sorted((math.dist((ax, ay), objects[i].centre), i) for i in same if i != anchors[0])
        if len(order) >= 2 and order[1][0] < NEAR_MARGIN * order[0][0]:
            return [order[0][1], order[1][1]]
        return [i for _, i in order[:1]]
    raise ValueError(f"unknown spec kind {kind!r}")


def _in_cell(obj: AerialObject, words: str, size: int, margin: float) -> bool:
    """Whether the object's centre lies in the grid cell `words`, grown by `margin` of the side
    (shrunk when `margin` is negative)."""
    col, row = next(c for c, w in REGIONS.items() if w == words)
    x, y = (v / size * 3 for v in obj.centre)
    m = 3 * margin
    return col - m < x < col + 1 + m and row - m < y < row + 1 + m


def describe(spec: Spec, rng: np.random.Generator) -> str:
    """Words for `spec` (a few phrasings drawn by `rng`)."""
    kind, category = spec[0], spec[1]
    noun = "group of trees" if category == "tree" else category
    if kind == "category":
        return f"the {noun}"
    if kind == "colour":
        if category == "building":
            return str(rng.choice([f"the building with the {spec[2]} roof", f"the {spec[2]}-roofed building"]))
        return f"the {spec[2]} {noun}"
    if kind == "size":
        return f"the {spec[2]} {noun}"
    if kind == "region":
        corner = " " in spec[2]  # "the lower left tank" reads well, "the top tank" does not
        return str(rng.choice([f"the {noun} at the {spec[2]}"] + ([f"the {spec[2]} {noun}"] if corner else [])))
    if kind == "extreme":
        return f"the {spec[2]} {noun}"
    if kind == "closest":
        return str(rng.choice([f"the {noun} closest to {describe(spec[2], rng)}", f"the {noun} nearest {describe(spec[2], rng)}"]))
    raise ValueError(f"unknown spec kind {kind!r}")


def _anchor_specs(objects: list[AerialObject], size: int) -> list[tuple[int, Spec]]:
    """(index, spec) of objects that an attribute alone singles out: anchors for relations."""
    found = []
    for i, obj in enumerate(objects):
        for spec in (("category", obj.category), ("size", obj.category, "largest")):
            if resolve(spec, objects, size) == [i]:
                found.append((i, spec))
                break
    return found


def candidate_specs(index: int, objects: list[AerialObject], size: int) -> dict[str, list[Spec]]:
    """kind -> specs that single out object `index` (each checked with `resolve`)."""
    obj = objects[index]
    c = obj.category
    proposals = {
        "attribute": [("category", c), ("size", c, "largest"), ("size", c, "smallest")]
        + ([("colour", c, obj.colour)] if obj.colour else []),
        "position": [("region", c, words) for words in REGIONS.values()] + [("extreme", c, e) for e in EXTREMES],
        "relation": [("closest", c, spec) for a, spec in _anchor_specs(objects, size) if a != index and spec[1] != c],
    }
    # a position must also hold clearly: the object well inside its cell
    proposals["position"] = [s for s in proposals["position"] if s[0] != "region" or _in_cell(obj, s[2], size, -POSITION_MARGIN)]
    return {kind: [s for s in specs if resolve(s, objects, size) == [index]] for kind, specs in proposals.items()}


@dataclass
class AerialSummary:
    """What `generate_aerial` wrote."""

    root: Path
    refs_file: Path
    image_dir: Path
    counts: dict[str, list[int]] = field(default_factory=dict)  # split -> [images, refs, expressions]
    kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def kinds_total(self) -> int:
        return sum(self.kinds.values())

    def format(self) -> str:
        lines = [f"wrote {self.refs_file}, {self.refs_file.parent / 'instances.json'} and images under {self.image_dir}",
                 f"{'split':<8}{'images':>8}{'refs':>8}{'expressions':>13}"]
        lines += [f"{s:<8}{c[0]:>8}{c[1]:>8}{c[2]:>13}" for s, c in self.counts.items()]
        lines.append("expression kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items())))
        lines.append(f"{sum(c[0] for c in self.counts.values())} images in {self.seconds:.1f} s")
        return "\n".join(lines)


def generate_aerial(out_root: str | Path, *, seed: int = 0, num_images: int = 1000, image_size: tuple[int, int] = (128, 160),
                    expressions_per_object: int = 2, overwrite: bool = False) -> AerialSummary:
    """Write `synthrs` under `out_root` (see module doc); 80/10/10 train/val/test by image."""
    low, high = (int(v) for v in image_size)
    if not 64 <= low <= high:
        raise LAVTUserError(f"image_size must be MIN-MAX with 64 <= MIN <= MAX for aerial scenes, got {low}-{high}")
    if int(num_images) < 1 or int(expressions_per_object) < 1:
        raise LAVTUserError("--images and --expressions-per-object must be at least 1")
    t0 = time.time()
    root = Path(out_root)
    data_dir, image_dir = root / DATASET, root / "images" / DATASET / "JPEGImages"
    refs_file = data_dir / "refs(unc).p"
    prepare_output(root, data_dir, image_dir, refs_file, overwrite=overwrite, stale=f"{DATASET}_*.jpg")
    n = int(num_images)
    n_val = n_test = max(1, round(0.1 * n)) if n >= 3 else 0
    plan = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    plan = [plan[i] for i in np.random.default_rng([int(seed), 0]).permutation(n)]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    summary = AerialSummary(root=root, refs_file=refs_file, image_dir=image_dir, counts={s: [0, 0, 0] for s in SPLITS})
    for index, split in enumerate(plan):
        rng = np.random.default_rng([int(seed), 1, index])
        size = int(rng.integers(low, high + 1))
        scene = sample_scene(rng, size)
        picture = render(scene, rng)
        image_id, name = index + 1, f"{DATASET}_{index + 1:06d}.jpg"
        picture.save(image_dir / name, quality=90)
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        summary.counts[split][0] += 1
        for k, obj in enumerate(scene.objects):
            ann_id = len(annotations) + 1
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": CATEGORIES[obj.category], "iscrowd": 0,
                                "area": obj.area, "bbox": [x, y, w, h],
                                "segmentation": [{"size": rle["size"], "counts": rle["counts"].decode("ascii")}]})
            options = candidate_specs(k, scene.objects, size)
            kinds = [kind for kind in ("relation", "position", "attribute") if options[kind]]
            if not kinds:
                continue  # nothing singles this object out
            sentences = []
            for kind in kinds[: int(expressions_per_object)]:
                spec = options[kind][int(rng.integers(len(options[kind])))]
                raw = describe(spec, rng)
                sent_id = summary.kinds_total() + 1
                sentences.append({"sent_id": sent_id, "raw": raw, "sent": raw, "tokens": raw.split(), "kind": kind})
                summary.kinds[kind] = summary.kinds.get(kind, 0) + 1
            ref_id = len(refs) + 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": CATEGORIES[obj.category],
                         "split": split, "file_name": name, "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
            summary.counts[split][1] += 1
            summary.counts[split][2] += len(sentences)
    instances = {"images": images, "annotations": annotations,
                 "categories": [{"id": i, "name": c} for c, i in CATEGORIES.items()]}
    write_refer_files(data_dir / "instances.json", refs_file, instances, refs)
    summary.seconds = time.time() - t0
    return summary

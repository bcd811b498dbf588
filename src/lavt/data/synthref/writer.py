"""synthref writer: `generate` turns seeded scenes and their expressions into refer-format files.

Output under the data root: `synthref/refs(unc).p` (the refs pickle), `synthref/instances.json`
(COCO-style images, annotations, categories) and the images in `images/synthref/`. Each image
draws from its own RNG seeded by (seed, image index), so the same seed and options give
byte-identical files.
"""
from __future__ import annotations

import io
import json
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from lavt.data.synthref.language import KINDS, expressions_for, filter_index, refer_sentence
from lavt.data.synthref.scenes import GROUP_A, GROUP_B, SHAPES, render_scene, sample_scene
from lavt.errors import LAVTUserError

DATASET = "synthref"
SPLIT_BY = "unc"
VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")


@dataclass
class SynthSummary:
    """What `generate` wrote: paths, counts per split and per expression kind, time taken."""

    root: Path
    refs_file: Path
    instances_file: Path
    image_dir: Path
    images: dict[str, int] = field(default_factory=dict)
    refs: dict[str, int] = field(default_factory=dict)
    expressions: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def format(self) -> str:
        """Human-readable summary (for the CLI)."""
        lines = [f"wrote {self.refs_file}, {self.instances_file} and images under {self.image_dir}"]
        lines.append(f"{'split':<8}{'images':>8}{'refs':>8}{'expressions':>13}")
        for split in SPLITS:
            lines.append(f"{split:<8}{self.images.get(split, 0):>8}{self.refs.get(split, 0):>8}"
                         f"{self.expressions.get(split, 0):>13}")
        lines.append("expression kinds: " + ", ".join(f"{k} {v}" for k, v in self.kinds.items()))
        total = sum(self.images.values())
        rate = total / self.seconds * 60 if self.seconds > 0 else float("inf")
        lines.append(f"{total} images in {self.seconds:.1f} s ({rate:.0f} images/minute)")
        return "\n".join(lines)


# ---------------------------------------------------------------------- driver
def prepare_output(root: Path, data_dir: Path, image_dir: Path, refs_file: Path, *, overwrite: bool, stale: str) -> None:
    """Make the output folders of a generated dataset. Refuses when `refs_file` exists unless
    `overwrite`, which then deletes the earlier images (glob `stale` under `image_dir`)."""
    if refs_file.exists() and not overwrite:
        raise LAVTUserError(f"{refs_file} already exists; choose another --out or pass --overwrite")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LAVTUserError(f"cannot create output folders under {root}: {exc}") from exc
    if overwrite:
        for old in image_dir.glob(stale):
            old.unlink()


def write_refer_files(instances_file: Path, refs_file: Path, instances: dict[str, Any], refs: list[dict[str, Any]]) -> None:
    """Write the refer-layout files: compact `instances.json` and the refs pickle (protocol 2)."""
    instances_file.write_text(json.dumps(instances, separators=(",", ":")))
    refs_file.write_bytes(pickle.dumps(refs, protocol=2))


def _split_plan(num_images: int, fractions: Sequence[float], seed: int) -> list[str]:
    """Split of each image index: exact counts from the fractions, every split non-empty when possible."""
    if len(fractions) != 4 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise LAVTUserError(f"split_fractions must be 4 non-negative numbers (train, val, testA, testB), got {fractions}")
    total = float(sum(fractions))
    counts = [int(round(num_images * f / total)) for f in fractions[1:]]
    if num_images >= 4:
        counts = [max(1, c) if f > 0 else 0 for c, f in zip(counts, fractions[1:])]
    while sum(counts) > num_images - (1 if fractions[0] > 0 and num_images > 0 else 0) and sum(counts) > 0:
        counts[int(np.argmax(counts))] -= 1
    plan = ["val"] * counts[0] + ["testA"] * counts[1] + ["testB"] * counts[2]
    plan = ["train"] * (num_images - len(plan)) + plan
    order = np.random.default_rng([seed, 0]).permutation(num_images)
    return [plan[i] for i in order]


def _check_range(name: str, value: Sequence[int], low: int) -> tuple[int, int]:
    try:
        a, b = (int(value[0]), int(value[1]))
    except (TypeError, ValueError, IndexError) as exc:
        raise LAVTUserError(f"{name} must be a (min, max) pair of integers, got {value!r}") from exc
    if a < low or b < a:
        raise LAVTUserError(f"{name} must satisfy {low} <= min <= max, got ({a}, {b})")
    return a, b


def generate(
    out_root: str | Path,
    seed: int = 0,
    num_images: int = 1000,
    *,
    image_size: tuple[int, int] = (160, 256),
    objects: tuple[int, int] = (2, 6),
    kinds: Sequence[str] = KINDS,
    expressions_per_object: int = 3,
    occlusion: float = 0.25,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.05, 0.05),
    image_format: str = "jpg",
    overwrite: bool = False,
) -> SynthSummary:
    """Write the synthref dataset under `out_root` in the refer layout.

    Files: `out_root/synthref/refs(unc).p`, `out_root/synthref/instances.json`, images in
    `out_root/images/synthref/`. `image_size` bounds each image side in pixels (the aspect
    ratio stays within 4:3); `objects` bounds the objects per image (fewer when they do not
    fit); `kinds` selects the expression kinds written; each object gets up to
    `expressions_per_object` expressions (objects with none are not referred); `occlusion`
    is the chance that an image has one partly hidden object.
    """
    start = time.perf_counter()
    side_range = _check_range("image_size", image_size, 32)
    count_range = _check_range("objects", objects, 1)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise LAVTUserError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    if int(num_images) < 1:
        raise LAVTUserError(f"num_images must be at least 1, got {num_images}")
    if int(expressions_per_object) < 1:
        raise LAVTUserError(f"expressions_per_object must be at least 1, got {expressions_per_object}")
    if not 0.0 <= float(occlusion) <= 1.0:
        raise LAVTUserError(f"occlusion must be a probability in [0, 1], got {occlusion}")
    if image_format not in ("jpg", "png"):
        raise LAVTUserError(f"image_format must be 'jpg' or 'png', got {image_format!r}")

    root = Path(out_root)
    data_dir = root / DATASET
    image_dir = root / "images" / DATASET
    refs_file = data_dir / f"refs({SPLIT_BY}).p"
    instances_file = data_dir / "instances.json"
    prepare_output(root, data_dir, image_dir, refs_file, overwrite=overwrite, stale=f"{DATASET}_*.*")

    plan = _split_plan(int(num_images), split_fractions, int(seed))
    images, annotations, refs = [], [], []
    ann_id = ref_id = sent_id = 0
    for index, split in enumerate(plan):
        rng = np.random.default_rng([int(seed), 1, index])
        for _ in range(20):
            width = int(rng.integers(side_range[0], side_range[1] + 1))
            height = int(rng.integers(side_range[0], side_range[1] + 1))
            if max(width, height) <= min(width, height) * 4 / 3:
                break
        height = min(height, int(width * 4 / 3))
        width = min(width, int(height * 4 / 3))
        group = GROUP_A if split == "testA" else GROUP_B if split == "testB" else None
        count = int(rng.integers(count_range[0], count_range[1] + 1))
        scene = sample_scene(rng, height, width, count, group, float(occlusion))
        index_of = filter_index(scene)

        canvas = render_scene(rng, scene, height, width)
        image_id = index + 1
        file_name = f"{DATASET}_{image_id:07d}.{image_format}"
        pixels = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        if image_format == "jpg":
            pixels.save(buffer, format="JPEG", quality=92)
        else:
            pixels.save(buffer, format="PNG", compress_level=1)
        (image_dir / file_name).write_bytes(buffer.getvalue())
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})

        for t, obj in enumerate(scene):
            ann_id += 1
            occluded = bool((obj.full & ~obj.visible).any())
            ys, xs = np.nonzero(obj.visible)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if occluded:
                rle = mask_utils.encode(np.asfortranarray(obj.visible.astype(np.uint8)))
                segmentation: Any = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            else:
                segmentation = obj.polygons
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                "segmentation": segmentation, "area": int(obj.visible.sum()), "bbox": bbox, "iscrowd": 0,
                "color": obj.colour, "size": obj.size, "center": [round(obj.cx, 2), round(obj.cy, 2)],
                "rotation": round(obj.rotation, 2), "occluded": occluded,
            })
            if group is not None and obj.shape not in group:
                continue
            expressions = expressions_for(scene, t, kinds, int(expressions_per_object), width, height, rng, index_of)
            if not expressions:
                continue
            ref_id += 1
            sentences = []
            for text, kind in expressions:
                sent_id += 1
                raw, sent, tokens = refer_sentence(text, rng)
                sentences.append({"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": sent, "kind": kind})
            refs.append({
                "sent_ids": [s["sent_id"] for s in sentences], "file_name": file_name, "ann_id": ann_id,
                "ref_id": ref_id, "image_id": image_id, "split": split, "sentences": sentences,
                "category_id": SHAPES.index(obj.shape) + 1,
            })

    options = {
        "seed": int(seed), "num_images": int(num_images), "image_size": list(side_range),
        "objects": list(count_range), "kinds": list(kinds), "expressions_per_object": int(expressions_per_object),
        "occlusion": float(occlusion), "split_fractions": [float(f) for f in split_fractions],
        "image_format": image_format,
    }
    instances = {
        "info": {
            # The text is part of the file: changing it would change every generated instances.json.
            "description": "synthref: generated referring segmentation scenes (lavt.data.synth)",
            "version": VERSION,
            "options": options,
            "splits": "by image; train/val refer to every object; testA refers only to circle, ring, "
                      "star; testB only to square, triangle, cross",
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)],
    }
    write_refer_files(instances_file, refs_file, instances, refs)

    summary = SynthSummary(root=root, refs_file=refs_file, instances_file=instances_file, image_dir=image_dir)
    for split in SPLITS:
        split_refs = [r for r in refs if r["split"] == split]
        summary.images[split] = plan.count(split)
        summary.refs[split] = len(split_refs)
        summary.expressions[split] = sum(len(r["sentences"]) for r in split_refs)
    for kind in KINDS:
        summary.kinds[kind] = sum(1 for r in refs for s in r["sentences"] if s["kind"] == kind)
    summary.seconds = time.perf_counter() - start
    return summary

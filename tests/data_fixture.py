"""A tiny hand-made refer-format dataset in the official field layout (RefCOCO style).

Two images under images/mscoco/images/train2014/, refs(unc).p as a protocol-2 pickle and
instances.json. Objects cover every segmentation form the reader must handle:

- ann 101 (image 1): one object drawn as two overlapping rectangles, so the official
  `== 1` mask drops their overlap while `> 0` keeps it;
- ann 102 (image 1): a triangle polygon;
- ann 103 (image 1): an uncompressed RLE (counts as a list);
- ann 201 (image 2): a compressed RLE (counts as a string);
- ann 202 (image 2): a rectangle polygon.

`EXPECTED` holds the masks each object must decode to, written out by hand.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

IMAGE_DIR = "images/mscoco/images/train2014"
SIZES = {1: (30, 40), 2: (48, 32)}  # image_id -> (height, width)


def _rect(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((height, width), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _box_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def expected_masks() -> dict[int, dict[str, np.ndarray]]:
    """ann_id -> {'any': mask, 'official': mask}."""
    h1, w1 = SIZES[1]
    h2, w2 = SIZES[2]
    a = _rect(h1, w1, 5, 5, 20, 20)
    b = _rect(h1, w1, 15, 10, 30, 25)
    triangle = mask_utils.decode(mask_utils.frPyObjects([[32, 2, 38, 2, 35, 12]], h1, w1))[:, :, 0]
    small = _rect(h1, w1, 2, 22, 9, 28)
    rle_obj = _rect(h2, w2, 4, 6, 20, 30)
    box = _rect(h2, w2, 10, 32, 28, 44)
    union = ((a + b) > 0).astype(np.uint8)
    once = ((a + b) == 1).astype(np.uint8)
    return {
        101: {"any": union, "official": once},
        102: {"any": triangle, "official": triangle},
        103: {"any": small, "official": small},
        201: {"any": rle_obj, "official": rle_obj},
        202: {"any": box, "official": box},
    }


def _sentence(sent_id: int, raw: str) -> dict:
    sent = raw.lower().rstrip(".")
    return {"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent}


def build(root: Path, dataset: str = "refcoco") -> Path:
    """Write the fixture under `root` and return `root`."""
    root = Path(root)
    (root / dataset).mkdir(parents=True, exist_ok=True)
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    masks = expected_masks()
    rng = np.random.default_rng(0)
    images = []
    for image_id, (h, w) in SIZES.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(image_dir / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})

    compressed = mask_utils.encode(np.asfortranarray(masks[201]["any"]))
    annotations = [
        {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0.0, "bbox": [5, 5, 25, 20],
         "segmentation": [_box_polygon(5, 5, 20, 20), _box_polygon(15, 10, 30, 25)]},
        {"id": 102, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 0.0, "bbox": [32, 2, 6, 10],
         "segmentation": [[32, 2, 38, 2, 35, 12]]},
        {"id": 103, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 0.0, "bbox": [2, 22, 7, 6],
         "segmentation": _uncompressed_rle(masks[103]["any"])},
        {"id": 201, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 0.0, "bbox": [4, 6, 16, 24],
         "segmentation": {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}},
        {"id": 202, "image_id": 2, "category_id": 2, "iscrowd": 0, "area": 0.0, "bbox": [10, 32, 18, 12],
         "segmentation": [_box_polygon(10, 32, 28, 44)]},
    ]
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 2, "name": "dog", "supercategory": "animal"}]
    refs_spec = [  # ref_id, ann_id, image_id, split, sentences
        (1, 101, 1, "train", ["Man on the left", "left guy in two parts", "the person standing."]),
        (2, 102, 1, "train", ["dog top right", "small triangle dog"]),
        (3, 103, 1, "val", ["bottom left thing", "tiny box"]),
        (4, 201, 2, "testA", ["tall person", "person on top", "the man"]),
        (5, 202, 2, "testB", ["dog at the bottom"]),
    ]
    refs, sent_id = [], 0
    for ref_id, ann_id, image_id, split, raws in refs_spec:
        sentences = []
        for raw in raws:
            sent_id += 1
            sentences.append(_sentence(sent_id, raw))
        refs.append({
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "ann_id": ann_id, "ref_id": ref_id, "image_id": image_id, "split": split,
            "sentences": sentences, "category_id": 1 if ann_id in (101, 201) else 2,
        })
    (root / dataset / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / dataset / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


# Counts of the fixture per split: refs, expressions, images.
COUNTS = {"train": (2, 5, 1), "val": (1, 2, 1), "testA": (1, 3, 1), "testB": (1, 1, 1)}

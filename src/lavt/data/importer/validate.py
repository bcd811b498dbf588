"""Checking imported records, and splitting images into train/val/test.

Every record is checked before anything is written: its image exists and decodes, its mask
has the image's size and at least one pixel, every expression has a word, no expression
names two objects of one image, and every image sits in one split. Each failure is a
`BadRecord` naming the source file and line.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lavt.data.importer import masks
from lavt.data.importer.sources import BadRecord, Record
from lavt.data.refer import decode_segmentation
from lavt.errors import LAVTUserError

DEFAULT_SPLIT_NAMES = ("train", "val", "test")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass
class CheckedObject:
    """A record that passed every check, with what the writer stores for it."""

    record: Record
    width: int
    height: int
    segmentation: Any
    area: int
    bbox: list[int]
    expressions: list[str]  # distinct, in source order
    split: str | None


def words(text: str) -> list[str]:
    """The lowercase words of an expression (the refer 'tokens')."""
    return _WORD.findall(text.lower())


def _image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) of a decodable image, or why it cannot be used."""
    if not path.is_file():
        return f"image {path} does not exist; fix the path or add the image"
    try:
        with Image.open(path) as image:
            size = image.size
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()  # a truncated file fails here, not in the middle of training
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        return f"image {path} cannot be decoded ({exc}); replace the file"
    return size


def _mask(record: Record, width: int, height: int) -> tuple[np.ndarray, Any] | str:
    """(bool mask, segmentation to store), or why the record's mask is unusable."""
    if record.mask is not None:
        try:
            mask = masks.read_mask_png(record.mask)
        except FileNotFoundError:
            return f"mask {record.mask} does not exist; fix the path or add the mask"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return f"mask {record.mask} cannot be decoded ({exc}); replace the file"
        if mask.shape != (height, width):
            return (f"mask {record.mask} is {mask.shape[1]}x{mask.shape[0]} pixels but its image {record.image} is "
                    f"{width}x{height}; masks must have their image's size")
        return mask, masks.encode(mask)
    try:
        mask = decode_segmentation(record.segmentation, height, width).astype(bool)
    except (ValueError, TypeError, KeyError, LAVTUserError) as exc:
        return f"the mask of image {record.image} ({width}x{height}) is unusable: {exc}; fix its polygons or RLE"
    is_polygons = isinstance(record.segmentation, list) and not any(isinstance(s, dict) for s in record.segmentation)
    # polygons are kept as given (COCO reads them the same way); RLE is stored compressed
    return mask, (record.segmentation if is_polygons else masks.rle(mask))


def check_records(records: Sequence[Record]) -> tuple[list[CheckedObject], list[BadRecord]]:
    """The records that pass every check (in source order), and a BadRecord for each other one."""
    sizes: dict[Path, tuple[int, int] | str] = {}
    good: list[CheckedObject] = []
    bad: list[BadRecord] = []
    seen: dict[tuple[Path, str], int] = {}  # (image, expression words) -> line of the object it names
    for record in records:
        if record.image not in sizes:
            sizes[record.image] = _image_size(record.image)
        size = sizes[record.image]
        if isinstance(size, str):
            bad.append(BadRecord(record.file, record.line, size))
            continue
        empty = [line for line, text in record.expressions if not words(text)]
        if empty:
            bad.append(BadRecord(record.file, empty[0], "has an empty expression (no words); write the expression "
                                 "or drop the line"))
            continue
        width, height = size
        found = _mask(record, width, height)
        if isinstance(found, str):
            bad.append(BadRecord(record.file, record.line, found))
            continue
        mask, segmentation = found
        if not mask.any():
            bad.append(BadRecord(record.file, record.line, f"the mask of image {record.image} is empty (no object "
                                 "pixel); draw the object or drop the record"))
            continue
        keys = list(dict.fromkeys(" ".join(words(text)) for _, text in record.expressions))
        clash = next(((key, seen[(record.image, key)]) for key in keys if (record.image, key) in seen), None)
        if clash is not None:
            line = next(n for n, text in record.expressions if " ".join(words(text)) == clash[0])
            bad.append(BadRecord(record.file, line, f"expression {clash[0]!r} also names another object of image "
                                 f"{record.image} (line {clash[1]}), so it is ambiguous; make each expression fit "
                                 "one object"))
            continue
        for key in keys:
            seen[(record.image, key)] = record.line
        distinct = list(dict.fromkeys(text.strip() for _, text in record.expressions))
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bbox = [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]
        good.append(CheckedObject(record, width, height, segmentation, int(mask.sum()), bbox, distinct, record.split))
    return good, bad


def check_splits(objects: Sequence[CheckedObject]) -> tuple[list[CheckedObject], list[BadRecord]]:
    """Records' own splits: all records give one or none, and all objects of an image agree."""
    given = [o for o in objects if o.split is not None]
    if not given:
        return list(objects), []
    first = given[0].record
    image_split: dict[Path, CheckedObject] = {}
    good, bad = [], []
    for obj in objects:
        r = obj.record
        if obj.split is None:
            bad.append(BadRecord(r.file, r.line, f"has no split while {first.file} line {first.line} gives one; give "
                                 "every record a split, or none to split by --splits"))
            continue
        other = image_split.setdefault(r.image, obj)
        if other.split != obj.split:
            bad.append(BadRecord(r.file, r.line, f"puts image {r.image} in split {obj.split!r}, but line "
                                 f"{other.record.line} puts it in {other.split!r}; one image belongs to one split"))
            continue
        good.append(obj)
    return good, bad


def parse_fractions(text: str) -> dict[str, float]:
    """'0.8,0.1,0.1' (train, val, test) or 'train=0.9,val=0.1' -> {split: fraction}, summing to 1."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    named = [p.partition("=") for p in parts]
    if all(sep for _, sep, _ in named):
        pairs = [(name.strip(), value) for name, _, value in named]
    elif not any(sep for _, sep, _ in named) and 1 <= len(parts) <= len(DEFAULT_SPLIT_NAMES):
        pairs = list(zip(DEFAULT_SPLIT_NAMES, parts))
    else:
        raise LAVTUserError(f"--splits {text!r}: give up to three fractions (train, val, test) such as 0.8,0.1,0.1, "
                            "or name every split: train=0.9,val=0.1")
    try:
        fractions = {name: float(value) for name, value in pairs}
    except ValueError as exc:
        raise LAVTUserError(f"--splits {text!r}: {exc}") from exc
    if len(fractions) != len(pairs) or any(not n for n in fractions) or any(f < 0 for f in fractions.values()) \
            or sum(fractions.values()) <= 0:
        raise LAVTUserError(f"--splits {text!r}: split names must be distinct and fractions non-negative, not all zero")
    total = sum(fractions.values())
    return {name: f / total for name, f in fractions.items()}


def split_images(images: Sequence[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Assign each image (by its key) to a split: exact counts from the fractions (largest
    remainder), every split with a positive fraction non-empty when there are enough images,
    the order shuffled by `seed`."""
    keys = sorted(images)
    n = len(keys)
    names = list(fractions)
    exact = [n * fractions[s] for s in names]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(names)), key=lambda i: (counts[i] - exact[i], i))[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, s in enumerate(names) if fractions[s] > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[i] = 1
                counts[max(range(len(names)), key=lambda k: counts[k])] -= 1
    order = np.random.default_rng(int(seed)).permutation(n)
    plan = [name for name, count in zip(names, counts) for _ in range(count)]
    return {keys[int(j)]: plan[i] for i, j in enumerate(order)}

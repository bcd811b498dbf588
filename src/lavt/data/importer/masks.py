"""Binary masks <-> COCO segmentations for the importer.

A PNG mask becomes polygons when that is exact: the mask is a union of hole-free regions
whose outlines (traced along pixel edges, so every vertex sits on a pixel corner) rasterise
back through pycocotools to the very same pixels (pixels touching only at a corner are
traced as separate outlines). Anything else (holes, outlines with too many corners, an
outline pycocotools would fill differently) becomes a compressed RLE, which is always exact.
Either form decodes with `lavt.data.refer.decode_segmentation`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from lavt.data.refer import decode_segmentation

# Above this many corners an outline is no longer "simple": RLE is smaller and as exact.
MAX_CORNERS = 2000


def read_mask_png(path: str | Path) -> np.ndarray:
    """bool (H, W) mask from a PNG: a pixel is object when its value is not zero.

    Grey and 1-bit PNGs: value != 0; palette PNGs: palette index != 0 (index 0 is the
    background in every labelling tool's palette); RGB(A): any colour channel != 0 (alpha is
    ignored). Raises OSError / ValueError when the file is not a readable image.
    """
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            pixels = np.asarray(image.convert("RGB"))
            return pixels.any(axis=2)
        if image.mode == "LA":
            return np.asarray(image)[:, :, 0] != 0
        if image.mode == "PA":
            return np.asarray(image.getchannel(0)) != 0
        return np.asarray(image) != 0


def rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a bool mask, counts as an ASCII string (JSON-ready)."""
    encoded = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": encoded["counts"].decode("ascii")}


def _outlines(mask: np.ndarray) -> list[list[tuple[int, int]]] | None:
    """Closed outlines of the regions along pixel edges, as corner lists (x, y), or None when
    the mask has a hole or too many corners. Pixels touching only at a corner belong to
    different outlines that share that corner.

    Every boundary edge is directed with the object on its right (y grows downwards), so an
    outer outline has positive shoelace area and a hole negative.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    top, left = int(rows[0]), int(cols[0])
    mask = mask[top : rows[-1] + 1, left : cols[-1] + 1]  # the object's box: the work scales with the object
    p = np.pad(mask, 1)
    core = p[1:-1, 1:-1]
    width = mask.shape[1] + 1
    starts, ends = [], []
    for side, (sx, sy, ex, ey) in (
        (core & ~p[:-2, 1:-1], (0, 0, 1, 0)),  # top: left to right
        (core & ~p[1:-1, 2:], (1, 0, 1, 1)),  # right: downwards
        (core & ~p[2:, 1:-1], (1, 1, 0, 1)),  # bottom: right to left
        (core & ~p[1:-1, :-2], (0, 1, 0, 0)),  # left: upwards
    ):
        rows, cols = np.nonzero(side)
        starts.append((rows + sy) * width + cols + sx)
        ends.append((rows + ey) * width + cols + ex)
    start = np.concatenate(starts)
    end = np.concatenate(ends)
    starts_, ends_ = start.tolist(), end.tolist()
    leaving: dict[int, list[int]] = {}
    for i, vertex in enumerate(starts_):
        leaving.setdefault(vertex, []).append(i)

    def successor(i: int) -> int:
        """The edge after edge i. Where two regions touch only at a corner, two edges leave it:
        take the right turn, which keeps to the region edge i bounds (4-connected regions)."""
        options = leaving[ends_[i]]
        if len(options) == 1:
            return options[0]
        b = ends_[i]
        dx, dy = b % width - starts_[i] % width, b // width - starts_[i] // width
        right = b - dy + dx * width
        return next(j for j in options if ends_[j] == right)

    loops: list[list[tuple[int, int]]] = []
    corners = 0
    done = bytearray(len(starts_))
    for first in sorted(range(len(starts_)), key=starts_.__getitem__):
        if done[first]:
            continue
        points, edge = [], first
        while not done[edge]:  # each edge has one successor and one predecessor: the walk closes
            done[edge] = 1
            points.append(starts_[edge])
            edge = successor(edge)
        xy = [(v % width + left, v // width + top) for v in points]
        # keep only the corners: a vertex whose incoming and outgoing directions differ
        kept = [xy[i] for i in range(len(xy))
                if (xy[i][0] - xy[i - 1][0], xy[i][1] - xy[i - 1][1])
                != (xy[(i + 1) % len(xy)][0] - xy[i][0], xy[(i + 1) % len(xy)][1] - xy[i][1])]
        area = sum(kept[i - 1][0] * kept[i][1] - kept[i][0] * kept[i - 1][1] for i in range(len(kept)))
        corners += len(kept)
        if area <= 0 or corners > MAX_CORNERS:
            return None
        loops.append(kept)
    return loops


def polygons(mask: np.ndarray) -> list[list[int]] | None:
    """COCO polygons ([[x0, y0, x1, y1, ...], ...]) that decode to exactly `mask`, or None."""
    mask = np.asarray(mask, dtype=bool)
    loops = _outlines(mask)
    if loops is None:
        return None
    polys = [[int(c) for point in loop for c in point] for loop in loops]
    decoded = decode_segmentation(polys, mask.shape[0], mask.shape[1])
    return polys if np.array_equal(decoded.astype(bool), mask) else None


def encode(mask: np.ndarray) -> list[list[int]] | dict[str, Any]:
    """The segmentation to store for a bool mask: exact polygons when they exist, else RLE."""
    polys = polygons(mask)
    return polys if polys is not None else rle(mask)

"""The random black-box augmentation of the RRSIS-D recipe (RMSIN).

A fixed share of the training refs is chosen once (by the seed); every time one of them is
read, its image gets a random number of black squares at random places before it is resized
to the model's input (the mask is unchanged: the object stays the target even where a box
hides part of it). Everything is a pure function of (seed, epoch, ref index), so workers,
processes and a resumed run draw the same boxes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from lavt.errors import LAVTUserError


class BoxAugment:
    """Black `size` x `size` boxes (pixels of the image as read), `count` = (min, max) of them
    per image, on `round(share * num_refs)` refs chosen by `seed`."""

    def __init__(self, share: float, count: tuple[int, int], size: int, seed: int, num_refs: int) -> None:
        if not 0.0 <= float(share) <= 1.0:
            raise LAVTUserError(f"box_aug_share = {share!r} is impossible: it must lie in [0, 1]")
        low, high = (int(c) for c in count)
        if low < 0 or high < low:
            raise LAVTUserError(f"box_aug_count = {list(count)} is impossible: it must be [min, max] with 0 <= min <= max")
        if int(size) < 1:
            raise LAVTUserError(f"box_aug_size = {size!r} is impossible: it must be a positive number of pixels")
        self.share, self.count, self.size, self.seed = float(share), (low, high), int(size), int(seed)
        picked = np.random.default_rng([self.seed, 0xB0C5]).permutation(int(num_refs))[: round(self.share * int(num_refs))]
        self.chosen = frozenset(int(i) for i in picked)

    def boxes(self, index: int, epoch: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """(x0, y0, x1, y1) of the boxes drawn on ref `index` in `epoch`; none for refs not chosen."""
        if int(index) not in self.chosen:
            return []
        rng = np.random.default_rng([self.seed, int(epoch), int(index), 0xB0C5])
        n = int(rng.integers(self.count[0], self.count[1] + 1))
        w, h = min(self.size, width), min(self.size, height)
        xs = rng.integers(0, width - w + 1, size=n)
        ys = rng.integers(0, height - h + 1, size=n)
        return [(int(x), int(y), int(x) + w, int(y) + h) for x, y in zip(xs, ys)]

    def __call__(self, image: Image.Image, index: int, epoch: int) -> Image.Image:
        boxes = self.boxes(index, epoch, image.width, image.height)
        if not boxes:
            return image
        pixels = np.array(image)
        for x0, y0, x1, y1 in boxes:
            pixels[y0:y1, x0:x1] = 0
        return Image.fromarray(pixels, image.mode)

    def __repr__(self) -> str:
        return f"BoxAugment(share={self.share}, count={self.count}, size={self.size}, seed={self.seed}, refs={len(self.chosen)})"

"""Image and mask preprocessing exactly as the official training and test scripts do it.

The official pipeline resizes the RGB image to a square (PIL bilinear, which is what
torchvision's `resize` does on PIL images), the mask with nearest neighbour, scales the
image to [0, 1] and normalises it with the ImageNet mean and standard deviation. There is
no augmentation. These helpers are shared by the datasets and the predictor so that both
see identical pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lavt.images import IMAGENET_MEAN, IMAGENET_STD, image_to_array

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "image_to_tensor", "mask_to_tensor"]


def image_to_tensor(image: Image.Image, size: int | tuple[int, int] | None) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W), resized (bilinear) to `size` and ImageNet-normalised.

    `size` is an int for a square, a (height, width) pair, or None to keep the image size.
    The arithmetic is `lavt.images.image_to_array`'s, which the torch-free runtime uses too.
    """
    return torch.from_numpy(image_to_array(image, size))


def mask_to_tensor(mask: np.ndarray, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Binary (H, W) mask -> int64 (h, w) tensor, resized with nearest neighbour like the official code."""
    mask = np.asarray(mask, dtype=np.uint8)
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if mask.shape != (height, width):
            mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    return torch.from_numpy(mask.astype(np.int64))


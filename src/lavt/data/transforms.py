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

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def image_to_tensor(image: Image.Image, size: int | tuple[int, int] | None) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W), resized (bilinear) to `size` and ImageNet-normalised.

    `size` is an int for a square, a (height, width) pair, or None to keep the image size.
    """
    image = image.convert("RGB")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return ((tensor - mean) / std).contiguous()


def mask_to_tensor(mask: np.ndarray, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Binary (H, W) mask -> int64 (h, w) tensor, resized with nearest neighbour like the official code."""
    mask = np.asarray(mask, dtype=np.uint8)
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if mask.shape != (height, width):
            mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    return torch.from_numpy(mask.astype(np.int64))


"""`Prediction` and the post-processing from logits to masks, in numpy.

The torch `Predictor` returns the same class; the runtime's upsampling is torch's bilinear
with `align_corners=True` (same source coordinates and weights in float32), so both give the
same masks.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lavt.errors import LAVTUserError


@dataclass
class Prediction:
    """One expression's result at the original image size.

    mask: bool (H, W), the referred object; probability: float32 (H, W), P(object) per pixel.
    no_target: whether the expression names nothing in the image (then the mask is empty), None
    when the model makes no such decision; no_target_probability: the head's probability of
    that (None also for the area rule).
    """

    expression: str
    mask: np.ndarray
    probability: np.ndarray
    no_target: bool | None = None
    no_target_probability: float | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def check_expressions(expressions: str | Sequence[str], tokenizer: Any) -> list[str]:
    """The expressions as a list, refused when there are none or one is empty; one warning per
    expression longer than the model's tokens (`tokenizer.is_truncated`), which is cut as in
    training. Shared by the torch `Predictor` and the runtime's `OnnxPredictor`."""
    texts = [expressions] if isinstance(expressions, str) else list(expressions)
    if not texts:
        raise LAVTUserError("no expressions given: give at least one, e.g. 'the red car'")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise LAVTUserError(f"expression {i + 1} is empty; describe the object to segment, e.g. 'the red car'")
        if tokenizer.is_truncated(text):
            warnings.warn(
                f"expression {i + 1} is longer than {tokenizer.max_tokens} tokens and was cut (as in training): {text[:60]!r}...",
                stacklevel=4,
            )
    return texts


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight of each output position (align_corners=True)."""
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0.0)
    src = np.arange(n_out, dtype=np.float32) * scale
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.clip(src - lo.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return lo, hi, w


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) float32 -> (..., H, W), bilinear with align_corners=True."""
    h_lo, h_hi, h_w = _axis_weights(x.shape[-2], size[0])
    w_lo, w_hi, w_w = _axis_weights(x.shape[-1], size[1])
    rows = x[..., w_lo] * (np.float32(1.0) - w_w) + x[..., w_hi] * w_w  # (..., h, W)
    top, bottom = rows[..., h_lo, :], rows[..., h_hi, :]
    hw = h_w[:, None]
    return (top * (np.float32(1.0) - hw) + bottom * hw).astype(np.float32, copy=False)


def logits_to_predictions(texts: list[str], logits: np.ndarray, size: tuple[int, int]) -> list[Prediction]:
    """Logits (E, 2, s, s) -> one Prediction per expression at `size` = (H, W), one at a time
    so that a large image holds one full-size map in memory at once."""
    out = []
    for text, one in zip(texts, logits):
        full = resize_bilinear(np.asarray(one, dtype=np.float32), size)  # (2, H, W)
        top = np.maximum(full[0], full[1])
        e0, e1 = np.exp(full[0] - top), np.exp(full[1] - top)  # softmax over the two classes, as torch
        out.append(Prediction(text, full[1] > full[0], (e1 / (e0 + e1)).astype(np.float32)))
    return out

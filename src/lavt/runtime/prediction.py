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


def check_expressions(expressions: str | Sequence[str]) -> list[str]:
    """The expressions as a list, refused when there are none or one is empty. Shared by the
    torch `Predictor` and the runtime's `OnnxPredictor`."""
    texts = [expressions] if isinstance(expressions, str) else list(expressions)
    if not texts:
        raise LAVTUserError("no expressions given: give at least one, e.g. 'the red car'")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise LAVTUserError(f"expression {i + 1} is empty; describe the object to segment, e.g. 'the red car'")
    return texts


def truncation_notes(texts: Sequence[str], truncated: Sequence[bool], max_tokens: int) -> list[str]:
    """One line per expression the tokenizer cut (its `return_truncated` flags): longer than
    the model's tokens, cut as in training."""
    return [f"expression {i + 1} is longer than {max_tokens} tokens and was cut (as in training): {text[:60]!r}"
            for i, (text, cut) in enumerate(zip(texts, truncated)) if cut]


def tokenize_expressions(expressions: str | Sequence[str], tokenizer: Any) -> tuple[list[str], Any, Any]:
    """`check_expressions`, then the ids and mask in one tokenizer pass, with one warning per
    expression that was cut. Shared by the torch `Predictor` and the runtime's `OnnxPredictor`."""
    texts = check_expressions(expressions)
    ids, mask, truncated = tokenizer(texts, return_truncated=True)
    for note in truncation_notes(texts, truncated, tokenizer.max_tokens):
        warnings.warn(note + "...", stacklevel=4)
    return texts, ids, mask


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


Decision = tuple[bool, float | None]


def no_target_decisions(config: dict[str, Any], logits: np.ndarray, no_target_logit: np.ndarray | None) -> list[Decision] | None:
    """Per expression (no target?, its probability or None), from an export's `config.json`,
    the logits (E, 2, s, s) at the model's size and the head's logits (E,); None when the model
    makes no such decision. The rules of `lavt.models.no_target.decide`: `area`, the mask
    covers at most the threshold's share of the image; `head`, the head's probability reaches
    the export's `no_target_head_probability`."""
    model = config.get("model_config", {})
    mode = model.get("no_target", "none")
    if mode == "none":
        return None
    if mode == "area":
        shares = (logits[:, 1] > logits[:, 0]).reshape(len(logits), -1).mean(1)
        return [(bool(s <= model["no_target_threshold"]), None) for s in shares]
    if no_target_logit is None:
        raise LAVTUserError("this export's model decides 'no target' with a head, but its graph has no no_target_logit output; "
                            "export it again with this version of lavt")
    probs = 1.0 / (1.0 + np.exp(-np.asarray(no_target_logit, dtype=np.float64)))
    return [(bool(p >= config["no_target_head_probability"]), float(p)) for p in probs]


def logits_to_predictions(texts: list[str], logits: np.ndarray, size: tuple[int, int],
                          decisions: list[Decision] | None = None) -> list[Prediction]:
    """Logits (E, 2, s, s) -> one Prediction per expression at `size` = (H, W), one at a time
    so that a large image holds one full-size map in memory at once. An expression decided
    to name nothing gets an empty mask."""
    out = []
    for i, (text, one) in enumerate(zip(texts, logits)):
        full = resize_bilinear(np.asarray(one, dtype=np.float32), size)  # (2, H, W)
        top = np.maximum(full[0], full[1])
        e0, e1 = np.exp(full[0] - top), np.exp(full[1] - top)  # softmax over the two classes, as torch
        no_target, p_none = decisions[i] if decisions is not None else (None, None)
        mask = (full[1] > full[0]) & (not no_target)
        out.append(Prediction(text, mask, (e1 / (e0 + e1)).astype(np.float32), no_target, p_none))
    return out

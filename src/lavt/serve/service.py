"""The model behind the page and the REST API: one `Predictor`, its limits and its queue.

No web framework here. A request is: limits checked, image decoded, all expressions of the
image in one batched forward (`Predictor.tokenize` / `preprocess` / `logits_and_decisions`), then
each expression's logits brought to the original size one at a time. The masks equal
`Predictor.predict`'s (same bilinear upsampling and argmax); doing it one expression at a time
keeps a 40 MP image with 16 expressions to one full-size map in memory instead of sixteen.
"""
from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from lavt.demo import shipped_model_dir
from lavt.errors import LAVTUserError
from lavt.inference import Predictor
from lavt.models.config import SWIN_PRESETS
from lavt.runtime.prediction import truncation_notes
from lavt.serve.limits import Gate, Limits, RequestRejected, read_image, split_expressions
from lavt.visualize import mask_image

# The page draws at most this many pixels on the long side; masks to download stay full size.
DISPLAY_SIDE = 1024


@dataclass
class Segmentation:
    """One request's answer. masks: bool (H, W) per expression at the original size; score:
    mean P(object) inside the mask (0 for an empty mask). The preview fields (the image, masks
    and probabilities at most DISPLAY_SIDE on the long side) are filled only for the page."""

    expressions: list[str]
    masks: list[np.ndarray]
    scores: list[float]
    width: int
    height: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    preview: Image.Image | None = None
    preview_masks: list[np.ndarray] = field(default_factory=list)
    preview_probabilities: list[np.ndarray] = field(default_factory=list)
    # per expression, when the model decides no-target (generalised RIS): names nothing? its probability
    no_target: list[bool] = field(default_factory=list)
    no_target_probabilities: list[float | None] = field(default_factory=list)

    @property
    def areas(self) -> list[int]:
        return [int(m.sum()) for m in self.masks]


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def describe_model(predictor: Predictor, checkpoint: str) -> dict[str, Any]:
    """What the page's model panel and `GET /v1/model` show."""
    cfg = predictor.model.config
    preset = next((name for name, (dim, depths, heads) in SWIN_PRESETS.items()
                   if (dim, tuple(depths), tuple(heads)) == (cfg.embed_dim, cfg.depths, cfg.num_heads)), None)
    swin = (f"Swin-{preset.capitalize()}" if preset else "Swin") + (
        f" (embed {cfg.embed_dim}, depths {'-'.join(map(str, cfg.depths))}, window {cfg.window_size})")
    text = "text features from outside the model"
    if cfg.text_encoder:
        te = cfg.text_encoder
        text = f"BERT, {te.get('num_hidden_layers')} layers of width {te.get('hidden_size')}"
        if cfg.text_encoder_weights == "minilm":
            text += " (frozen all-MiniLM-L6-v2)"
    return {
        "name": Path(checkpoint).name or str(checkpoint),
        "checkpoint": str(checkpoint),
        "architecture": f"LAVT, {swin}, PWAM ({cfg.fusion}, norm {cfg.pwam_norm}), {text}",
        "image_size": predictor.image_size,
        "input_size": list(predictor.input_size),  # (height, width): differs from the square for a non-square export
        "max_tokens": getattr(predictor.tokenizer, "max_tokens", cfg.max_tokens),
        "parameters": int(predictor.model.num_parameters()),  # also for an exported model (lavt.onnx_module)
        "device": str(predictor.device),
        "precision": predictor.precision,
        "config": cfg.to_dict(),
    }


class SegmentService:
    """A loaded model with its limits and queue; the page and the REST API call `segment`."""

    def __init__(self, predictor: Predictor, checkpoint: str, limits: Limits | None = None,
                 gate: Gate | None = None) -> None:
        self.predictor = predictor
        self.limits = limits or Limits()
        self.gate = gate or Gate()
        self.info = describe_model(predictor, checkpoint)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str = "auto", precision: str = "fp32",
             limits: Limits | None = None, concurrency: int = 1, queue_size: int = 32, graphs: str | None = None) -> SegmentService:
        """Load `checkpoint` (anything `Predictor.from_pretrained` takes; None: the shipped demo
        model); `graphs` picks an exported folder's float32 or int8 graphs."""
        source = Path(checkpoint) if checkpoint is not None else shipped_model_dir()
        device = resolve_device(device)
        gate = Gate(concurrency, queue_size)  # checks its arguments before the slow load
        try:
            predictor = Predictor.from_pretrained(source, device=device, precision=precision, graphs=graphs)
        except RuntimeError as exc:  # e.g. an unavailable CUDA device
            raise LAVTUserError(f"could not load the model on {device}: {str(exc).splitlines()[0]}") from exc
        return cls(predictor, str(source), limits, gate)

    @property
    def name(self) -> str:
        return self.info["name"]

    # ------------------------------------------------------------------ requests
    def segment(self, image: bytes | str | Path | Image.Image, expressions: str | Iterable[str],
                preview: bool = False) -> Segmentation:
        """The whole request on the calling thread's behalf: admission (or `ServerBusy`),
        limits, decoding, then the model on a model thread."""
        self.gate.enter()
        try:
            texts = split_expressions(expressions, self.limits)
            pil = image if isinstance(image, Image.Image) else read_image(image, self.limits)
            return self.gate.run(self.predict, pil, texts, preview)
        finally:
            self.gate.leave()

    @torch.inference_mode()
    def predict(self, image: Image.Image, expressions: list[str], preview: bool = False) -> Segmentation:
        """One batched forward for every expression; runs on a model thread (see `Gate`)."""
        start = time.perf_counter()
        p = self.predictor
        # The tokenizer directly, not `Predictor.tokenize`: the expressions are checked already
        # and a cut is reported in the answer, not as a warning in the server's log.
        texts = list(expressions)
        ids, attention, truncated = p.tokenizer(texts, return_truncated=True)
        ids, attention = ids.to(p.device), attention.to(p.device)
        notes = truncation_notes(texts, truncated, p.tokenizer.max_tokens)
        tensor, (h, w) = p.preprocess(image)
        logits, decisions = p.logits_and_decisions(tensor, ids, attention)  # (E, 2, S, S) float32
        masks, scores = [], []
        for i in range(len(texts)):
            full = F.interpolate(logits[i : i + 1], size=(h, w), mode="bilinear", align_corners=True)
            mask = full.argmax(1)[0].bool() & (decisions is None or not decisions[i][0])
            prob = torch.softmax(full, dim=1)[0, 1]
            area = int(mask.sum())
            scores.append(float(prob[mask].mean()) if area else 0.0)
            masks.append(mask.cpu().numpy())
            del full, prob
        result = Segmentation(texts, masks, scores, w, h, 0.0, notes)
        if decisions is not None:
            result.no_target = [d[0] for d in decisions]
            result.no_target_probabilities = [d[1] for d in decisions]
        if preview:
            self._fill_preview(result, image, logits)
            for i, none in enumerate(result.no_target):
                if none:
                    result.preview_masks[i] = np.zeros_like(result.preview_masks[i])
        result.seconds = time.perf_counter() - start
        return result

    @staticmethod
    def _fill_preview(result: Segmentation, image: Image.Image, logits: torch.Tensor) -> None:
        w, h = result.width, result.height
        scale = min(1.0, DISPLAY_SIDE / max(w, h))
        if scale == 1.0:
            result.preview = image
            result.preview_masks = list(result.masks)
            small = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
        else:
            dw, dh = max(1, round(w * scale)), max(1, round(h * scale))
            result.preview = image.resize((dw, dh), Image.BILINEAR)
            small = F.interpolate(logits, size=(dh, dw), mode="bilinear", align_corners=True)
            result.preview_masks = list(small.argmax(1).bool().cpu().numpy())
        result.preview_probabilities = list(torch.softmax(small, dim=1)[:, 1].cpu().numpy().astype(np.float32))


# ---------------------------------------------------------------------- encodings
def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE with `counts` as a string (pycocotools' JSON form)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def mask_png(mask: np.ndarray) -> bytes:
    """A 1-bit PNG of the mask (white = object)."""
    buffer = io.BytesIO()
    mask_image(mask).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def to_json(result: Segmentation, model: str, fmt: str = "rle") -> dict[str, Any]:
    """The REST answer: per expression in the order given, the mask (RLE or base64 PNG),
    its area in pixels and its score (and, from a model that decides it, `no_target` and
    `no_target_probability`)."""
    if fmt not in ("rle", "png"):
        raise RequestRejected(f"format must be 'rle' or 'png', got {fmt!r}")
    results = []
    for text, mask, score in zip(result.expressions, result.masks, result.scores):
        entry: dict[str, Any] = {"expression": text}
        if fmt == "rle":
            entry["rle"] = mask_rle(mask)
        else:
            entry["png"] = base64.b64encode(mask_png(mask)).decode("ascii")
        entry["area"] = int(mask.sum())
        entry["score"] = round(float(score), 6)
        results.append(entry)
    for entry, none, p in zip(results, result.no_target, result.no_target_probabilities):
        entry["no_target"] = bool(none)  # "no such object": the mask is empty
        if p is not None:
            entry["no_target_probability"] = round(float(p), 6)
    body: dict[str, Any] = {"width": result.width, "height": result.height, "model": model, "results": results}
    if result.warnings:
        body["warnings"] = list(result.warnings)
    body["seconds"] = round(result.seconds, 4)
    return body

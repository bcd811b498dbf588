"""The exported graphs against the torch model: random inputs and one real example.

The real example is a generated scene (`lavt.data.synthref`) with two written expressions,
through the same pre-processing and tokenisation as prediction. float32 graphs must agree
with torch within `FLOAT32_TOLERANCE` on the logits while the logits stay within +-10; beyond,
within 1e-5 of the largest logit (float32 rounding grows with the values; README, "Deploy",
has the shipped model's case). int8 graphs are measured, not held to it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from lavt.data.synthref.scenes import render_scene, sample_scene
from lavt.errors import LAVTUserError
from lavt.export.graph import example_inputs, has_head
from lavt.images import image_to_array
from lavt.models import LAVT
from lavt.runtime.session import OnnxModel

FLOAT32_TOLERANCE = 1e-4
EXAMPLE_EXPRESSIONS = ("the large red circle on the left", "the small square")


def example_scene(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A generated scene of four shapes at the graphs' input size."""
    rng = np.random.default_rng(seed)
    objects = sample_scene(rng, size[0], size[1], 4, None, 0.0)
    pixels = render_scene(rng, objects, size[0], size[1])
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def _onnx_logits(onnx: OnnxModel, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    if onnx.takes_ids:
        return onnx.logits(inputs["image"], inputs["input_ids"], inputs["attention_mask"], return_no_target=True)
    return onnx.logits_from_features(inputs["image"], inputs["text_features"], inputs["text_mask"], return_no_target=True)


@torch.no_grad()
def _torch_logits(model: LAVT, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """The mask logits and, for a model with a no-target head, the head's logits."""
    image = torch.from_numpy(inputs["image"])
    head = has_head(model)
    if model.text_encoder is not None:
        out = model(image, torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"]), return_no_target=head)
    else:
        out = model(image, text_features=torch.from_numpy(inputs["text_features"]), text_mask=torch.from_numpy(inputs["text_mask"]),
                    return_no_target=head)
    logits, no_target = out if head else (out, None)
    return logits.float().numpy(), None if no_target is None else no_target.float().numpy()


def parity_inputs(model: LAVT, size: tuple[int, int], tokens: int, tokenizer: Any = None) -> dict[str, dict[str, np.ndarray]]:
    """{'random': batch of three random rows, 'example': a generated scene with two expressions}."""
    random = {k: v.numpy() for k, v in example_inputs(model, size, tokens, batch=3, seed=1).items()}
    image = image_to_array(example_scene(size), size)[None]
    n = len(EXAMPLE_EXPRESSIONS)
    example = {"image": np.repeat(image, n, axis=0)}
    if tokenizer is not None and model.text_encoder is not None:
        ids, mask = tokenizer(list(EXAMPLE_EXPRESSIONS))
        example.update(input_ids=ids.numpy(), attention_mask=mask.numpy(), text_mask=mask.numpy())
    else:
        example.update({k: v[:n] for k, v in random.items() if k != "image"})
    return {"random": random, "example": example}


def torch_references(model: LAVT, inputs: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """The torch model's outputs on each input set: computed once, compared with every graph."""
    return {name: _torch_logits(model, feeds) for name, feeds in inputs.items()}


def measure(references: dict[str, tuple[np.ndarray, np.ndarray | None]], onnx: OnnxModel,
            inputs: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Largest absolute logit difference to `references` per input set, and the share of pixels
    whose argmax differs; for a model with a no-target head, also the head's (`{set}_no_target_*`)."""
    out: dict[str, float] = {}
    for name, feeds in inputs.items():
        (ours, ours_nt), (ref, ref_nt) = _onnx_logits(onnx, feeds), references[name]
        out[f"{name}_max_abs"] = float(np.abs(ours - ref).max())
        out[f"{name}_logit_scale"] = float(np.abs(ref).max())
        out[f"{name}_mask_mismatch"] = float((ours.argmax(1) != ref.argmax(1)).mean())
        if ref_nt is not None:
            if ours_nt is None:
                raise LAVTUserError(f"the export in {onnx.folder} lost the model's no-target head (no no_target_logit output)")
            out[f"{name}_no_target_max_abs"] = float(np.abs(ours_nt - ref_nt).max())
            out[f"{name}_no_target_logit_scale"] = float(np.abs(ref_nt).max())
    return out


def tolerance(logit_scale: float) -> float:
    """The largest float32 difference allowed for logits of this magnitude."""
    return FLOAT32_TOLERANCE * max(1.0, logit_scale / 10.0)


def check_float32(result: dict[str, float], folder: Any) -> None:
    for name in sorted({k.rsplit("_max_abs", 1)[0] for k in result if k.endswith("_max_abs")}):
        diff, allowed = result[f"{name}_max_abs"], tolerance(result.get(f"{name}_logit_scale", 0.0))
        if not diff <= allowed:
            raise LAVTUserError(
                f"the float32 export in {folder} differs from the torch model by {diff:.3g} on the logits "
                f"({name} inputs; allowed {allowed:.3g}); the graphs are kept for inspection: report this with the model's config.json"
            )

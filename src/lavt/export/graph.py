"""Trace a LAVT into ONNX graphs: the whole model, or the text encoder and the rest apart.

The trace follows the plain reference path (`lavt.ops.fast_paths(False)`): no caches, no
custom autograd, only standard operators. Height, width and token count are fixed, so window
padding, the shift masks and the relative position bias are computed once during the trace
and stored as constants; the batch axis stays dynamic.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from lavt import ops
from lavt.errors import LAVTUserError
from lavt.models import LAVT

DEFAULT_OPSET = 18
EXAMPLE_BATCH = 2  # traced with two rows so that nothing specialises on a batch of one


def has_head(model: LAVT) -> bool:
    """Whether the graphs also output the no-target head's logit (B,) as `no_target_logit`."""
    return model.config.no_target == "head"


class FullGraph(nn.Module):
    """(image, input_ids, attention_mask) -> logits (and no_target_logit with a no-target head)."""

    def __init__(self, model: LAVT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(image, input_ids, attention_mask, return_no_target=has_head(self.model))


class TextGraph(nn.Module):
    """(input_ids, attention_mask) -> text_features (B, N, C)."""

    def __init__(self, model: LAVT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


class VisionGraph(nn.Module):
    """(image, text_features, text_mask) -> logits (and no_target_logit): all but the text encoder."""

    def __init__(self, model: LAVT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, text_features: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.model(image, text_features=text_features, text_mask=text_mask, return_no_target=has_head(self.model))


def example_inputs(model: LAVT, size: tuple[int, int], tokens: int, batch: int = EXAMPLE_BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the graphs' shapes: normal pixels, ids of varied length (one row full)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, model.config.in_chans, *size, generator=g)
    mask = torch.zeros(batch, tokens, dtype=torch.int64)
    for row in range(batch):
        mask[row, : tokens if row == 0 else max(2, int(torch.randint(2, tokens + 1, (1,), generator=g)))] = 1
    out = {"image": image, "attention_mask": mask, "text_mask": mask}
    if model.text_encoder is not None:
        vocab = model.text_encoder.config.vocab_size
        out["input_ids"] = torch.randint(1, vocab, (batch, tokens), generator=g) * mask
    out["text_features"] = torch.randn(batch, tokens, model.config.text_dim, generator=g)
    return out


GRAPH_IO = {
    "full": (FullGraph, ("image", "input_ids", "attention_mask"), "logits"),
    "text": (TextGraph, ("input_ids", "attention_mask"), "text_features"),
    "vision": (VisionGraph, ("image", "text_features", "text_mask"), "logits"),
}


def export_graph(model: LAVT, part: str, path: Path, size: tuple[int, int], tokens: int, opset: int = DEFAULT_OPSET) -> Path:
    """Write one graph (`part`: full, text or vision) of `model` to `path`."""
    wrapper_cls, names, output = GRAPH_IO[part]
    outputs = [output, "no_target_logit"] if part != "text" and has_head(model) else [output]
    inputs = example_inputs(model, size, tokens)
    wrapper = wrapper_cls(model).eval()
    dynamic = {name: {0: "batch"} for name in (*names, *outputs)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with ops.fast_paths(False), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns on every Python branch taken on a shape; with H, W and N fixed
        # by design those branches are exactly what the graph should freeze.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper,
                tuple(inputs[n] for n in names),
                str(path),
                input_names=list(names),
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=int(opset),
                do_constant_folding=True,
                dynamo=False,
            )
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
            raise LAVTUserError(f"the ONNX export of the {part} graph failed at opset {opset}: {str(exc).splitlines()[0]}") from exc
    return path

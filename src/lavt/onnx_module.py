"""An exported folder (`lavt export`) as a torch module, so that the torch-side tools
(`Predictor`, `lavt evaluate`, `lavt serve`) run it through onnxruntime unchanged.

It answers the calls those tools make on a LAVT (`segment_expressions`, `forward`, `config`,
`text_encoder.config`) with tensors in and out; the computation is the ONNX graphs'.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from lavt.models.config import LAVTConfig
from lavt.runtime.session import OnnxModel


def providers_for(device: str | torch.device) -> list[str]:
    """onnxruntime providers for a torch device name: CUDA first when asked for and present."""
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxLAVT(nn.Module):
    """The graphs of an exported folder behind LAVT's calls. `precision` picks float32 or
    int8 graphs (default: the folder's choice)."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", precision: str | None = None) -> None:
        super().__init__()
        self.onnx = OnnxModel(folder, precision=precision, providers=providers_for(device))
        cfg = dict(self.onnx.config["model_config"])
        h, w = self.onnx.image_size
        cfg.update(max_tokens=self.onnx.max_tokens, image_size=h if h == w else max(h, w), use_checkpoint=False)
        self.config = LAVTConfig.from_dict(cfg)
        self.image_hw = (h, w)
        self.has_no_target_head = self.onnx.has_no_target_head  # its logit is a graph output
        # What the tokenizer checks read: the vocabulary and the token count of the graph.
        te = cfg.get("text_encoder") or {}
        self.text_encoder = (
            SimpleNamespace(config=SimpleNamespace(vocab_size=te.get("vocab_size", 0), max_position_embeddings=self.onnx.max_tokens))
            if self.onnx.takes_ids else None
        )

    def _run(self, image: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
             text_features: torch.Tensor | None, text_mask: torch.Tensor | None, return_no_target: bool) -> Any:
        def arr(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy())

        pixels = arr(image.float())
        if input_ids is not None:
            assert attention_mask is not None
            out = self.onnx.logits(pixels, arr(input_ids), arr(attention_mask), return_no_target=True)
        else:
            assert text_features is not None and text_mask is not None
            out = self.onnx.logits_from_features(pixels, arr(text_features.float()), arr(text_mask), return_no_target=True)
        logits, no_target = (None if a is None else torch.from_numpy(a).to(image.device) for a in out)
        return (logits, no_target) if return_no_target else logits

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                *, text_features: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                return_no_target: bool = False) -> Any:
        """As `LAVT.forward`: logits, and with `return_no_target` the head's logits (None without one)."""
        return self._run(image, input_ids, attention_mask, text_features, text_mask, return_no_target)

    def segment_expressions(self, image: torch.Tensor, input_ids: torch.Tensor | None = None,
                            attention_mask: torch.Tensor | None = None, *, text_features: torch.Tensor | None = None,
                            text_mask: torch.Tensor | None = None, return_no_target: bool = False) -> Any:
        """One image, E expressions -> logits (E, 2, H, W) (and the head's (E,) with `return_no_target`)."""
        if image.ndim == 3:
            image = image.unsqueeze(0)
        n = (input_ids if input_ids is not None else text_mask).shape[0]  # type: ignore[union-attr]
        return self._run(image.expand(n, -1, -1, -1), input_ids, attention_mask, text_features, text_mask, return_no_target)

    def num_parameters(self) -> int:
        """The exported model's parameter count, recorded at export (0 when unknown)."""
        return int(self.onnx.config.get("parameters", 0))

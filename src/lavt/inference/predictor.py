"""Prediction on any image: load once, segment many expressions.

Pre- and post-processing live here, never in the model: images of any mode are turned into
RGB, resized to the square the model was trained at (not the official demo's aspect-keeping
resize, which the model never saw; an exported folder: the size of its graphs), and the masks
come back at the original resolution.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lavt.data.transforms import image_to_tensor
from lavt.errors import LAVTUserError
from lavt.images import ImageInput, load_image
from lavt.loading import default_tokenizer, load_model
from lavt.models.no_target import decide
from lavt.precision import PRECISIONS, autocast
from lavt.runtime.prediction import Prediction, tokenize_expressions

__all__ = ["ImageInput", "Prediction", "Predictor", "load_image"]


class Predictor:
    """Referring segmentation for people (numpy/PIL in, masks out) and for code (tensors).

    >>> p = Predictor.from_pretrained("demo_out/model")
    >>> [r.mask.shape for r in p.predict("scene.png", ["the red circle", "the star"])]
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        image_size: int | None = None,
        precision: str = "fp32",
    ) -> None:
        if getattr(model, "text_encoder", None) is None:
            raise LAVTUserError("this model has no text encoder, so it cannot read expressions; load a full model")
        if precision not in PRECISIONS:
            raise LAVTUserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size or model.config.image_size)
        # (height, width) images are resized to: the square, or an exported graph's own size
        hw = getattr(model, "image_hw", None)
        self.input_size: tuple[int, int] = (self.image_size, self.image_size) if image_size or hw is None else tuple(hw)
        self.precision = precision

    @classmethod
    def from_pretrained(
        cls, source: str | Path, device: str | torch.device = "cpu", precision: str = "fp32", graphs: str | None = None
    ) -> Predictor:
        """A model folder (save_pretrained, `lavt convert`, `lavt demo`), a training checkpoint,
        an official LAVT checkpoint file, or an exported folder (`graphs`: its float32 or int8
        graphs, default the folder's choice)."""
        loaded = load_model(source, device=device, graphs=graphs)
        tokenizer = loaded.tokenizer or default_tokenizer(loaded.model)
        return cls(loaded.model, tokenizer, device=device, precision=precision)

    # ------------------------------------------------------------------ pieces
    def preprocess(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> normalised (1, 3, S, S) tensor on the device (an exported graph's (h, w) for a
        non-square export) and the original (H, W)."""
        pil = load_image(image)
        tensor = image_to_tensor(pil, self.input_size).unsqueeze(0).to(self.device)
        return tensor, (pil.height, pil.width)

    def tokenize(self, expressions: str | Sequence[str]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        texts, ids, mask = tokenize_expressions(expressions, self.tokenizer)
        return texts, ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def predict_logits(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_no_target: bool = False
    ) -> Any:
        """Torch-facing: one normalised image (1,3,S,S), E expressions -> logits (E,2,S,S), float32
        (with `return_no_target`, also the no-target head's logits (E,), None without a head)."""
        with autocast(self.precision, self.device):
            out = self.model.segment_expressions(image, input_ids, attention_mask, return_no_target=return_no_target)
        if return_no_target:
            return out[0].float(), out[1]
        return out.float()

    def no_target_decisions(self, logits: torch.Tensor, nt_logit: torch.Tensor | None) -> list[tuple[bool, float | None]] | None:
        """Per expression (no target?, its probability or None for the area rule), from the square
        logits (E,2,S,S) and the head's logits; None when the model makes no such decision
        (`no_target="none"`, classic referring segmentation)."""
        cfg = self.model.config
        decision = decide(cfg.no_target, cfg.no_target_threshold, logits.argmax(1).bool(), nt_logit)
        if decision is None:
            return None
        flags, prob = decision
        probs = [None] * len(flags) if prob is None else [float(p) for p in prob.tolist()]
        return list(zip((bool(f) for f in flags.tolist()), probs))

    def logits_and_decisions(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[bool, float | None]] | None]:
        """`predict_logits` (E,2,S,S) and `no_target_decisions`, asking the model for its
        no-target head's logits only when it has one."""
        head = self.model.config.no_target == "head"
        out = self.predict_logits(image, input_ids, attention_mask, return_no_target=head)
        logits, nt_logit = out if head else (out, None)
        return logits, self.no_target_decisions(logits, nt_logit)

    @torch.inference_mode()
    def predict(self, image: ImageInput, expressions: str | Sequence[str]) -> list[Prediction]:
        """Segment every expression in one image (one batched forward). Masks at original size.
        A model with a no-target decision also says, per expression, whether it names nothing
        (`no_target`, `no_target_probability`); such a prediction's mask is empty."""
        texts, ids, mask = self.tokenize(expressions)
        tensor, (h, w) = self.preprocess(image)
        logits, decisions = self.logits_and_decisions(tensor, ids, mask)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
        prob = torch.softmax(logits, dim=1)[:, 1]
        masks = logits.argmax(1).bool()
        out = []
        for i, text in enumerate(texts):
            no_target, p_none = decisions[i] if decisions is not None else (None, None)
            m = masks[i].cpu().numpy() & (not no_target)
            out.append(Prediction(text, m, prob[i].cpu().numpy().astype(np.float32), no_target, p_none))
        return out


"""`OnnxPredictor`: `lavt.inference.Predictor`'s `predict` on an exported folder, without torch.

Same pre-processing (`lavt.images`), same tokenisation (the exported `tokenizer.json`), same
post-processing (bilinear upsampling with align_corners=True, argmax, softmax), so the
`Prediction`s equal the torch side's. On a split export the features of expressions seen
before are kept (up to `cache_size`), so a service that gets the same expressions again
runs only the vision graph.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lavt.errors import LAVTUserError
from lavt.images import ImageInput, image_to_array, load_image
from lavt.runtime.prediction import Prediction, logits_to_predictions, no_target_decisions, tokenize_expressions
from lavt.runtime.session import OnnxModel
from lavt.runtime.tokenizer import ExportedTokenizer


class OnnxPredictor:
    """Referring segmentation from an exported folder in onnxruntime.

    >>> p = OnnxPredictor("exported/")                      # or precision="float32", providers=[...]
    >>> [r.mask.shape for r in p.predict("scene.png", ["the red circle", "the star"])]
    """

    def __init__(
        self,
        folder: str | Path,
        providers: Sequence[str] | None = None,
        precision: str | None = None,
        threads: int | None = None,
        cache_size: int = 1024,
    ) -> None:
        self.model = OnnxModel(folder, precision=precision, providers=providers, threads=threads)
        cfg = self.model.config
        if not self.model.takes_ids or not cfg.get("tokenizer"):
            raise LAVTUserError(
                f"{folder} was exported from a model without a text encoder, so it cannot read expressions; "
                "use OnnxModel.logits_from_features with text features"
            )
        self.tokenizer = ExportedTokenizer(self.model.folder / cfg["tokenizer"], self.model.max_tokens)
        self.image_size = self.model.image_size
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.cache_size = int(cache_size)
        self._features: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()

    @property
    def precision(self) -> str:
        return self.model.precision

    def preprocess(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        """-> normalised (1, 3, H, W) float32 array and the original (H, W)."""
        pil = load_image(image)
        return image_to_array(pil, self.image_size, self.mean, self.std)[None], (pil.height, pil.width)

    def tokenize(self, expressions: str | Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        return tokenize_expressions(expressions, self.tokenizer)

    def _text_features(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Features of each row, computed once per distinct ids and kept (split exports)."""
        keys = [tuple(row) for row in ids.tolist()]
        first: dict[tuple[int, ...], int] = {}  # one row per distinct key not yet kept
        for i, k in enumerate(keys):
            if k not in self._features:
                first.setdefault(k, i)
        todo = sorted(first.values(), key=lambda i: keys[i])
        if todo:
            new = self.model.text_features(ids[todo], mask[todo])
            for j, i in enumerate(todo):
                self._features[keys[i]] = new[j]
        for k in keys:
            self._features.move_to_end(k)
        features = np.stack([self._features[k] for k in keys])  # before evicting: a request may hold more keys
        while len(self._features) > self.cache_size:
            self._features.popitem(last=False)
        return features

    def predict_logits(self, image: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                       return_no_target: bool = False) -> Any:
        """One normalised image (1,3,H,W), E expressions -> logits (E,2,H,W), float32 (with
        `return_no_target`, also the no-target head's logits (E,), None without a head)."""
        batch = np.repeat(image, input_ids.shape[0], axis=0)
        if self.model.parts == "split":
            features = self._text_features(input_ids, attention_mask)
            return self.model.logits_from_features(batch, features, attention_mask, return_no_target)
        return self.model.logits(batch, input_ids, attention_mask, return_no_target)

    def predict(self, image: ImageInput, expressions: str | Sequence[str]) -> list[Prediction]:
        """Segment every expression in one image (one batched run). Masks at original size.
        A model with a no-target decision also says, per expression, whether it names nothing
        (then its mask is empty), as `Predictor.predict`."""
        texts, ids, mask = self.tokenize(expressions)
        array, (h, w) = self.preprocess(image)
        logits, no_target = self.predict_logits(array, ids, mask, return_no_target=True)
        decisions = no_target_decisions(self.model.config, logits, no_target)
        return logits_to_predictions(texts, logits, (h, w), decisions)

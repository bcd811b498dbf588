"""`OnnxModel`: the graphs of an exported folder in onnxruntime sessions, arrays in and out.

A "full" export is one graph (image, input_ids, attention_mask) -> logits; a "split" export
is a text graph (input_ids, attention_mask) -> text_features and a vision graph (image,
text_features, text_mask) -> logits, so that a service can keep the features of
expressions it has seen. A model without a text encoder exports only the vision graph
("inputs": "features").
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lavt.errors import LAVTUserError
from lavt.hub import resolve_source
from lavt.runtime.folder import read_export_config


class OnnxModel:
    """The graphs of `folder` (written by `lavt export`; or its Hugging Face Hub id) in onnxruntime.

    `precision` picks the float32 or the int8 graphs (default: the folder's `precision`);
    `providers` are onnxruntime execution providers (default: CPU); `threads` sets the
    sessions' intra-op threads (default: onnxruntime's choice).
    """

    def __init__(
        self,
        folder: str | Path,
        precision: str | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.folder = resolve_source(folder)
        self.config: dict[str, Any] = read_export_config(self.folder)
        self.precision = precision or self.config["precision"]
        graphs = self.config["graphs"]
        if self.precision not in graphs:
            raise LAVTUserError(
                f"{self.folder} has no {self.precision} graphs (it has: {', '.join(graphs)}); "
                + ("export with --quantize int8" if self.precision == "int8" else "pick one of those")
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.sessions = {
            part: ort.InferenceSession(str(self.folder / name), sess_options=options, providers=self.providers)
            for part, name in graphs[self.precision].items()
        }
        self.image_size: tuple[int, int] = (int(self.config["image_size"][0]), int(self.config["image_size"][1]))
        # models with a no-target head (generalised RIS) export its logit as a second output
        last = self.sessions.get("full") or self.sessions.get("vision")
        self.has_no_target_head = last is not None and "no_target_logit" in {o.name for o in last.get_outputs()}
        self.max_tokens = int(self.config["max_tokens"])
        self.takes_ids = self.config["inputs"] == "ids"

    @property
    def parts(self) -> str:
        return self.config["parts"]

    def _check_tokens(self, a: np.ndarray, name: str) -> np.ndarray:
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != self.max_tokens:
            raise LAVTUserError(f"{name} must be (B, {self.max_tokens}) for this export, got {a.shape}")
        return a.astype(np.int64, copy=False)

    def _check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != self.image_size:
            raise LAVTUserError(f"image must be (B, 3, {self.image_size[0]}, {self.image_size[1]}) for this export, got {image.shape}")
        return image

    def text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, N) ids and mask -> (B, N, C) features (split exports only)."""
        if "text" not in self.sessions:
            raise LAVTUserError(f"{self.folder} has no separate text graph; export with --parts split")
        feeds = {"input_ids": self._check_tokens(input_ids, "input_ids"),
                 "attention_mask": self._check_tokens(attention_mask, "attention_mask")}
        return self.sessions["text"].run(["text_features"], feeds)[0]

    def _run(self, part: str, feeds: dict[str, np.ndarray], return_no_target: bool) -> Any:
        head = return_no_target and self.has_no_target_head
        out = self.sessions[part].run(["logits", "no_target_logit"] if head else ["logits"], feeds)
        return (out[0], out[1] if head else None) if return_no_target else out[0]

    def logits_from_features(self, image: np.ndarray, text_features: np.ndarray, text_mask: np.ndarray,
                             return_no_target: bool = False) -> Any:
        """(B,3,H,W) image, (B,N,C) features, (B,N) mask -> (B,2,H,W) logits (vision graph);
        with `return_no_target`, also the no-target head's logits (B,) (None without a head)."""
        if "vision" not in self.sessions:
            raise LAVTUserError(f"{self.folder} is one graph from token ids; export with --parts split to feed text features")
        feeds = {"image": self._check_image(image), "text_features": np.asarray(text_features, dtype=np.float32),
                 "text_mask": self._check_tokens(text_mask, "text_mask")}
        return self._run("vision", feeds, return_no_target)

    def logits(self, image: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray, return_no_target: bool = False) -> Any:
        """(B,3,H,W) normalised image, (B,N) ids and mask -> (B,2,H,W) float32 logits; with
        `return_no_target`, also the no-target head's logits (B,) (None without a head)."""
        if not self.takes_ids:
            raise LAVTUserError(f"{self.folder} was exported from a model without a text encoder: it takes text features")
        if "full" in self.sessions:
            feeds = {"image": self._check_image(image), "input_ids": self._check_tokens(input_ids, "input_ids"),
                     "attention_mask": self._check_tokens(attention_mask, "attention_mask")}
            return self._run("full", feeds, return_no_target)
        features = self.text_features(input_ids, attention_mask)
        return self.logits_from_features(image, features, attention_mask, return_no_target)

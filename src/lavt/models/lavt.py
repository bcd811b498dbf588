"""LAVT: the language-aware Swin encoder, the light decoder and (optionally) the text encoder.

One class serves both official variants: `lavt` (BERT kept outside the segmentation model,
text features passed in) and `lavt_one` (BERT inside as `text_encoder`). The state_dict uses
the official key names, so official weights load without renaming.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lavt import ops
from lavt.errors import LAVTUserError
from lavt.hub import resolve_source, write_model_card
from lavt.models.backbone import MultiModalSwin
from lavt.models.config import LAVTConfig
from lavt.models.decoder import SimpleDecoding
from lavt.models.no_target import NoTargetHead, head_hidden
from lavt.models.state import load_state_strict
from lavt.models.text_encoder import build_text_encoder, load_text_encoder, resolve_text_encoder_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class LAVT(nn.Module):
    """Referring image segmentation model.

    Call `model(image, input_ids=..., attention_mask=...)` when it holds a text encoder, or
    `model(image, text_features=..., text_mask=...)` with features from any encoder. The image
    is (B, 3, H, W), ImageNet-normalised; the result is logits (B, 2, H, W) at the input size
    (class 1 = the referred object). With `config.no_target == "head"` the model also holds
    a no-target classifier (`no_target_head.*`); `return_no_target=True` then returns
    (logits, no-target logit (B,)), the logit being None for models without a head.
    """

    def __init__(self, config: LAVTConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MultiModalSwin(config)
        self.classifier = SimpleDecoding(config.stage_dims, config.hidden_dim, config.num_classes)
        self.text_encoder = build_text_encoder(config.text_encoder) if config.text_encoder else None
        top = config.stage_dims[-1]
        self.no_target_head = NoTargetHead(top, config.text_dim, head_hidden(top)) if config.no_target == "head" else None

    def train(self, mode: bool = True) -> LAVT:
        """Also drops the inference caches (see `lavt.ops.cache`) when entering train mode."""
        if mode:
            ops.clear_caches(self)
        return super().train(mode)

    # ------------------------------------------------------------------ inputs
    def _check_image(self, image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != self.config.in_chans:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a (B, {self.config.in_chans}, H, W) tensor, got {shape}")
        if not image.is_floating_point():
            raise ValueError(f"image must be a floating-point tensor (normalised pixels), got {image.dtype}")

    def _check_text(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        text_features: torch.Tensor | None,
        text_mask: torch.Tensor | None,
    ) -> int:
        """Validates one of the two text inputs; returns its batch size."""
        if (input_ids is None) == (text_features is None):
            raise ValueError("give either input_ids/attention_mask or text_features/text_mask, not both or neither")
        if input_ids is not None:
            if self.text_encoder is None:
                raise ValueError(
                    "this model has no text encoder: pass text_features (B, N, C) and text_mask (B, N)"
                )
            if input_ids.ndim != 2 or input_ids.is_floating_point():
                raise ValueError(f"input_ids must be an integer (B, N) tensor, got {input_ids.dtype} {tuple(input_ids.shape)}")
            if attention_mask is None or attention_mask.shape != input_ids.shape:
                got = None if attention_mask is None else tuple(attention_mask.shape)
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
            if input_ids.shape[1] > self.text_encoder.config.max_position_embeddings:
                raise ValueError(
                    f"{input_ids.shape[1]} tokens exceed the text encoder's "
                    f"{self.text_encoder.config.max_position_embeddings} positions"
                )
            return input_ids.shape[0]
        assert text_features is not None
        if text_features.ndim != 3 or not text_features.is_floating_point():
            raise ValueError(f"text_features must be a float (B, N, C) tensor, got {text_features.dtype} {tuple(text_features.shape)}")
        if text_features.shape[2] != self.config.text_dim:
            raise ValueError(
                f"text_features have {text_features.shape[2]} channels but the model expects "
                f"{self.config.text_dim} (shape (B, N, C), channels last)"
            )
        if text_mask is None or tuple(text_mask.shape) != tuple(text_features.shape[:2]):
            got = None if text_mask is None else tuple(text_mask.shape)
            raise ValueError(f"text_mask must be (B, N) = {tuple(text_features.shape[:2])}, got {got}")
        return text_features.shape[0]

    # ------------------------------------------------------------------ forward
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) -> language features L (B, N, C): the encoder's last hidden state."""
        if self.text_encoder is None:
            raise ValueError("this model has no text encoder")
        # Float32 even under autocast: 20 tokens cost little compute, while casting BERT's
        # weights to bf16 on every call would cost more than the whole text forward.
        with torch.autocast(input_ids.device.type, enabled=False):
            return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)[0]

    def _language(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        text_features: torch.Tensor | None,
        text_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids is not None:
            assert attention_mask is not None
            return self.encode_text(input_ids, attention_mask), attention_mask
        assert text_features is not None and text_mask is not None
        return text_features, text_mask

    def _decode(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        # float32 logits also under autocast: the upsampled map is what argmax and the loss see.
        logits = self.classifier(feats).float()
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        text_features: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        return_no_target: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        feats, words, word_mask = self._encode(image, input_ids, attention_mask, text_features, text_mask)
        logits = self._decode(feats, tuple(image.shape[-2:]))
        return (logits, self.no_target_logit(feats, words, word_mask, logits)) if return_no_target else logits

    def no_target_logit(
        self, feats: list[torch.Tensor], words: torch.Tensor, word_mask: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor | None:
        """The no-target head's logits (E,) from the decoder inputs, the words and the mask
        logits (None without a head)."""
        return None if self.no_target_head is None else self.no_target_head(feats[-1], words, word_mask, logits)

    def decode(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Mask logits (B, 2, *size) from the decoder inputs `features` gives."""
        return self._decode(feats, size)

    def features(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        text_features: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """The four normalised decoder inputs [F1..F4], each (B, C_i, H_i, W_i)."""
        return self._encode(image, input_ids, attention_mask, text_features, text_mask)[0]

    def _encode(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        text_features: torch.Tensor | None,
        text_mask: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(decoder inputs [F1..F4], word features, word mask)."""
        self._check_image(image)
        n = self._check_text(input_ids, attention_mask, text_features, text_mask)
        if n != image.shape[0]:
            raise ValueError(f"batch sizes differ: {image.shape[0]} images but {n} expressions")
        l, m = self._language(input_ids, attention_mask, text_features, text_mask)
        return self.backbone(image, l, m), l, m

    def segment_expressions(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        text_features: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        return_no_target: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """One image, E expressions -> logits (E, 2, H, W), equal to E separate forwards
        (with `return_no_target`, also the no-target logits (E,), as `forward`).

        The text-independent stem (patch embedding and stage-1 blocks) runs once and is shared
        by all expressions: the evaluation protocol's many expressions per image get cheaper.
        """
        if image.ndim == 3:
            image = image.unsqueeze(0)
        self._check_image(image)
        if image.shape[0] != 1:
            raise ValueError(f"segment_expressions takes one image, got a batch of {image.shape[0]}")
        n = self._check_text(input_ids, attention_mask, text_features, text_mask)
        l, m = self._language(input_ids, attention_mask, text_features, text_mask)
        x, hw = self.backbone.stem(image)
        feats = self.backbone.forward_from_stem(x.expand(n, -1, -1), hw, l, m)
        logits = self._decode(feats, tuple(image.shape[-2:]))
        return (logits, self.no_target_logit(feats, l, m, logits)) if return_no_target else logits

    # ------------------------------------------------------------------ persistence
    def save_pretrained(
        self,
        folder: str | Path,
        tokenizer: Any = None,
        dtype: torch.dtype | None = None,
        card: dict[str, Any] | None = None,
    ) -> Path:
        """Write config.json + model.safetensors, a model card README.md (and the tokenizer's
        files when given).

        `dtype` (e.g. torch.float16) stores floating-point weights at that precision to halve
        the file; `from_pretrained` loads them back into the model's float32 parameters.
        `card`: what the model card should add (`datasets`, `metrics`, `notes`; see
        `lavt.hub.write_model_card`).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"model_type": "lavt", **self.config.to_dict()}
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.config.text_encoder_weights:  # frozen encoder stored elsewhere: keep the file small
            state = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        write_model_card(folder, self.config.to_dict(), **(card or {}))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> LAVT:
        """Rebuild a model written by `save_pretrained` (strict load). `folder` may also be a
        Hugging Face Hub id (`org/name`, `org/name@revision`) of such a folder."""
        folder = resolve_source(folder)
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not folder.is_dir():
            raise LAVTUserError(f"{folder} is not a folder; give a folder written by save_pretrained or `lavt convert`")
        if not cfg_path.is_file() or not w_path.is_file():
            raise LAVTUserError(
                f"{folder} is not a LAVT model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(write one with save_pretrained or `lavt convert OFFICIAL.pth OUT_DIR`)"
            )
        try:
            raw = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LAVTUserError(f"{cfg_path} is not valid JSON ({exc}); repair it or save the model again") from exc
        if not isinstance(raw, dict) or raw.get("model_type") != "lavt":
            raise LAVTUserError(
                f"{cfg_path} does not describe a LAVT model (model_type is not 'lavt'); point to a folder "
                "written by save_pretrained or `lavt convert`"
            )
        model = cls(LAVTConfig.from_dict(raw, source=str(cfg_path)))
        try:
            state = load_file(str(w_path), device=str(map_location))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise LAVTUserError(
                f"{w_path} could not be read as safetensors ({str(exc).splitlines()[0]}): the file is damaged or "
                "incomplete; download or save the model again"
            ) from exc
        if model.config.text_encoder_weights and not any(k.startswith("text_encoder.") for k in state):
            model.load_text_encoder_weights()
            state.update({f"text_encoder.{k}": v for k, v in model.text_encoder.state_dict().items()})
        load_state_strict(model, state, source=str(w_path))
        return model.eval()

    def load_text_encoder_weights(self) -> None:
        """Fill the text encoder from `config.text_encoder_weights` and freeze it."""
        if self.text_encoder is None or not self.config.text_encoder_weights:
            raise ValueError("this model has no externally stored text encoder")
        folder = resolve_text_encoder_weights(self.config.text_encoder_weights)
        pretrained = load_text_encoder(folder)
        load_state_strict(self.text_encoder, pretrained.state_dict(), source=f"text encoder {folder}")
        self.text_encoder.requires_grad_(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

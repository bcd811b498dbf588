"""Typed training and evaluation configurations, read from YAML/JSON and the command line.

A run is described by one `TrainConfig` (or `EvalConfig`). Values come, in increasing
priority, from a named preset (`paper` = the official recipe, MISSION.md section 2), a
YAML/JSON file, and `key=value` overrides. Every value is checked before any work starts:
an unknown key or an impossible value stops with one `LAVTUserError` line that names the
key, the source and what to do. The resolved configuration is saved with every checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from lavt.errors import LAVTUserError

Precision = Literal["fp32", "bf16", "fp16"]
LossName = Literal["ce", "dice", "ce+dice"]


def default_split_by(dataset: str) -> str:
    """The usual partition of each dataset: `umd` for G-Ref (refcocog), `unc` otherwise."""
    return "umd" if dataset.lower() == "refcocog" else "unc"


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the official LAVT recipe.

    Batch semantics: `batch_size` is the *total* batch of one optimiser step over all
    processes (the paper's 32); each process runs `micro_batch_size` samples per forward
    (default: batch_size / world size) and accumulates gradients until the total is reached,
    so one GPU and eight GPUs train the same recipe.
    """

    # --- data ---
    data_root: str | None = None
    dataset: str = "refcoco"
    split_by: str | None = None  # None: unc, or umd for refcocog
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation (best = last)
    val_expressions: Literal["one", "all"] = "one"  # official: one expression per object
    image_size: int = 480
    mask_mode: Literal["any", "official"] = "any"
    max_images: int | None = None  # cap on training images (quick runs)
    val_max_images: int | None = None
    num_workers: int = 4
    # --- model ---
    model: str = "base"  # Swin preset: tiny, small, base, large
    model_overrides: dict[str, Any] = field(default_factory=dict)  # LAVTConfig fields
    text_encoder: str | None = None  # local HF folder; None: the packaged MiniLM
    tokenizer: str | None = None  # folder with vocab.txt; None: the text encoder's folder
    pretrained_backbone: str | None = None  # Swin ImageNet checkpoint (.pth)
    init_from: str | None = None  # start from saved LAVT weights (folder or checkpoint)
    # --- optimisation ---
    epochs: int = 40
    steps_per_epoch: int | None = None  # cap on optimiser steps per epoch (quick runs)
    batch_size: int = 32
    micro_batch_size: int | None = None
    lr: float = 5e-5
    lr_backbone: float | None = None  # None: lr
    lr_decoder: float | None = None
    lr_text: float | None = None
    weight_decay: float = 0.01
    amsgrad: bool = False
    text_layers_trained: int | None = 10  # first N text-encoder layers; None: all + embeddings
    warmup_steps: int = 0
    warmup_start_factor: float = 0.001
    poly_power: float = 0.9
    loss: LossName = "ce"
    ce_weight: tuple[float, ...] = (0.9, 1.1)
    dice_weight: float = 1.0
    loss_normalization: Literal["global", "local"] = "global"
    clip_grad_norm: float | None = None
    # --- hardware ---
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: Precision = "fp32"
    activation_checkpointing: bool = False
    sync_batchnorm: bool = True
    find_unused_parameters: bool = True
    # --- bookkeeping ---
    output_dir: str = "runs/lavt"
    resume: str | None = None  # checkpoint file, run folder, or "auto"
    seed: int = 0
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = False
    plot: bool = True

    @property
    def resolved_split_by(self) -> str:
        return self.split_by or default_split_by(self.dataset)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        return _from_dict(cls, data, source)

    def validate(self, check_paths: bool = True) -> "TrainConfig":
        """Raise `LAVTUserError` on the first impossible value; returns self."""
        _positive(self, "epochs", "batch_size", "image_size", "log_every")
        _positive(self, "micro_batch_size", "max_images", "val_max_images", "steps_per_epoch", optional=True)
        _non_negative(self, "lr", "weight_decay", "warmup_steps", "num_workers", "dice_weight", "seed")
        _non_negative(self, "lr_backbone", "lr_decoder", "lr_text", "text_layers_trained", optional=True)
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            _bad("clip_grad_norm", self.clip_grad_norm, "must be positive (or null to disable clipping)")
        if self.poly_power < 0:
            _bad("poly_power", self.poly_power, "must be >= 0")
        if not 0 < self.warmup_start_factor <= 1:
            _bad("warmup_start_factor", self.warmup_start_factor, "must lie in (0, 1]")
        if len(self.ce_weight) != 2 or min(self.ce_weight) < 0:
            _bad("ce_weight", list(self.ce_weight), "must be two non-negative class weights, e.g. [0.9, 1.1]")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            _bad(
                "micro_batch_size",
                self.micro_batch_size,
                f"must divide batch_size {self.batch_size} (batch_size is the total per optimiser step)",
            )
        _check_device(self.device, self.precision)
        if check_paths:
            check_data_root(self.data_root, self.dataset)
            for key in ("text_encoder", "tokenizer", "pretrained_backbone", "init_from"):
                _check_exists(key, getattr(self, key))
        return self


@dataclass
class EvalConfig:
    """One evaluation: a model, a split, and where the results go."""

    checkpoint: str | None = None
    data_root: str | None = None
    dataset: str = "refcoco"
    split_by: str | None = None
    split: str = "val"
    image_size: int | None = None  # None: the model's training size
    mask_mode: Literal["any", "official"] = "any"
    max_images: int | None = None
    max_batch: int = 64  # expressions per forward (one image's expressions share a batch)
    num_workers: int = 2
    device: str = "auto"
    precision: Precision = "fp32"
    tokenizer: str | None = None  # None: the one saved with the model, else the packaged vocab
    json: str | None = None
    per_expression: str | None = None  # JSON-lines file, one line per expression
    overlays: str | None = None  # folder for overlay images of the worst cases
    num_worst: int = 20
    progress: bool = True

    @property
    def resolved_split_by(self) -> str:
        return self.split_by or default_split_by(self.dataset)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "EvalConfig":
        return _from_dict(cls, data, source)

    def validate(self, check_paths: bool = True) -> "EvalConfig":
        _positive(self, "max_batch", "num_worst")
        _positive(self, "image_size", "max_images", optional=True)
        _non_negative(self, "num_workers")
        _check_device(self.device, self.precision)
        if self.checkpoint is None:
            raise LAVTUserError("no checkpoint given: pass --checkpoint (a model folder, a training checkpoint or an official .pth)")
        if check_paths:
            if not Path(self.checkpoint).exists():
                raise LAVTUserError(f"checkpoint {self.checkpoint} does not exist")
            check_data_root(self.data_root, self.dataset)
            _check_exists("tokenizer", self.tokenizer)
        return self


# ---------------------------------------------------------------------------------------
# presets and loading

PRESETS: dict[str, dict[str, Any]] = {
    # The official recipe: every TrainConfig default is the paper's value.
    "paper": {},
    # A few-minute sanity run on a CPU: tiny Swin, small images, short schedule.
    "debug": dict(
        model="tiny",
        model_overrides=dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4),
        image_size=64,
        epochs=2,
        batch_size=4,
        num_workers=0,
        max_images=16,
        val_max_images=8,
        lr=1e-4,
        log_every=1,
    ),
}


def load_train_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    preset: str | None = None,
    check_paths: bool = True,
) -> TrainConfig:
    """Preset, then file, then overrides (`{"lr": 1e-4}` or `["lr=1e-4", "model_overrides.window_size=12"]`)."""
    data = _layered(path, overrides, preset, PRESETS)
    return TrainConfig.from_dict(data, source=str(path) if path else "options").validate(check_paths)


def load_eval_config(
    path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None, check_paths: bool = True
) -> EvalConfig:
    data = _layered(path, overrides, None, {})
    return EvalConfig.from_dict(data, source=str(path) if path else "options").validate(check_paths)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping from `path`, or a clear error."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LAVTUserError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LAVTUserError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}".replace("\n", " ")) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LAVTUserError(f"config file {p} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a=1", "b.c=[1,2]"]` -> `{"a": 1, "b": {"c": [1, 2]}}`; values are parsed as YAML."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise LAVTUserError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key, value)
    return out


def save_config(config: TrainConfig | EvalConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (readable back with `--config`)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def check_data_root(data_root: str | None, dataset: str) -> None:
    """The refer layout needs `<root>/<dataset>/`: say so before any work starts."""
    if not data_root:
        raise LAVTUserError("no data root given: pass --data-root (the folder that holds <dataset>/refs(...).p and images/)")
    root = Path(data_root)
    if not root.is_dir():
        raise LAVTUserError(f"data root {root} does not exist; generate a dataset with `lavt data synth` or point --data-root at a refer folder")
    if not (root / dataset).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "images")
        raise LAVTUserError(f"data root {root} has no dataset folder {dataset!r} (found: {found or 'none'}); check --dataset")


# ---------------------------------------------------------------------------------------
# helpers


def _layered(
    path: str | Path | None, overrides: dict[str, Any] | list[str] | None, preset: str | None, presets: dict
) -> dict[str, Any]:
    file_data = read_config_file(path) if path else {}
    over = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    name = over.pop("preset", None) or preset or file_data.pop("preset", None)
    file_data.pop("preset", None)
    data: dict[str, Any] = {}
    if presets:
        name = name or "paper"
        if name not in presets:
            raise LAVTUserError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        data = _deep_merge(data, presets[name])
    elif name:
        raise LAVTUserError("presets apply to training configurations only")
    data = _deep_merge(data, file_data)
    return _deep_merge(data, over)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise LAVTUserError(f"override {key!r}: {p!r} is not a mapping")
    d[last] = value


def _to_plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    return v


def _from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k not in hints:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise LAVTUserError(f"unknown key {key!r} in {source}{hint}")
        kwargs[k] = _coerce(k, value, hints[k], source)
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Turn a YAML/CLI value into the field's type, or explain which key is wrong."""

    def fail(expected: str) -> typing.NoReturn:
        raise LAVTUserError(f"{key} in {source} must be {expected}, got {value!r}")

    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], source) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        fail("true or false")
    if hint is int:
        if isinstance(value, bool):
            fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        fail("an integer")
    if hint is float:
        if isinstance(value, bool):
            fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        fail("a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        fail("a string")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            fail("a list")
        return tuple(_coerce(key, v, args[0], source) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        return dict(value)
    return value


def _bad(key: str, value: Any, why: str) -> typing.NoReturn:
    raise LAVTUserError(f"{key} = {value!r} is impossible: it {why}")


def _positive(cfg: Any, *keys: str, optional: bool = False) -> None:
    for k in keys:
        v = getattr(cfg, k)
        if v is None and optional:
            continue
        if v is None or v <= 0:
            _bad(k, v, "must be a positive number")


def _non_negative(cfg: Any, *keys: str, optional: bool = False) -> None:
    for k in keys:
        v = getattr(cfg, k)
        if v is None and optional:
            continue
        if v is None or v < 0:
            _bad(k, v, "must not be negative")


def _check_device(device: str, precision: str) -> None:
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        _bad("device", device, "must be auto, cpu, cuda or cuda:N")
    if precision == "fp16" and device == "cpu":
        _bad("precision", precision, "needs a CUDA device (fp16 uses a gradient scaler); use bf16 or fp32 on a CPU")


def _check_exists(key: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise LAVTUserError(f"{key} {value} does not exist; give an existing path or leave it unset")

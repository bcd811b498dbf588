"""Typed training and evaluation configurations, read from YAML/JSON and the command line.

A run is described by one `TrainConfig` (or `EvalConfig`), both built on `RunConfig` (the
data, split and hardware fields and checks they share). Values come, in increasing
priority, from a named preset (`paper` = the official recipe: AdamW, lr 5e-5, weight decay
0.01, poly decay 0.9, 40 epochs, total batch 32, 480 px, cross-entropy weighted 0.9/1.1), a
YAML/JSON file, and `key=value` overrides (the generic handling is `config_values`). Every
value is checked before any work starts: an unknown key or an impossible value stops with
one `LAVTUserError` line that names the key, the source and what to do. The resolved
configuration is saved with every checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from lavt.engine.config_values import (  # noqa: F401 - parse_overrides and read_config_file are public here
    dataclass_from_dict,
    dump_yaml,
    layered,
    parse_overrides,
    read_config_file,
    to_plain,
)
from lavt.errors import LAVTUserError

Precision = Literal["fp32", "bf16", "fp16"]
# What a training run writes into its output_dir: a second run there without --resume is refused.
RUN_FILES = frozenset({"checkpoint.pt", "checkpoint.prev.pt", "config.yaml", "log.jsonl", "curves.png", "model_best", "model_last"})
LossName = Literal["ce", "dice", "ce+dice"]


def default_split_by(dataset: str) -> str:
    """The usual partition of each dataset: `umd` for G-Ref (refcocog), `unc` otherwise."""
    return "umd" if dataset.lower() == "refcocog" else "unc"


@dataclass
class RunConfig:
    """What every run shares: the dataset and its partition, the hardware, the checks.

    `validate` checks the values (`_check_values`), the device and precision, then the
    paths (`_check_paths`); subclasses extend the two hooks.
    """

    data_root: str | None = None
    dataset: str = "refcoco"
    split_by: str | None = None  # None: unc, or umd for refcocog
    mask_mode: Literal["any", "official"] = "any"
    max_images: int | None = None  # cap on images read (quick runs)
    image_dir: str | None = None  # image folder when not the dataset's standard one (--image-root)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: Precision = "fp32"
    progress: bool = True

    @property
    def resolved_split_by(self) -> str:
        return self.split_by or default_split_by(self.dataset)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Self:
        return dataclass_from_dict(cls, data, source)

    def validate(self, check_paths: bool = True) -> Self:
        """Raise `LAVTUserError` on the first impossible value; returns self."""
        self._check_values()
        _check_device(self.device, self.precision)
        if check_paths:
            self._check_paths()
        return self

    def _check_values(self) -> None:
        _positive(self, "max_images", optional=True)

    def _check_paths(self) -> None:
        check_data_root(self.data_root, self.dataset)


@dataclass
class TrainConfig(RunConfig):
    """Everything a training run needs. Defaults are the official LAVT recipe.

    Batch semantics: `batch_size` is the *total* batch of one optimiser step over all
    processes (the paper's 32); each process runs `micro_batch_size` samples per forward
    (default: batch_size / world size) and accumulates gradients until the total is reached,
    so one GPU and eight GPUs train the same recipe.
    """

    # --- data ---
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation (best = last)
    val_expressions: Literal["one", "all"] = "one"  # official: one expression per object
    image_size: int = 480
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
    ce_loss_weight: float = 1.0  # factor of the cross-entropy term (the rrsisd preset: 0.9 CE + 0.1 Dice)
    loss_normalization: Literal["global", "local"] = "global"
    clip_grad_norm: float | None = None
    no_target_loss_weight: float = 0.1  # the no-target head's loss beside the mask loss (model no_target=head)
    # --- augmentation: black boxes on a fixed share of training refs (the rrsisd preset; lavt.data.augment) ---
    box_aug_share: float = 0.0  # share of training refs whose images get boxes; 0: none (official)
    box_aug_count: tuple[int, ...] = (20, 60)  # boxes per image, [min, max]
    box_aug_size: int = 32  # box side in pixels of the image as read
    # --- hardware ---
    activation_checkpointing: bool = False
    sync_batchnorm: bool = True
    find_unused_parameters: bool = True
    # --- bookkeeping ---
    output_dir: str = "runs/lavt"
    resume: str | None = None  # checkpoint file, run folder, or "auto"
    seed: int = 0
    log_every: int = 10
    tensorboard: bool = False
    plot: bool = True


    def _check_values(self) -> None:
        super()._check_values()
        _positive(self, "epochs", "batch_size", "image_size", "log_every")
        _positive(self, "micro_batch_size", "val_max_images", "steps_per_epoch", optional=True)
        _non_negative(self, "lr", "weight_decay", "warmup_steps", "num_workers", "dice_weight", "seed", "no_target_loss_weight")
        _non_negative(self, "ce_loss_weight")
        _positive(self, "box_aug_size")
        if not 0.0 <= self.box_aug_share <= 1.0:
            _bad("box_aug_share", self.box_aug_share, "must lie in [0, 1] (a share of the training refs)")
        if len(self.box_aug_count) != 2 or not 0 <= self.box_aug_count[0] <= self.box_aug_count[1]:
            _bad("box_aug_count", list(self.box_aug_count), "must be [min, max] boxes per image with 0 <= min <= max, e.g. [20, 60]")
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

    def _check_paths(self) -> None:
        super()._check_paths()
        for key in ("text_encoder", "tokenizer", "pretrained_backbone", "init_from"):
            _check_exists(key, getattr(self, key))
        check_writable("output_dir", self.output_dir, folder=True)
        out = Path(self.output_dir)
        earlier = sorted(p.name for p in out.iterdir() if p.name in RUN_FILES) if out.is_dir() else []
        # The main process decides: under torchrun the others could already see the files it writes.
        if earlier and not self.resume and int(os.environ.get("RANK", "0")) == 0:
            raise LAVTUserError(
                f"output_dir {out} already holds a run ({', '.join(earlier)}); pass --resume auto to continue it, "
                "or choose a new --output-dir (nothing was overwritten)"
            )


@dataclass
class EvalConfig(RunConfig):
    """One evaluation: a model, a split, and where the results go."""

    checkpoint: str | None = None
    split: str = "val"
    image_size: int | None = None  # None: the model's training size
    max_batch: int = 64  # expressions per forward (one image's expressions share a batch)
    num_workers: int = 2
    tokenizer: str | None = None  # None: the one saved with the model, else the packaged vocab
    json: str | None = None
    per_expression: str | None = None  # JSON-lines file, one line per expression
    overlays: str | None = None  # folder for overlay images of the worst cases
    num_worst: int = 20
    # generalised datasets: the no-target rule (None: the model's), its area threshold (None:
    # the model's), or the area threshold with the best gIoU on this split
    no_target: Literal["none", "area", "head"] | None = None
    no_target_threshold: float | None = None
    pick_no_target_threshold: bool = False
    graphs: Literal["float32", "int8"] | None = None  # an exported folder's graphs (None: the folder's choice)

    def _check_values(self) -> None:
        super()._check_values()
        _positive(self, "max_batch", "num_worst")
        if self.no_target_threshold is not None and not 0.0 <= self.no_target_threshold < 1.0:
            _bad("no_target_threshold", self.no_target_threshold, "must lie in [0, 1) (a share of the image)")
        _positive(self, "image_size", optional=True)
        _non_negative(self, "num_workers")
        if self.checkpoint is None:
            raise LAVTUserError("no checkpoint given: pass --checkpoint (a model folder, a training checkpoint or an official .pth)")

    def _check_paths(self) -> None:
        if not Path(self.checkpoint).exists():
            raise LAVTUserError(f"checkpoint {self.checkpoint} does not exist")
        super()._check_paths()
        _check_exists("tokenizer", self.tokenizer)
        for key in ("json", "per_expression"):
            check_writable(key, getattr(self, key), folder=False)
        check_writable("overlays", self.overlays, folder=True)


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
    # RRSIS-D as RMSIN (Liu et al., CVPR 2024; github.com/Lanx-Hou/RMSIN) trains LAVT-family
    # models: the one-model LAVT (text encoder inside, as here), lr 3e-5, 40 epochs, loss
    # 0.9 x class-weighted CE + 0.1 x Dice, 20-60 black 32-pixel boxes on a fixed 20% of
    # the training refs (the box count and size from an RMSIN-style augmentation read in another
    # fork, not checked against RMSIN's own code). The rest is the official recipe.
    "rrsisd": dict(
        dataset="rrsisd",
        lr=3e-5,
        epochs=40,
        loss="ce+dice",
        ce_loss_weight=0.9,
        dice_weight=0.1,
        box_aug_share=0.2,
        box_aug_count=[20, 60],
        box_aug_size=32,
    ),
    # RefSegRS as zhu-xlab/rrsis (Yuan et al., TGRS 2024) trains LAVT: 60 epochs, lr 5e-5,
    # the class-weighted CE alone, no augmentation; the rest is the official recipe.
    "refsegrs": dict(dataset="refsegrs", lr=5e-5, epochs=60, loss="ce"),
}


def load_train_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    preset: str | None = None,
    check_paths: bool = True,
) -> TrainConfig:
    """Preset, then file, then overrides (`{"lr": 1e-4}` or `["lr=1e-4", "model_overrides.window_size=12"]`)."""
    overrides = _check_sources(TrainConfig, path, overrides)
    data = layered(path, overrides, preset, PRESETS)
    return TrainConfig.from_dict(data, source=str(path) if path else "options").validate(check_paths)


def load_eval_config(
    path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None, check_paths: bool = True
) -> EvalConfig:
    """File, then overrides; evaluation has no presets."""
    overrides = _check_sources(EvalConfig, path, overrides)
    data = layered(path, overrides, None, {})
    return EvalConfig.from_dict(data, source=str(path) if path else "options").validate(check_paths)


def _check_sources(cls: type[RunConfig], path: str | Path | None, overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Check the file's keys and the overrides' keys each on its own, so that an unknown key
    or a wrong value is reported where it was written (the file, or "options"). Returns the
    overrides as a mapping."""
    over = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    layers = [("options", over)] + ([(str(path), read_config_file(path))] if path else [])
    for source, values in layers:
        dataclass_from_dict(cls, {k: v for k, v in values.items() if k != "preset"}, source)
    return over


def save_config(config: TrainConfig | EvalConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (readable back with `--config`)."""
    dump_yaml(config.to_dict(), path)


def check_data_root(data_root: str | None, dataset: str) -> None:
    """The refer layout needs `<root>/<dataset>/`: say so before any work starts."""
    if not data_root:
        raise LAVTUserError("no data root given: pass --data-root (the folder that holds <dataset>/refs(...).p and images/)")
    root = Path(data_root)
    if not root.is_dir():
        raise LAVTUserError(
            f"data root {root} does not exist; generate a dataset with `lavt data synth` or point --data-root at a refer folder"
        )
    if not (root / dataset).is_dir() and not any(p.is_dir() and p.name.lower() == dataset.lower() for p in root.iterdir()):
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "images")
        raise LAVTUserError(f"data root {root} has no dataset folder {dataset!r} (found: {found or 'none'}); check --dataset")


# ---------------------------------------------------------------------------------------
# checks


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
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        _bad("device", device, "must be auto, cpu, cuda or cuda:N")
    if precision == "fp16" and device == "cpu":
        _bad("precision", precision, "needs a CUDA device (fp16 uses a gradient scaler); use bf16 or fp32 on a CPU")


def check_writable(key: str, value: str | Path | None, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: a file where a folder
    is needed (or the reverse), or a place under a file or without write permission."""
    if value is None:
        return
    path = Path(value)
    if path.exists() and path.is_dir() != folder:
        kind = "a file, not a folder" if folder else "a folder, not a file"
        raise LAVTUserError(f"{key} {path} is {kind}; choose another path")
    existing = path if path.exists() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LAVTUserError(f"{key} {path} cannot be created: {existing} is a file; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LAVTUserError(f"{key} {path} cannot be written: no write permission in {existing}; choose another path")


def _check_exists(key: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise LAVTUserError(f"{key} {value} does not exist; give an existing path or leave it unset")

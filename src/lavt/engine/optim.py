"""Optimiser parameter groups, AdamW, and the learning-rate schedule of every training.

Parameter groups, rule `official` (as the official train.py builds them; the default):

1. backbone parameters whose names contain `norm`, `absolute_pos_embed` or
   `relative_position_bias_table`: weight decay 0;
2. the other backbone parameters (Swin blocks, PWAM, language gates): weight decay;
3. the decoder (`classifier`);
4. the text encoder's layers 0-9 only: its embeddings and later layers keep their
   pretrained values (`text_layers_trained=None` trains the whole encoder).

The backbone includes the PWAMs and gates because they live in `backbone.layers.{i}`. Each
group carries a `name` and may have its own learning rate (the paper uses one for all).
Text-encoder parameters that are not optimised are frozen (`requires_grad=False`): the
official code computes their gradients and then ignores them, which gives the same weights.

Rule `ndim` (the from-scratch demo recipe): every trainable matrix or kernel (ndim >= 2)
decays except the relative position tables; vectors (norms, biases) do not.

The schedule (`PolyWarmup`, applied by `PolyWarmupLR`) is the official per-iteration
polynomial decay with an optional linear warm-up; the decay follows the run's *progress*,
the share of its steps done by default, or any other share (the demo's wall-time budget).
"""
from __future__ import annotations

import operator
from functools import reduce
from typing import Any

import torch
from torch import nn

NO_DECAY_KEYS = ("norm", "absolute_pos_embed", "relative_position_bias_table")
RULES = ("official", "ndim")


def _text_params(text_encoder: nn.Module, layers: int | None) -> list[nn.Parameter]:
    if layers is None:
        return list(text_encoder.parameters())
    blocks = text_encoder.encoder.layer
    n = min(layers, len(blocks))
    return reduce(operator.concat, [list(blocks[i].parameters()) for i in range(n)], [])


def freeze_untrained_text_layers(model: nn.Module, layers: int | None) -> int:
    """Set `requires_grad=False` on text-encoder parameters that no group optimises;
    returns how many tensors were frozen."""
    text = getattr(model, "text_encoder", None)
    if text is None or layers is None:
        return 0
    trained = {id(p) for p in _text_params(text, layers)}
    frozen = 0
    for p in text.parameters():
        if id(p) not in trained:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    *,
    rule: str = "official",
    text_layers_trained: int | None = 10,
    lr_backbone: float | None = None,
    lr_decoder: float | None = None,
    lr_text: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups by `rule` (see module docstring). Parameters with `requires_grad=False`
    are left out and empty groups are dropped. `official`: parameters outside backbone,
    classifier and text encoder (none in LAVT) go to a last group `other` rather than being
    forgotten; the per-part learning rates and `text_layers_trained` belong to this rule."""
    if rule not in RULES:
        raise ValueError(f"unknown parameter-group rule {rule!r}; choose one of {RULES}")
    if rule == "ndim":
        return _ndim_groups(model, lr, weight_decay)
    backbone_no_decay, backbone_decay = [], []
    for name, p in model.backbone.named_parameters():
        if not p.requires_grad:
            continue
        if any(k in name for k in NO_DECAY_KEYS):
            backbone_no_decay.append(p)
        else:
            backbone_decay.append(p)
    lr_b = lr if lr_backbone is None else lr_backbone
    groups: list[dict[str, Any]] = [
        {"name": "backbone_no_decay", "params": backbone_no_decay, "weight_decay": 0.0, "lr": lr_b},
        {"name": "backbone", "params": backbone_decay, "weight_decay": weight_decay, "lr": lr_b},
        {
            "name": "decoder",
            "params": [p for p in model.classifier.parameters() if p.requires_grad],
            "weight_decay": weight_decay,
            "lr": lr if lr_decoder is None else lr_decoder,
        },
    ]
    text = getattr(model, "text_encoder", None)
    if text is not None:
        groups.append(
            {
                "name": "text_encoder",
                "params": [p for p in _text_params(text, text_layers_trained) if p.requires_grad],
                "weight_decay": weight_decay,
                "lr": lr if lr_text is None else lr_text,
            }
        )
    grouped = {id(p) for g in groups for p in g["params"]}
    text_ids = {id(p) for p in text.parameters()} if text is not None else set()
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in grouped and id(p) not in text_ids]
    if other:
        groups.append({"name": "other", "params": other, "weight_decay": weight_decay, "lr": lr})
    return [g for g in groups if g["params"]]


def _ndim_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "relative_position" not in name else no_decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay, "lr": lr},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: Any) -> torch.optim.AdamW:
    """AdamW over `param_groups`, configured from a TrainConfig."""
    groups = param_groups(
        model,
        config.lr,
        config.weight_decay,
        text_layers_trained=config.text_layers_trained,
        lr_backbone=config.lr_backbone,
        lr_decoder=config.lr_decoder,
        lr_text=config.lr_text,
    )
    return adamw(groups, lr=config.lr, weight_decay=config.weight_decay, amsgrad=config.amsgrad)


def adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float, amsgrad: bool = False) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the parameters live on CPU or CUDA: the same update in
    one pass over the parameters; on one CPU thread 0.32 s instead of 1.2-1.4 s for the
    per-tensor loop over 200 M parameters (Swin-B + BERT-base is 227 M)."""
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, amsgrad=amsgrad, fused=fused or None)


class PolyWarmup:
    """LR factor at optimiser step `it`: (1 - progress) ** power, the official polynomial
    decay stepped per iteration, times an optional linear warm-up over the first
    `warmup_steps` (from `start_factor` to 1). `progress` is the share of the run done,
    `it / total_steps` unless given (e.g. the share of a wall-time budget). A callable object
    (`f(it)`), so LambdaLR-style use keeps working."""

    def __init__(self, total_steps: int, power: float = 0.9, warmup_steps: int = 0, start_factor: float = 0.001) -> None:
        self.total_steps = max(1, int(total_steps))
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    @classmethod
    def ramp(cls, warmup_steps: int, total_steps: int = 1, power: float = 0.9) -> PolyWarmup:
        """The warm-up `min(1, (it + 1) / W)` of from-scratch recipes: the same line as the
        official form with `start_factor` 1/W over W - 1 steps (W = 1: no warm-up)."""
        w = max(1, int(warmup_steps))
        return cls(total_steps, power, w - 1, 1.0 / w)

    def factor(self, it: int, progress: float | None = None) -> float:
        share = it / self.total_steps if progress is None else progress
        factor = max(0.0, 1.0 - share) ** self.power
        if it < self.warmup_steps:
            factor *= self.start_factor + (1.0 - self.start_factor) * it / self.warmup_steps
        return factor

    def __call__(self, it: int) -> float:
        return self.factor(it)


class PolyWarmupLR(torch.optim.lr_scheduler.LRScheduler):
    """Each group's lr = its initial lr x `schedule.factor(step, progress)`. Call
    `step(progress)` after every optimiser step with the run's progress after it (None: the
    step count over `schedule.total_steps`). The state is plain values (`last_epoch` is the
    step count), so it saves with `torch.save` and loads with `weights_only=True`; the
    schedule itself comes from the configuration."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: PolyWarmup, last_epoch: int = -1) -> None:
        self.schedule = schedule
        self.progress: float | None = None
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # noqa: D102
        factor = self.schedule.factor(self.last_epoch, self.progress)
        return [base * factor for base in self.base_lrs]

    def step(self, progress: float | None = None) -> None:  # type: ignore[override]
        self.progress = progress
        super().step()

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also reads the state of the LambdaLR that earlier checkpoints hold (its
        `lr_lambdas` entry, if any, is ignored: the schedule is this object's)."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in ("lr_lambdas", "schedule", "optimizer")})


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, config: Any) -> PolyWarmupLR:
    """`PolyWarmupLR` over `total_steps` from a TrainConfig (call `.step()` after every
    optimiser step)."""
    fn = PolyWarmup(total_steps, config.poly_power, config.warmup_steps, config.warmup_start_factor)
    return PolyWarmupLR(optimizer, fn)

"""`lavt demo --train`: the demo recipe run by the engine's training loop.

The engine does the training (`lavt.engine.loop`: the same step as `lavt train`, with its
loss, clipping, schedule and non-finite check); the recipe brings what is its own:
- the model of `DemoRecipe` with the packaged MiniLM frozen, optionally warm-started;
- the batch source (`SceneBatches`: scenes in memory, cached text features, curriculum and
  kind weights);
- the budget: exactly `steps` steps, or `minutes` of wall time, whose progress drives the
  warm-up + polynomial schedule and the curriculum;
- the `ndim` weight-decay rule and, where the CPU has native bf16, bf16 autocast.

With `recipe.generalized` only the no-target head learns (the engine's `NoTargetTerm`), every
other weight frozen and in eval mode, so the masks stay the init model's bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lavt.data.tokenization import ExpressionTokenizer
from lavt.demo.recipe import DemoRecipe
from lavt.demo.scenes import SceneBatches, SceneSet, TextCache
from lavt.demo.warmstart import warm_start
from lavt.engine.generalized import NoTargetTerm
from lavt.engine.loop import StepBudget, StepResult, TimeBudget, TrainStep, progress_bar, run_steps
from lavt.engine.losses import SegmentationLoss
from lavt.engine.optim import PolyWarmup, PolyWarmupLR, adamw, param_groups
from lavt.models import LAVT
from lavt.models.text_encoder import default_text_encoder_dir

CLIP_GRAD_NORM = 1.0  # the recipe clips the gradient norm of every step
HEAD_PREFIX = "no_target_head."


class FrozenMaskLoss:
    """The mask loss of a step that trains only the no-target head: the frozen decoder has
    nothing to learn, so its term is 0 (and the logged loss is the head's alone)."""

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, norms: Any = None) -> torch.Tensor:
        return logits.new_zeros((), dtype=torch.float32)


class HeadOnly(nn.Module):
    """What the engine's step trains when only the no-target head learns: the frozen model's
    features and mask logits without gradients, then the head. Returns (mask logits,
    no-target logits) as `LAVT.forward(..., return_no_target=True)` does."""

    def __init__(self, model: LAVT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, *, text_features: torch.Tensor, text_mask: torch.Tensor,
                return_no_target: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            feats = self.model.features(image, text_features=text_features, text_mask=text_mask)
            logits = self.model.decode(feats, tuple(image.shape[-2:]))
        return logits, self.model.no_target_logit(feats, text_features, text_mask, logits)


@dataclass
class DemoTrainResult:
    model: Any
    tokenizer: Any
    history: list[dict[str, float]]
    seconds: float
    steps: int


def train_demo(
    recipe: DemoRecipe,
    train_set: SceneSet,
    progress: bool = True,
    on_step: Callable[[int, float, Any], None] | None = None,
) -> DemoTrainResult:
    """Train the demo model on `train_set` as `recipe` says; returns the model in eval mode
    and the history (step, loss, lr, seconds per step). `on_step(step, loss, model)` is called
    after every step."""
    recipe.validate()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    cfg = recipe.model_config()
    model = LAVT(cfg)
    model.load_text_encoder_weights()  # frozen, from the packaged MiniLM
    if recipe.init:
        warm_start(model, Path(recipe.init))
    if recipe.generalized:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(HEAD_PREFIX))
    tokenizer = ExpressionTokenizer(default_text_encoder_dir(), max_tokens=cfg.max_tokens)
    texts = TextCache(model, tokenizer)

    optimizer = adamw(param_groups(model, recipe.lr, recipe.weight_decay, rule="ndim"), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = PolyWarmupLR(optimizer, PolyWarmup.ramp(recipe.warmup_steps, recipe.steps))
    criterion: Any = FrozenMaskLoss() if recipe.generalized else SegmentationLoss("ce+dice", dice_weight=recipe.dice_weight)
    step = TrainStep(
        HeadOnly(model) if recipe.generalized else model, criterion, optimizer, scheduler,
        precision=recipe.precision, clip_grad_norm=CLIP_GRAD_NORM, loss_normalization="local",
        advice="Lower --lr (or use --precision fp32).", no_target=NoTargetTerm(1.0) if recipe.generalized else None,
    )
    batches = SceneBatches(train_set, texts, recipe.batch_size, rng, recipe.curriculum, recipe.kind_weights)
    if recipe.minutes is None:
        budget: StepBudget | TimeBudget = StepBudget(recipe.steps)
        bar = progress_bar(recipe.steps, "training", progress, unit="step", leave=True)
    else:
        budget = TimeBudget(60.0 * recipe.minutes)
        bar = progress_bar(round(budget.seconds), f"training for {recipe.minutes:g} min", progress, unit="s", leave=True,
                           bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")

    history: list[dict[str, float]] = []
    running: list[float] = []  # the loss's moving average, for the bar

    def record(result: StepResult) -> None:
        history.append({"step": result.step, "loss": result.loss, "lr": result.lr, "seconds": budget.elapsed})
        running[:] = [result.loss if not running else 0.95 * running[0] + 0.05 * result.loss]
        if bar is not None:
            bar.update(1 if recipe.minutes is None else min(budget.elapsed, budget.seconds) - bar.n)
            if result.step % 10 == 1:
                bar.set_postfix(step=result.step, loss=f"{running[0]:.3f}", lr=f"{result.lr:.1e}")
        if on_step is not None:
            on_step(result.step, result.loss, model)

    if recipe.generalized:
        model.eval()  # the frozen model computes what it computes at inference (no drop-path)
    else:
        model.train()
        model.text_encoder.eval()
    try:
        steps = run_steps(step, batches, budget, record)
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return DemoTrainResult(model, tokenizer, history, budget.elapsed, steps)

"""The training step and the loops that repeat it: one implementation for every recipe.

`TrainStep` is one optimiser step: the loss normaliser of the whole step (all micro-batches on
all processes) when asked for, forward under autocast and loss per micro-batch, backward
(DDP gradient sync only on the last micro-batch), one collective for the step's loss and
whether any process saw a non-finite value, gradient clipping, the optimiser step (through
the GradScaler for fp16) and the learning-rate schedule, driven by the run's progress.

Two loops drive it:

- `train_one_epoch`: the official `lavt train` epoch over a DataLoader (gradient
  accumulation, logging, callbacks), with `validate` after it;
- `run_steps`: any recipe that brings a batch source and a budget (`StepBudget` or
  `TimeBudget`, the stop condition whose progress also drives the schedule): `lavt demo --train`.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lavt.engine.distributed import DistEnv, all_reduce_sum, broadcast_object
from lavt.engine.generalized import NoTargetTerm
from lavt.engine.losses import SegmentationLoss
from lavt.engine.optim import PolyWarmupLR
from lavt.engine.samplers import to_device
from lavt.errors import LAVTUserError
from lavt.metrics import GeneralizedReferringMetrics, ReferringMetrics, batch_intersection_union
from lavt.models.no_target import decide
from lavt.precision import autocast

LOCAL = DistEnv()  # one process on the CPU
DEFAULT_ADVICE = "Lower the learning rate, use fp32 or bf16, or set clip_grad_norm."


class TrainingDiverged(LAVTUserError, RuntimeError):
    """The loss became NaN or infinite; the message names the step (and, in `lavt train`,
    the last good checkpoint). A user error: the recipe, not the code, has to change."""


@dataclass
class TrainEvent:
    """What a progress callback receives: `kind` is 'step' (after each optimiser step),
    'epoch' (after validation and checkpointing) or 'done'."""

    kind: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float | None = None
    lr: float | None = None
    metrics: dict[str, float] | None = None
    elapsed_s: float = 0.0


Callback = Callable[[TrainEvent], "bool | None"]


@dataclass
class StepResult:
    """One optimiser step: its number (1-based, over the whole run), its loss (over every
    micro-batch and process), the learning rate it used (first group) and the run's
    progress after it."""

    step: int
    loss: float
    lr: float
    progress: float


def forward_batch(model: nn.Module, batch: dict[str, Any], return_no_target: bool = False) -> Any:
    """Logits of a batch given as token ids (`input_ids`, `attention_mask`) or as
    precomputed text features (`text_features`, `text_mask`: a frozen text encoder); with
    `return_no_target`, (logits, no-target logits) as `LAVT.forward` gives them."""
    extra = {"return_no_target": True} if return_no_target else {}
    if "text_features" in batch:
        return model(batch["image"], text_features=batch["text_features"], text_mask=batch["text_mask"], **extra)
    return model(batch["image"], batch["input_ids"], batch["attention_mask"], **extra)


class TrainStep:
    """One optimiser step over a list of micro-batches (see module docstring). Batches are
    dicts with `image`, `mask` and the text (see `forward_batch`).

    `loss_normalization='global'` divides the loss by the normaliser of the whole step, so
    the gradient does not depend on how the total batch is split over processes and
    micro-batches; `'local'` averages the micro-batches' own means. On a non-finite loss it
    raises `TrainingDiverged` before touching the weights; the message says where
    (`where(step)`), then `hint`, then `advice`. `no_target` adds the no-target head's loss
    (generalised referring segmentation, `lavt.engine.generalized`).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: SegmentationLoss,
        optimizer: torch.optim.Optimizer,
        scheduler: PolyWarmupLR,
        *,
        env: DistEnv = LOCAL,
        precision: str = "fp32",
        scaler: torch.amp.GradScaler | None = None,
        clip_grad_norm: float | None = None,
        loss_normalization: str = "global",
        advice: str = DEFAULT_ADVICE,
        no_target: NoTargetTerm | None = None,
    ) -> None:
        self.model, self.criterion, self.optimizer, self.scheduler = model, criterion, optimizer, scheduler
        self.env, self.precision, self.scaler = env, precision, scaler
        self.clip_grad_norm = clip_grad_norm
        self.loss_normalization = loss_normalization
        self.advice = advice
        self.no_target = no_target
        self.hint = ""
        self.where: Callable[[int], str] = lambda step: f"at optimiser step {step}"

    def __call__(self, micro: Sequence[dict[str, Any]], progress: Callable[[int], float] | None = None) -> StepResult:
        """Train on `micro`; `progress(step)` gives the run's progress after this step for the
        schedule (None: the step count over the schedule's total)."""
        env, device, n = self.env, self.env.device, len(micro)
        if self.loss_normalization == "global":
            local = sum(self.criterion.normalizers(b["mask"].to(device, non_blocking=True)) for b in micro)
            if self.no_target is not None:
                local = torch.cat([local, self.no_target.normalizer(micro, device)])
            norms = all_reduce_sum(local, env)
            scale = float(env.world_size)
        else:
            norms, scale = None, 1.0 / n
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for k, batch in enumerate(micro):
            batch = to_device(batch, device)
            sync = (not env.distributed) or k == n - 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with autocast(self.precision, device):
                    out = forward_batch(self.model, batch, return_no_target=self.no_target is not None)
                logits, nt_logit = out if self.no_target is not None else (out, None)
                loss = self.criterion(logits, batch["mask"], norms)
                if self.no_target is not None:
                    loss = loss + self.no_target(nt_logit, batch, None if norms is None else norms[2])
                loss = loss * scale
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            step_loss += loss.detach().double()
        # One collective per step: the global loss and whether any process saw a bad value.
        step_loss = step_loss / env.world_size
        finite = torch.isfinite(step_loss).double()
        packed = all_reduce_sum(torch.stack([torch.nan_to_num(step_loss, nan=0.0, posinf=0.0, neginf=0.0), 1.0 - finite]), env)
        step = self.scheduler.last_epoch + 1
        if packed[1].item() > 0:
            raise TrainingDiverged(
                f"the loss became non-finite {self.where(step)}; the weights were not updated by that step. "
                f"{self.hint}{self.advice}"
            )
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            if self.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
            self.optimizer.step()
        share = progress(step) if progress is not None else step / self.scheduler.schedule.total_steps
        self.scheduler.step(share)
        return StepResult(step, float(packed[0].item()), lr, share)


# ---------------------------------------------------------------------------------------
# budgets: the stop condition of a recipe, whose progress drives its schedule


class Budget(Protocol):
    """A run's length. `progress(steps_done)` reads the clock once (kept as `elapsed`, the
    seconds since `start()`) and returns the share of the run done; the run stops at 1."""

    elapsed: float

    def start(self) -> None: ...

    def progress(self, steps_done: int) -> float: ...


class _Budget:
    """A stop condition that also measures the run's progress (0 -> 1) and its wall time."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self._t0, self.elapsed = time.perf_counter(), 0.0

    def progress(self, steps_done: int) -> float:
        self.elapsed = time.perf_counter() - self._t0
        return self._share(steps_done)

    def _share(self, steps_done: int) -> float:
        raise NotImplementedError


class StepBudget(_Budget):
    """Exactly `steps` optimiser steps (reproducible): progress = steps done / steps."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = int(steps)

    def _share(self, steps_done: int) -> float:
        return steps_done / self.steps


class TimeBudget(_Budget):
    """A wall-time budget: progress = seconds since `start()` / `seconds`; the run stops
    after the first step that ends past the budget."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = float(seconds)

    def _share(self, steps_done: int) -> float:
        return self.elapsed / self.seconds


def run_steps(
    step: TrainStep,
    batches: Callable[[float], Sequence[dict[str, Any]]],
    budget: Budget,
    on_step: Callable[[StepResult], bool | None] | None = None,
) -> int:
    """Repeat `step` on `batches(progress)` (the micro-batches of one step, drawn knowing
    the progress so far, e.g. for a curriculum) until the budget is spent or `on_step`
    returns False; returns the number of steps taken."""
    budget.start()
    progress, done = 0.0, 0
    while progress < 1.0:
        result = step(batches(progress), progress=budget.progress)
        done += 1
        progress = result.progress
        if on_step is not None and on_step(result) is False:
            break
    return done


# ---------------------------------------------------------------------------------------
# the official epoch


@dataclass
class RunState:
    """Counters shared between `lavt train`'s run and its epochs."""

    global_step: int = 0
    total_steps: int = 1
    epoch: int = 0
    epochs: int = 1
    start_time: float = field(default_factory=time.time)
    stop: bool = False


def train_one_epoch(
    step: TrainStep,
    loader: DataLoader,
    *,
    state: RunState,
    accum_steps: int,
    log: Callable[[dict[str, Any]], None] | None = None,
    log_every: int = 10,
    callback: Callback | None = None,
    progress: bool = False,
    checkpoint_hint: str = "",
) -> dict[str, float]:
    """One pass over the loader: `len(loader) // accum_steps` optimiser steps of
    `accum_steps` micro-batches each; logs the running loss every `log_every` steps and
    calls `callback` after every step (False stops the run: `state.stop`)."""
    env, optimizer = step.env, step.optimizer
    step.model.train()
    steps = len(loader) // accum_steps
    it = iter(loader)
    first = state.global_step
    step.where = lambda n: f"at epoch {state.epoch + 1}, step {n - first} of the epoch (optimiser step {n})"
    step.hint = checkpoint_hint
    bar = progress_bar(steps, f"epoch {state.epoch + 1}/{state.epochs}", progress and env.is_main)
    running, running_n, epoch_loss = 0.0, 0, 0.0
    t_log, samples_since = time.time(), 0
    done = 0
    try:
        for step_in_epoch in range(steps):
            micro = [next(it) for _ in range(accum_steps)]  # on the host until their turn
            result = step(micro)
            state.global_step += 1
            done += 1
            loss_value = result.loss
            epoch_loss += loss_value
            running += loss_value
            running_n += 1
            samples_since += sum(int(b["image"].shape[0]) for b in micro) * env.world_size
            lr = optimizer.param_groups[0]["lr"]
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                bar.update(1)
            if log is not None and (state.global_step % log_every == 0 or step_in_epoch == steps - 1):
                now = time.time()
                log(
                    {
                        "event": "train",
                        "epoch": state.epoch + 1,
                        "step": state.global_step,
                        "loss": running / running_n,
                        "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)},
                        "samples_per_s": samples_since / max(now - t_log, 1e-9),
                        "time": now - state.start_time,
                    }
                )
                running, running_n, t_log, samples_since = 0.0, 0, now, 0
            if callback is not None:
                ev = TrainEvent(
                    "step",
                    state.epoch,
                    state.epochs,
                    state.global_step,
                    state.total_steps,
                    loss_value,
                    lr,
                    None,
                    time.time() - state.start_time,
                )
                stop = callback(ev) is False if env.is_main else False
                if broadcast_object(stop, env):
                    state.stop = True
                    break
    finally:
        if bar is not None:
            bar.close()
    return {"train_loss": epoch_loss / max(done, 1), "steps": done}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, env: DistEnv, precision: str = "fp32", progress: bool = False) -> dict[str, float]:
    """oIoU/mIoU/P@t at the training resolution over the loader's items, all processes
    together (sums all-reduced). The official training validation: one expression per object.
    On a generalised split (items labelled `no_target`) the classic metrics cover the targeted
    expressions, as `evaluate` reports them, and with a model that decides "no target" (head
    or area rule) ReLA's gIoU, cIoU, N-acc and T-acc of those decisions are added."""
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    was_training = net.training
    net.eval()
    metrics = ReferringMetrics()
    generalized = GeneralizedReferringMetrics()
    cfg = net.config
    head = cfg.no_target == "head"
    bar = progress_bar(len(loader), "validate", progress and env.is_main)
    for batch in loader:
        batch = to_device(batch, env.device)
        with autocast(precision, env.device):
            out = forward_batch(net, batch, return_no_target=head)
        logits, nt_logit = out if head else (out, None)
        preds = logits.argmax(1).bool()
        inter, union = batch_intersection_union(preds, batch["mask"])  # once, for both metrics
        gt_nt = batch["no_target"].tolist() if "no_target" in batch else [False] * len(inter)
        decision = decide(cfg.no_target, cfg.no_target_threshold, preds, nt_logit) if "no_target" in batch else None
        pred_nt = decision[0].tolist() if decision is not None else None
        for k, (i, u) in enumerate(zip(inter, union)):
            if not gt_nt[k]:
                metrics.add(i, u)
            if pred_nt is not None:
                generalized.add(i, u, pred_no_target=pred_nt[k], gt_no_target=gt_nt[k])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    metrics.all_reduce(env.device)
    generalized.all_reduce(env.device)
    net.train(was_training)
    if metrics.count == 0:
        raise LAVTUserError("the validation split has no expressions to score")
    out = {**metrics.compute(), "expressions": metrics.count}
    if generalized.count:
        g = generalized.compute()
        out.update({k: g[k] for k in ("gIoU", "cIoU", "N-acc", "T-acc")}, no_target=g["no_target"])
    return out


def progress_bar(total: float, desc: str, enabled: bool, **options: Any) -> tqdm | None:
    """A tqdm bar (not left on screen unless `leave=True`), or None when disabled."""
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, **{"dynamic_ncols": True, "leave": False, **options})

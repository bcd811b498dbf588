"""Training: the official LAVT recipe as a few plain functions (torchvision-reference style).

`train(config)` runs a whole training, in one process or in each process of
`torchrun --nproc_per_node N [--nnodes M ...] -m lavt train ...`:

    for epoch:
        train_one_epoch(...)      # AdamW + per-iteration poly LR, grad accumulation, AMP
        validate(...)             # oIoU on the val split, one expression per object
        save checkpoint.pt        # every epoch, atomic; model_best/ by val oIoU

What makes the recipe independent of the hardware split: `batch_size` is the total batch of
one optimiser step; each process runs `micro_batch_size` samples per forward and
accumulates; the sampler hands out the same global batches whatever the number of
processes; BatchNorm statistics are synchronised; and with `loss_normalization='global'`
the loss is normalised by the whole step's weights. One process with batch 4 and two
processes with batch 2 each therefore take the same step.

Exact resume: the checkpoint holds model, optimiser, scheduler, scaler, epoch, step and every
process's RNG states; the sampler and the expression sampling are pure functions of
(seed, epoch), so a resumed run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from lavt.engine import checkpoint as ckpt_io
from lavt.engine.config import TrainConfig, save_config
from lavt.engine.distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    process_group,
)
from lavt.engine.losses import SegmentationLoss
from lavt.engine.memory import keep_freed_memory
from lavt.engine.optim import build_optimizer, build_scheduler, freeze_untrained_text_layers
from lavt.errors import LAVTUserError
from lavt.metrics import ReferringMetrics

LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"
CONFIG_NAME = "config.yaml"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


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


@dataclass
class TrainResult:
    """Where the run's files are and how it went."""

    output_dir: Path
    epochs_completed: int
    global_step: int
    best: dict[str, Any]
    history: list[dict[str, Any]]
    stopped: bool
    checkpoint: Path
    best_model: Path | None
    last_model: Path
    seconds: float = 0.0


Callback = Callable[[TrainEvent], "bool | None"]


# ---------------------------------------------------------------------------------------
# samplers and batches


class GlobalBatchSampler(DistributedSampler):
    """DistributedSampler whose global batches do not depend on the number of processes.

    Each epoch shuffles with a generator seeded by `seed + epoch` (the permutation of torch's
    DistributedSampler), keeps the first `steps * batch_size` indices (`batch_size` = the
    total batch of one optimiser step; the remainder is dropped like `drop_last`) and gives
    process r every world-th index starting at r. Step k then covers exactly permutation
    entries [k*batch_size, (k+1)*batch_size) on any number of processes and accumulation steps.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        max_steps: int | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size = int(batch_size)
        self.steps = len(dataset) // self.batch_size
        if max_steps is not None:
            self.steps = min(self.steps, int(max_steps))
        self.num_samples = self.steps * self.batch_size // num_replicas
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        order = order[: self.steps * self.batch_size]
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler[int]):
    """Evaluation shards: process r scores items r, r+world, ... (no padding, no repeats)."""

    def __init__(self, length: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape, turn ints into a tensor, keep anything else as a list."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        v0 = values[0]
        if isinstance(v0, torch.Tensor) and all(v.shape == v0.shape for v in values):
            out[key] = torch.stack(values)
        elif isinstance(v0, int) and not isinstance(v0, bool):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    return out


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the run's device; fp32 is a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------
# one epoch


@dataclass
class _StepState:
    """Counters shared between `train` and `train_one_epoch`."""

    global_step: int = 0
    total_steps: int = 1
    epoch: int = 0
    epochs: int = 1
    start_time: float = field(default_factory=time.time)
    stop: bool = False
    step_losses: list[tuple[int, float]] = field(default_factory=list)


def train_one_epoch(
    model: nn.Module,
    criterion: SegmentationLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    *,
    env: DistEnv,
    state: _StepState,
    accum_steps: int,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = None,
    loss_normalization: str = "global",
    log: Callable[[dict[str, Any]], None] | None = None,
    log_every: int = 10,
    callback: Callback | None = None,
    progress: bool = False,
    checkpoint_hint: str = "",
) -> dict[str, float]:
    """One pass over the loader: `len(loader) // accum_steps` optimiser steps.

    Each step gathers `accum_steps` micro-batches, computes the step's loss normaliser (all
    processes, all micro-batches) when `loss_normalization='global'`, runs forward/backward
    per micro-batch (DDP gradient sync only on the last), checks the loss is finite on every
    process, then steps the optimiser and the per-iteration LR schedule.
    """
    model.train()
    device = env.device
    steps = len(loader) // accum_steps
    it = iter(loader)
    bar = _progress_bar(steps, f"epoch {state.epoch + 1}/{state.epochs}", progress and env.is_main)
    running, running_n, epoch_loss = 0.0, 0, 0.0
    t_log, samples_since = time.time(), 0
    done = 0
    for step_in_epoch in range(steps):
        micro = [next(it) for _ in range(accum_steps)]  # on the host until their turn
        if loss_normalization == "global":
            local = sum(criterion.normalizers(b["mask"].to(device, non_blocking=True)) for b in micro)
            norms = all_reduce_sum(local, env)
            scale = float(env.world_size)
        else:
            norms, scale = None, 1.0 / accum_steps
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for k, batch in enumerate(micro):
            batch = _to_device(batch, device)
            sync = (not env.distributed) or k == accum_steps - 1
            ctx = contextlib.nullcontext() if sync else model.no_sync()
            with ctx:
                with autocast_context(precision, device):
                    logits = model(batch["image"], batch["input_ids"], batch["attention_mask"])
                loss = criterion(logits, batch["mask"], norms) * scale
                (scaler.scale(loss) if scaler is not None else loss).backward()
            step_loss += loss.detach().double()
        # One collective per step: the global loss and whether any process saw a bad value.
        step_loss = step_loss / env.world_size
        finite = torch.isfinite(step_loss).double()
        packed = all_reduce_sum(torch.stack([torch.nan_to_num(step_loss, nan=0.0, posinf=0.0, neginf=0.0), 1.0 - finite]), env)
        if packed[1].item() > 0:
            if bar is not None:
                bar.close()
            raise TrainingDiverged(
                f"the loss became non-finite at epoch {state.epoch + 1}, step {step_in_epoch + 1} of the epoch "
                f"(optimiser step {state.global_step + 1}); the weights were not updated by that step. "
                f"{checkpoint_hint}Lower the learning rate, use fp32 or bf16, or set clip_grad_norm."
            )
        if scaler is not None:
            if clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            if clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
        scheduler.step()
        state.global_step += 1
        done += 1
        loss_value = float(packed[0].item())
        epoch_loss += loss_value
        running += loss_value
        running_n += 1
        samples_since += sum(int(b["image"].shape[0]) for b in micro) * env.world_size
        lr = optimizer.param_groups[0]["lr"]
        state.step_losses.append((state.global_step, loss_value))
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
            ev = TrainEvent("step", state.epoch, state.epochs, state.global_step, state.total_steps, loss_value, lr, None, time.time() - state.start_time)
            stop = callback(ev) is False if env.is_main else False
            if broadcast_object(stop, env):
                state.stop = True
                break
    if bar is not None:
        bar.close()
    return {"train_loss": epoch_loss / max(done, 1), "steps": done}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, env: DistEnv, precision: str = "fp32", progress: bool = False) -> dict[str, float]:
    """oIoU/mIoU/P@t at the training resolution over the loader's items, all processes
    together (sums all-reduced). The official training validation: one expression per object."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    metrics = ReferringMetrics()
    bar = _progress_bar(len(loader), "validate", progress and env.is_main)
    for batch in loader:
        batch = _to_device(batch, env.device)
        with autocast_context(precision, env.device):
            logits = net(batch["image"], batch["input_ids"], batch["attention_mask"])
        metrics.update_batch(logits.argmax(1), batch["mask"])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    metrics.all_reduce(env.device)
    net.train(was_training)
    if metrics.count == 0:
        raise LAVTUserError("the validation split has no expressions to score")
    return {**metrics.compute(), "expressions": metrics.count}


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------------------------
# building the pieces


def build_model(config: TrainConfig) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The model to train, its tokenizer, and notes (what was initialised from where).

    Fresh: a Swin preset + overrides, the text encoder's pretrained weights (a local HF
    folder, by default the packaged MiniLM) and optionally Microsoft Swin weights. With
    `init_from`: the weights of a saved LAVT (folder, checkpoint or official file).
    """
    from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
    from lavt.models import LAVT, LAVTConfig, build_config, load_state_strict, load_swin_pretrained, load_text_encoder
    from lavt.models.text_encoder import bert_config_dict

    overrides = dict(config.model_overrides)
    overrides.setdefault("image_size", config.image_size)
    if config.activation_checkpointing:
        overrides["use_checkpoint"] = True
    notes: dict[str, Any] = {}
    if config.init_from:
        from lavt.loading import load_model

        loaded = load_model(config.init_from)
        cfg_dict = loaded.model.config.to_dict()
        cfg_dict.update(overrides)
        model = LAVT(LAVTConfig.from_dict(cfg_dict))
        load_state_strict(model, loaded.model.state_dict(), source=str(config.init_from))
        tok_dir = config.tokenizer
        tokenizer = ExpressionTokenizer.from_pretrained(tok_dir, max_tokens=model.config.max_tokens) if tok_dir else loaded.tokenizer
        if tokenizer is None:
            from lavt.loading import default_tokenizer

            tokenizer = default_tokenizer(model)
        notes["init_from"] = str(config.init_from)
        return model, tokenizer, notes

    text_dir = Path(config.text_encoder) if config.text_encoder else default_text_encoder_dir()
    text_encoder = load_text_encoder(text_dir)
    if config.text_layers_trained == 0 and "text_encoder_weights" not in overrides:
        # A frozen text encoder is stored by reference: model folders stay small.
        overrides["text_encoder_weights"] = str(Path(config.text_encoder).resolve()) if config.text_encoder else "minilm"
    bert = bert_config_dict(text_encoder.config)
    overrides.setdefault("text_dim", bert["hidden_size"])
    cfg = build_config(config.model, text_encoder=bert, **overrides)
    model = LAVT(cfg)
    model.text_encoder.load_state_dict(text_encoder.state_dict(), strict=True)
    notes["text_encoder"] = str(text_dir)
    if config.pretrained_backbone:
        report = load_swin_pretrained(model, config.pretrained_backbone)
        notes["pretrained_backbone"] = str(config.pretrained_backbone)
        missing = report["missing"]  # PWAMs, gates and stage norms are new: expected
        notes["backbone_not_loaded"] = {"count": len(missing), "first": missing[:5]}
    tokenizer = ExpressionTokenizer.from_pretrained(config.tokenizer or text_dir, max_tokens=cfg.max_tokens)
    return model, tokenizer, notes


def build_datasets(config: TrainConfig, tokenizer: Any) -> tuple[Any, Any | None]:
    """Training set (one random expression per object per epoch) and validation set."""
    from lavt.data import ReferDataset

    common = dict(tokenizer=tokenizer, image_size=config.image_size, mask_mode=config.mask_mode, seed=config.seed)
    split_by = config.resolved_split_by
    train_ds = ReferDataset(config.data_root, config.dataset, split_by, config.train_split, mode="train", max_images=config.max_images, **common)
    val_ds = None
    if config.val_split:
        mode = "train" if config.val_expressions == "one" else "eval"
        val_ds = ReferDataset(config.data_root, config.dataset, split_by, config.val_split, mode=mode, max_images=config.val_max_images, **common)
        if mode == "train":
            val_ds.set_epoch(0)  # the same expression per object at every validation
    return train_ds, val_ds


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# logging and plots


class _RunLog:
    """JSON-lines log, optional TensorBoard, and the curves plot; main process only."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = out / LOG_NAME
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except (ImportError, ModuleNotFoundError):
                warnings.warn("tensorboard is not installed (pip install tensorboard); logging to log.jsonl only", stacklevel=2)

    def __call__(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for key, value in _flatten(record).items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('event', 'log')}/{key}", value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plot_curves(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Training loss per step and validation scores per epoch from a run's log.jsonl."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps: dict[int, float] = {}
    epochs: dict[int, dict[str, float]] = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("event") == "train":
            steps[int(r["step"])] = float(r["loss"])  # a resumed run overwrites repeated steps
        elif r.get("event") == "epoch" and r.get("val"):
            epochs[int(r["epoch"])] = r["val"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = sorted(steps)
    axes[0].plot(xs, [steps[s] for s in xs], lw=1)
    axes[0].set(xlabel="optimiser step", ylabel="training loss", title="loss")
    if epochs:
        es = sorted(epochs)
        for key in ("oIoU", "mIoU"):
            axes[1].plot(es, [epochs[e].get(key, float("nan")) for e in es], marker="o", label=key)
        axes[1].legend()
    axes[1].set(xlabel="epoch", ylabel="%", title="validation")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


# ---------------------------------------------------------------------------------------
# the whole run


def _recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    ignore = {"resume", "output_dir", "progress", "log_every", "num_workers", "tensorboard", "plot", "device", "init_from"}
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


def train(config: TrainConfig, callback: Callback | None = None) -> TrainResult:
    """Train LAVT as `config` says (see module docstring); returns where things went.

    `callback(event)` is called on the main process after every optimiser step and every
    epoch; returning `False` stops the run (the model so far goes to `model_last/`; the
    resumable `checkpoint.pt` stays at the last finished epoch).
    """
    config.validate(check_paths=True)
    with process_group(config.device) as env:
        return _run(config, env, callback)


def _run(config: TrainConfig, env: DistEnv, callback: Callback | None) -> TrainResult:
    t0 = time.time()
    device = env.device
    if device.type == "cpu":
        keep_freed_memory()  # activation-sized blocks are reused instead of re-faulted each step
    if config.precision == "fp16" and device.type != "cuda":
        raise LAVTUserError("precision fp16 needs a CUDA device (it uses a gradient scaler); use bf16 or fp32 on a CPU")
    micro = config.micro_batch_size or config.batch_size // env.world_size
    if micro < 1 or config.batch_size % (micro * env.world_size):
        raise LAVTUserError(
            f"batch_size {config.batch_size} (the total per optimiser step) cannot be split into "
            f"{env.world_size} process(es) x micro_batch_size {micro}: choose a batch_size divisible by "
            f"{micro * env.world_size} or another micro_batch_size"
        )
    accum = config.batch_size // (micro * env.world_size)
    out = Path(config.output_dir)
    resume_path = ckpt_io.find_resume(config.resume, out)

    _seed_everything(config.seed)
    model, tokenizer, notes = build_model(config)
    train_ds, val_ds = build_datasets(config, tokenizer)
    if len(train_ds) < config.batch_size:
        raise LAVTUserError(
            f"the training split has {len(train_ds)} objects, fewer than batch_size {config.batch_size}: "
            "lower batch_size or use more images"
        )
    freeze_untrained_text_layers(model, config.text_layers_trained)

    resumed = ckpt_io.load_checkpoint(resume_path) if resume_path else None
    if resumed is not None:
        from lavt.models import load_state_strict

        load_state_strict(model, resumed["model"], source=str(resume_path))
    model.to(device)
    if env.distributed and config.sync_batchnorm:
        model = convert_sync_batchnorm(model, device)
    net = model
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )

    sampler = GlobalBatchSampler(train_ds, config.batch_size, env.world_size, env.rank, seed=config.seed, max_steps=config.steps_per_epoch)
    steps_per_epoch = sampler.steps
    total_steps = steps_per_epoch * config.epochs
    pin = device.type == "cuda"
    loader = DataLoader(train_ds, batch_size=micro, sampler=sampler, num_workers=config.num_workers, collate_fn=collate, pin_memory=pin, drop_last=True)
    val_loader = None
    if val_ds is not None:
        val_loader = DataLoader(
            val_ds, batch_size=micro, sampler=ShardSampler(len(val_ds), env.rank, env.world_size),
            num_workers=config.num_workers, collate_fn=collate, pin_memory=pin,
        )

    criterion = SegmentationLoss(config.loss, config.ce_weight, config.dice_weight).to(device)
    optimizer = build_optimizer(net, config)
    scheduler = build_scheduler(optimizer, total_steps, config)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None

    state = _StepState(total_steps=total_steps, epochs=config.epochs)
    start_epoch, best, history = 0, {"oIoU": None, "epoch": None}, []
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        sched = dict(resumed["lr_scheduler"])
        sched["lr_lambdas"] = [None] * len(optimizer.param_groups)  # keep this run's schedule object
        scheduler.load_state_dict(sched)
        if scaler is not None and resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        start_epoch = int(resumed["epoch"]) + 1
        state.global_step = int(resumed["global_step"])
        best, history = dict(resumed["best"]), list(resumed["history"])
        if resumed["sampler"].get("seed") != config.seed:
            raise LAVTUserError(f"{resume_path} was trained with seed {resumed['sampler'].get('seed')}, not {config.seed}: resume with the same seed")
        diffs = _recipe_differences(resumed.get("config", {}), config.to_dict())
        if diffs and env.is_main:
            warnings.warn(f"resuming {resume_path} with a different configuration for: {', '.join(diffs)}; the saved optimiser/schedule state wins", stacklevel=2)
        rngs = resumed["rng"]
        if len(rngs) != env.world_size and env.is_main:
            warnings.warn(f"{resume_path} was written by {len(rngs)} process(es), resuming with {env.world_size}: random streams (drop path) will differ from an uninterrupted run", stacklevel=2)
        ckpt_io.restore_rng_state(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
    else:
        _seed_everything(config.seed + env.rank)  # per-process streams for drop path and dropout

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / CONFIG_NAME)
    barrier(env)
    log = _RunLog(out, env.is_main, config.tensorboard)
    if env.is_main:
        log(
            {
                "event": "resume" if resumed is not None else "start",
                "epoch": start_epoch,
                "step": state.global_step,
                "world_size": env.world_size,
                "device": str(device),
                "micro_batch_size": micro,
                "accumulation_steps": accum,
                "steps_per_epoch": steps_per_epoch,
                "train_objects": len(train_ds),
                "val_items": len(val_ds) if val_ds is not None else 0,
                "parameters": sum(p.numel() for p in net.parameters()),
                "trainable": sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
                **notes,
            }
        )

    checkpoint_path = out / ckpt_io.CHECKPOINT_NAME
    best_dir, last_dir = out / ckpt_io.BEST_DIR, out / ckpt_io.LAST_DIR
    completed = start_epoch  # epochs finished and checkpointed
    try:
        for epoch in range(start_epoch, config.epochs):
            state.epoch = epoch
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            hint = (
                f"The last good checkpoint is {checkpoint_path}. "
                if checkpoint_path.is_file()
                else "No checkpoint had been written yet. "
            )
            t_epoch = time.time()
            stats = train_one_epoch(
                model, criterion, optimizer, scheduler, loader,
                env=env, state=state, accum_steps=accum, precision=config.precision, scaler=scaler,
                clip_grad_norm=config.clip_grad_norm, loss_normalization=config.loss_normalization,
                log=log if env.is_main else None, log_every=config.log_every, callback=callback,
                progress=config.progress, checkpoint_hint=hint,
            )
            if state.stop:
                break
            val = validate(model, val_loader, env, config.precision, config.progress) if val_loader is not None else None
            score = val["oIoU"] if val is not None else None
            improved = val is None or best["oIoU"] is None or score > best["oIoU"]
            if improved:
                best = {"oIoU": score, "epoch": epoch + 1}
            record = {
                "event": "epoch", "epoch": epoch + 1, "step": state.global_step, "train_loss": stats["train_loss"],
                "val": val, "best": dict(best), "seconds": time.time() - t_epoch,
            }
            history.append({k: v for k, v in record.items() if k != "event"})
            rng = all_gather_objects(ckpt_io.capture_rng_state(), env)
            if env.is_main:
                ckpt_io.atomic_save(
                    ckpt_io.training_state(
                        model=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler, epoch=epoch,
                        global_step=state.global_step, best=best, history=history, config=config.to_dict(),
                        sampler={"seed": config.seed, "epoch": epoch, "batch_size": config.batch_size}, rng=rng,
                    ),
                    checkpoint_path,
                )
                ckpt_io.save_model_folder(net, last_dir, tokenizer)
                if improved:
                    ckpt_io.save_model_folder(net, best_dir, tokenizer)
                log(record)
                if config.plot:
                    plot_curves(out / LOG_NAME, out / PLOT_NAME)
            barrier(env)
            completed = epoch + 1
            if callback is not None:
                ev = TrainEvent("epoch", epoch, config.epochs, state.global_step, total_steps, stats["train_loss"],
                                optimizer.param_groups[0]["lr"], val, time.time() - t0)
                stop = callback(ev) is False if env.is_main else False
                if broadcast_object(stop, env):
                    state.stop = True
                    break
    finally:
        log.close()

    if state.stop and env.is_main:
        ckpt_io.save_model_folder(net, last_dir, tokenizer)
        log({"event": "stopped", "epoch": completed, "step": state.global_step})
    barrier(env)
    result = TrainResult(
        output_dir=out,
        epochs_completed=completed,
        global_step=state.global_step,
        best=best,
        history=history,
        stopped=state.stop,
        checkpoint=checkpoint_path,
        best_model=best_dir if best_dir.exists() else None,
        last_model=last_dir,
        seconds=time.time() - t0,
    )
    if callback is not None and env.is_main:
        callback(TrainEvent("done", max(completed - 1, 0), config.epochs, state.global_step, total_steps, None, None, None, result.seconds))
    return result

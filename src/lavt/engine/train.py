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
(seed, epoch), so a resumed run ends with the same weights as an uninterrupted one, whenever
the first run was killed (checkpoints are replaced atomically, see `checkpoint`).

What stops a run keeps the last good checkpoint and says so in one message: a non-finite
loss (`TrainingDiverged`, naming the step), a checkpoint that cannot be written, e.g. a full
disk (`LAVTUserError`; the previous checkpoint is untouched), Ctrl-C (`TrainingInterrupted`).

The pieces live beside this module: the step and the epoch in `loop`, samplers and batches in
`samplers`, the optimiser and schedule in `optim`, the log and curves in `runlog`.
"""
from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lavt.data.augment import BoxAugment
from lavt.data.dataset import ReferDataset
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.engine import checkpoint as ckpt_io
from lavt.engine.config import TrainConfig, save_config
from lavt.engine.distributed import DistEnv, all_gather_objects, barrier, broadcast_object, convert_sync_batchnorm, process_group
from lavt.engine.generalized import NoTargetTerm
from lavt.engine.loop import Callback, RunState, TrainEvent, TrainingDiverged, TrainStep, train_one_epoch, validate
from lavt.engine.losses import SegmentationLoss
from lavt.engine.memory import keep_freed_memory
from lavt.engine.optim import build_optimizer, build_scheduler, freeze_untrained_text_layers
from lavt.engine.runlog import LOG_NAME, PLOT_NAME, RunLog, plot_curves
from lavt.engine.samplers import GlobalBatchSampler, ShardSampler, collate
from lavt.engine.stopping import Terminated, TrainingInterrupted, last_good, sigterm_stops_training, write_failure
from lavt.errors import LAVTUserError
from lavt.loading import default_tokenizer, load_model
from lavt.models import LAVT, LAVTConfig, build_config, load_state_strict, load_swin_pretrained, load_text_encoder
from lavt.models.text_encoder import bert_config_dict
from lavt.runtime.folder import refuse_export_folder

CONFIG_NAME = "config.yaml"

__all__ = ["TrainEvent", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "build_datasets", "build_model", "train"]


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


# ---------------------------------------------------------------------------------------
# building the pieces


def build_model(config: TrainConfig) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The model to train, its tokenizer, and notes (what was initialised from where).

    Fresh: a Swin preset + overrides, the text encoder's pretrained weights (a local HF
    folder, by default the packaged MiniLM) and optionally Microsoft Swin weights. With
    `init_from`: the weights of a saved LAVT (folder, checkpoint or official file).
    """
    overrides = dict(config.model_overrides)
    overrides.setdefault("image_size", config.image_size)
    if config.activation_checkpointing:
        overrides["use_checkpoint"] = True
    notes: dict[str, Any] = {}
    if config.init_from:
        refuse_export_folder(config.init_from, "--init-from")
        loaded = load_model(config.init_from)
        cfg_dict = loaded.model.config.to_dict()
        cfg_dict.update(overrides)
        model = LAVT(LAVTConfig.from_dict(cfg_dict))
        state = loaded.model.state_dict()
        if model.no_target_head is not None and not any(k.startswith("no_target_head.") for k in state):
            # a classic model learning no-target expressions: its no-target head starts fresh
            state.update({f"no_target_head.{k}": v for k, v in model.no_target_head.state_dict().items()})
        load_state_strict(model, state, source=str(config.init_from))
        tok_dir = config.tokenizer
        tokenizer = ExpressionTokenizer.from_pretrained(tok_dir, max_tokens=model.config.max_tokens) if tok_dir else loaded.tokenizer
        if tokenizer is None:
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
    common = dict(
        tokenizer=tokenizer, image_size=config.image_size, mask_mode=config.mask_mode, seed=config.seed, image_dir=config.image_dir
    )
    split_by = config.resolved_split_by
    train_ds = ReferDataset(
        config.data_root, config.dataset, split_by, config.train_split, mode="train", max_images=config.max_images, **common
    )
    if config.box_aug_share > 0:
        train_ds.augment = BoxAugment(
            config.box_aug_share, tuple(config.box_aug_count), config.box_aug_size, config.seed, num_refs=len(train_ds.ref_ids)
        )
    val_ds = None
    if config.val_split:
        mode = "train" if config.val_expressions == "one" else "eval"
        val_ds = ReferDataset(
            config.data_root, config.dataset, split_by, config.val_split, mode=mode, max_images=config.val_max_images, **common
        )
        if mode == "train":
            val_ds.set_epoch(0)  # the same expression per object at every validation
    return train_ds, val_ds


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _split_batch(config: TrainConfig, env: DistEnv) -> tuple[int, int]:
    """(micro-batch size per process, accumulation steps) of the total batch."""
    micro = config.micro_batch_size or config.batch_size // env.world_size
    if micro < 1 or config.batch_size % (micro * env.world_size):
        raise LAVTUserError(
            f"batch_size {config.batch_size} (the total per optimiser step) cannot be split into "
            f"{env.world_size} process(es) x micro_batch_size {micro}: choose a batch_size divisible by "
            f"{micro * env.world_size} or another micro_batch_size"
        )
    return micro, config.batch_size // (micro * env.world_size)


def _recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    ignore = {"resume", "output_dir", "progress", "log_every", "num_workers", "tensorboard", "plot", "device", "init_from"}
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


def _restore(resumed: dict[str, Any], path: Path, step: TrainStep, config: TrainConfig, env: DistEnv) -> tuple[int, int, dict, list]:
    """Optimiser, schedule, scaler and RNG state from a checkpoint; returns (first epoch to
    run, global step, best, history). Reads checkpoints of every version written so far
    (their schedule state may be a LambdaLR's)."""
    step.optimizer.load_state_dict(resumed["optimizer"])
    step.scheduler.load_state_dict(dict(resumed["lr_scheduler"]))
    if step.scaler is not None and resumed.get("scaler"):
        step.scaler.load_state_dict(resumed["scaler"])
    if resumed["sampler"].get("seed") != config.seed:
        raise LAVTUserError(f"{path} was trained with seed {resumed['sampler'].get('seed')}, not {config.seed}: resume with the same seed")
    diffs = _recipe_differences(resumed.get("config", {}), config.to_dict())
    if diffs and env.is_main:
        warnings.warn(
            f"resuming {path} with a different configuration for: {', '.join(diffs)}; the saved optimiser/schedule state wins", stacklevel=3
        )
    rngs = resumed["rng"]
    if len(rngs) != env.world_size and env.is_main:
        warnings.warn(
            f"{path} was written by {len(rngs)} process(es), resuming with {env.world_size}: "
            "random streams (drop path) will differ from an uninterrupted run",
            stacklevel=3,
        )
    ckpt_io.restore_rng_state(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
    best = dict(resumed["best"])
    if "score" not in best:  # checkpoints of earlier versions: {"oIoU", "epoch"}, selected by oIoU
        best = {"metric": "oIoU", "score": best.get("oIoU"), "epoch": best.get("epoch")}
    return int(resumed["epoch"]) + 1, int(resumed["global_step"]), best, list(resumed["history"])


# ---------------------------------------------------------------------------------------
# the whole run


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
    micro, accum = _split_batch(config, env)
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
    loader = DataLoader(
        train_ds, batch_size=micro, sampler=sampler, num_workers=config.num_workers, collate_fn=collate, pin_memory=pin, drop_last=True
    )
    val_loader = None
    if val_ds is not None:
        val_loader = DataLoader(
            val_ds, batch_size=micro, sampler=ShardSampler(len(val_ds), env.rank, env.world_size),
            num_workers=config.num_workers, collate_fn=collate, pin_memory=pin,
        )

    optimizer = build_optimizer(net, config)
    step = TrainStep(
        model, SegmentationLoss(config.loss, config.ce_weight, config.dice_weight, config.ce_loss_weight).to(device), optimizer,
        build_scheduler(optimizer, total_steps, config), env=env, precision=config.precision,
        scaler=torch.amp.GradScaler("cuda") if config.precision == "fp16" else None,
        clip_grad_norm=config.clip_grad_norm, loss_normalization=config.loss_normalization,
        no_target=NoTargetTerm(config.no_target_loss_weight) if net.config.no_target == "head" else None,
    )

    state = RunState(total_steps=total_steps, epochs=config.epochs)
    start_epoch, best, history = 0, {"metric": None, "score": None, "epoch": None}, []
    if resumed is not None:
        start_epoch, state.global_step, best, history = _restore(resumed, resume_path, step, config, env)
    else:
        _seed_everything(config.seed + env.rank)  # per-process streams for drop path and dropout

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt_io.remove_stale_temporaries(out)  # what a run killed while writing left behind
        save_config(config, out / CONFIG_NAME)
    barrier(env)
    log = RunLog(out, env.is_main, config.tensorboard)
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
    saved = start_epoch if resumed is not None else None  # the epochs checkpoint.pt holds
    restore_sigterm = sigterm_stops_training()
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
                step, loader, state=state, accum_steps=accum, log=log if env.is_main else None,
                log_every=config.log_every, callback=callback, progress=config.progress, checkpoint_hint=hint,
            )
            if state.stop:
                break
            val = validate(model, val_loader, env, config.precision, config.progress) if val_loader is not None else None
            # model_best by ReLA's gIoU where validation scores no-target decisions, else by oIoU
            metric = "gIoU" if val is not None and "gIoU" in val else "oIoU"
            score = val[metric] if val is not None else None
            improved = val is None or best["score"] is None or score > best["score"]
            if improved:
                best = {"metric": metric, "score": score, "epoch": epoch + 1}
            record = {
                "event": "epoch", "epoch": epoch + 1, "step": state.global_step, "train_loss": stats["train_loss"],
                "val": val, "best": dict(best), "seconds": time.time() - t_epoch,
            }
            history.append({k: v for k, v in record.items() if k != "event"})
            rng = all_gather_objects(ckpt_io.capture_rng_state(), env)
            if env.is_main:
                try:
                    ckpt_io.save_training_checkpoint(
                        ckpt_io.training_state(
                            model=net, optimizer=optimizer, scheduler=step.scheduler, scaler=step.scaler, epoch=epoch,
                            global_step=state.global_step, best=best, history=history, config=config.to_dict(),
                            sampler={"seed": config.seed, "epoch": epoch, "batch_size": config.batch_size}, rng=rng,
                        ),
                        checkpoint_path,
                    )
                    saved = epoch + 1
                    ckpt_io.save_model_folder(net, last_dir, tokenizer)
                    if improved:
                        ckpt_io.save_model_folder(net, best_dir, tokenizer)
                    log(record)
                    if config.plot:
                        plot_curves(out / LOG_NAME, out / PLOT_NAME)
                except OSError as exc:
                    raise LAVTUserError(write_failure(exc, epoch + 1, out, checkpoint_path, saved)) from exc
            barrier(env)
            completed = epoch + 1
            if callback is not None:
                ev = TrainEvent("epoch", epoch, config.epochs, state.global_step, total_steps, stats["train_loss"],
                                optimizer.param_groups[0]["lr"], val, time.time() - t0)
                stop = callback(ev) is False if env.is_main else False
                if broadcast_object(stop, env):
                    state.stop = True
                    break
    except KeyboardInterrupt as exc:
        how = "by SIGTERM " if isinstance(exc, Terminated) else ""
        raise TrainingInterrupted(
            f"training stopped {how}at epoch {state.epoch + 1}, optimiser step {state.global_step}; {last_good(checkpoint_path, saved)}",
            exit_code=143 if isinstance(exc, Terminated) else 130,
        ) from exc
    finally:
        restore_sigterm()
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

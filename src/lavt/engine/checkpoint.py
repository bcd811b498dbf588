"""Training checkpoints: atomic writes, exact resume, and model folders others can load.

A run folder holds

- `checkpoint.pt`: the full training state after the last finished epoch (model,
  optimiser, LR scheduler, gradient scaler, epoch, step, best score, history, sampler
  seed/epoch, the RNG states of every process, the resolved config). Written to a temporary
  file and renamed, so a crash never leaves a half-written checkpoint;
- `model_best/` and `model_last/`: `save_pretrained` folders (config.json,
  model.safetensors, tokenizer) for `lavt evaluate` / `lavt predict` / `LAVT.from_pretrained`.

Checkpoint files only hold tensors and plain Python values, so they load with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The format (names, marker, reading) is shared with lavt.loading, which must not import the engine.
from lavt.checkpoint_format import (  # noqa: F401 - re-exported for the engine's users
    BEST_DIR,
    CHECKPOINT_NAME,
    FORMAT,
    LAST_DIR,
    VERSION,
    is_training_checkpoint,
    load_checkpoint,
)
from lavt.errors import LAVTUserError


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_model_folder(model: torch.nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """`model.save_pretrained` into a fresh folder, swapped in place of `folder` by renames."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    config = getattr(model, "config", None)
    checkpointing = getattr(config, "use_checkpoint", False)
    if checkpointing:  # a training-time memory setting, not part of the saved model
        config.use_checkpoint = False
    try:
        model.save_pretrained(tmp, tokenizer=tokenizer)
    finally:
        if checkpointing:
            config.use_checkpoint = True
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


# ---------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_to_plain, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's current device
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_to_plain(x) for x in v]
    return v


def _to_tuple(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_to_tuple(x) for x in v)
    return v


# ---------------------------------------------------------------------------------------
# training checkpoints


def training_state(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    global_step: int,
    best: dict[str, Any],
    history: list[dict[str, Any]],
    config: dict[str, Any],
    sampler: dict[str, Any],
    rng: list[dict[str, Any]],
) -> dict[str, Any]:
    """The dict written as `checkpoint.pt` (`epoch` is the last finished epoch, 0-based)."""
    sched = scheduler.state_dict()  # plain values: the schedule itself is rebuilt from the config on resume
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": model.config.to_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": sched,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "best": dict(best),
        "history": list(history),
        "config": config,
        "sampler": dict(sampler),
        "rng": rng,
        "world_size": len(rng),
    }


def find_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint file to resume from: a file, a run folder, or `auto` (the output
    folder's checkpoint if one exists, else a fresh start)."""
    if not resume:
        return None
    if resume == "auto":
        p = Path(output_dir) / CHECKPOINT_NAME
        return p if p.is_file() else None
    p = Path(resume)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise LAVTUserError(f"resume checkpoint {p} does not exist; give a checkpoint.pt, its run folder, or 'auto'")
    return p

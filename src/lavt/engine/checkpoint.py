"""Training checkpoints: atomic writes, exact resume, and model folders others can load.

A run folder holds

- `checkpoint.pt`: the full training state after the last finished epoch (model,
  optimiser, LR scheduler, gradient scaler, epoch, step, best score, history, sampler
  seed/epoch, the RNG states of every process, the resolved config) and its content hash.
  Written to a temporary file, fsynced and renamed, so at every moment `checkpoint.pt` is a
  complete checkpoint, whatever kills the process when;
- `checkpoint.prev.pt`: the checkpoint before it (hard-linked before the rename, so it too
  is complete at every moment), the fallback when `checkpoint.pt` is damaged later;
- `model_best/` and `model_last/`: `save_pretrained` folders (config.json,
  model.safetensors, tokenizer) for `lavt evaluate` / `lavt predict` / `LAVT.from_pretrained`.

Checkpoint files only hold tensors and plain Python values, so they load with
`torch.load(weights_only=True)`. Checkpoints are written at epoch ends only: the sampler's
position is the start of the next epoch (its order is a function of seed and epoch), and
data-loading workers draw their seeds from the restored torch generator, so they need no
state of their own.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The format (names, marker, reading) is shared with lavt.loading, which must not import the engine.
from lavt.checkpoint_format import (  # noqa: F401 - re-exported for the engine's users
    BEST_DIR,
    CHECKPOINT_NAME,
    FORMAT,
    HASH_KEY,
    LAST_DIR,
    VERSION,
    content_hash,
    is_training_checkpoint,
    load_checkpoint,
    previous_path,
    verify_checkpoint,
    with_hash,
)
from lavt.errors import LAVTUserError

# Test hook for the crash-safety tests, which SIGKILL a run in the middle of a checkpoint
# write: with LAVT_TEST_PAUSE_CHECKPOINT=N the N-th `save_training_checkpoint` of the process
# stops right before its final rename, creates `.<name>.paused` beside the file and sleeps.
PAUSE_ENV = "LAVT_TEST_PAUSE_CHECKPOINT"
_writes = 0

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def atomic_save(obj: Any, path: str | Path, keep_previous: bool = False, _pause: bool = False) -> Path:
    """`torch.save` to a temporary file in the same folder, fsync, then rename over `path`.

    With `keep_previous`, the file being replaced stays as `previous_path(path)` (hard link,
    or copy where links are not supported, renamed into place). Any failure (a full disk,
    an interrupt) removes the temporary file and leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    prev_tmp = path.with_name(f".{path.name}.prev.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            if prev_tmp.exists():
                prev_tmp.unlink()
            try:
                os.link(path, prev_tmp)
            except OSError:  # a filesystem without hard links
                shutil.copy2(path, prev_tmp)
            os.replace(prev_tmp, previous_path(path))
        if _pause:
            path.with_name(f".{path.name}.paused").touch()
            time.sleep(3600)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        for p in (tmp, prev_tmp):
            if os.path.exists(p):
                os.unlink(p)
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable (a power cut after the write keeps them)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_training_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a `training_state` with its content hash, keeping the one it replaces."""
    global _writes
    _writes += 1
    pause = os.environ.get(PAUSE_ENV, "") == str(_writes)
    return atomic_save(with_hash(state), path, keep_previous=True, _pause=pause)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temporary files a killed run left in its run folder, and put back a model
    folder that a kill left renamed aside (`recover_model_folder`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.glob(f".{CHECKPOINT_NAME}.*"):
        if p.is_file():
            p.unlink()
    for name in (BEST_DIR, LAST_DIR):
        recover_model_folder(folder / name)


def _swap_names(folder: Path) -> tuple[Path, Path]:
    return folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")


def recover_model_folder(folder: str | Path) -> None:
    """After a kill during `save_model_folder`'s two renames: the previous folder, renamed to
    `.NAME.old`, goes back to NAME when NAME is missing; the half-written `.NAME.tmp` is
    deleted. A folder already in place is never touched."""
    folder = Path(folder)
    tmp, old = _swap_names(folder)
    if not folder.exists() and old.is_dir():
        os.replace(old, folder)
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)


def is_no_space(exc: BaseException) -> bool:
    """True for an OSError meaning the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def save_model_folder(model: torch.nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """`model.save_pretrained` into a fresh folder, swapped in place of `folder` by two renames
    (folder -> .old, .tmp -> folder); a kill between them is undone by `recover_model_folder`."""
    folder = Path(folder)
    recover_model_folder(folder)
    tmp, old = _swap_names(folder)
    config = getattr(model, "config", None)
    checkpointing = getattr(config, "use_checkpoint", False)
    if checkpointing:  # a training-time memory setting, not part of the saved model
        config.use_checkpoint = False
    try:
        model.save_pretrained(tmp, tokenizer=tokenizer)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (a full disk) keeps no half folder
        raise
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

"""The on-disk format of training runs, shared by their writer and their readers.

`lavt.engine.checkpoint` writes run folders; `lavt.loading` (and so inference and the demo)
reads them without depending on the training engine. A run folder holds `checkpoint.pt`
(the full training state, a dict marked `"format": FORMAT`) and the model folders
`model_best/` and `model_last/`. Checkpoints hold only tensors and plain values, so they
load with `torch.load(weights_only=True)`.

Each checkpoint records the sha256 of its content (`content_hash`: every tensor's dtype,
shape and bytes and every plain value, in order) under `"sha256"`; reading recomputes it,
so a file damaged after it was written is refused instead of resuming from wrong numbers.
The writer keeps the checkpoint it replaces as `checkpoint.prev.pt`. Checkpoints written
before hashes were recorded carry none and are read as they are.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from lavt.errors import LAVTUserError, describe_load_failure

FORMAT = "lavt.train_checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
HASH_KEY = "sha256"
BEST_DIR = "model_best"
LAST_DIR = "model_last"


def is_training_checkpoint(obj: Any) -> bool:
    """True for a dict written as a training checkpoint (it carries the format marker)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def previous_path(path: str | Path) -> Path:
    """Where the writer keeps the checkpoint that `path` replaced: `checkpoint.prev.pt`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def content_hash(obj: Any) -> str:
    """sha256 over a checkpoint's content: tensors by dtype, shape and bytes, containers in
    order, other values by type and repr (exact for floats). Independent of the file
    layout, so the same state always hashes the same."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, v: Any) -> None:
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(v, dict):
        h.update(f"D{len(v)}".encode())
        for key, value in v.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(v, (list, tuple)):
        h.update(f"L{len(v)}".encode())
        for value in v:
            _feed(h, value)
    else:
        h.update(f"{type(v).__name__}:{v!r};".encode())


def with_hash(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with its content hash recorded under `"sha256"` (the dict it writes)."""
    body = {k: v for k, v in state.items() if k != HASH_KEY}
    return {**body, HASH_KEY: content_hash(body)}


def _previous_hint(path: Path) -> str:
    prev = previous_path(path)
    if prev.is_file() and prev.resolve() != path.resolve():
        return f"the previous one is at {prev} (resume from it with --resume {prev})"
    return "no previous checkpoint is kept beside it"


def verify_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Raise when the content no longer matches the hash recorded at writing (no hash: accepted)."""
    recorded = obj.get(HASH_KEY)
    if recorded is None:
        return
    if content_hash({k: v for k, v in obj.items() if k != HASH_KEY}) != recorded:
        path = Path(path)
        raise LAVTUserError(
            f"corrupt checkpoint {path}: its content does not match the sha256 recorded when it was written; {_previous_hint(path)}"
        )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint file (weights_only, content hash checked, clear errors for
    damaged, foreign or newer files)."""
    path = Path(path)
    if not path.is_file():
        raise LAVTUserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LAVTUserError(
            f"{path} could not be read as a training checkpoint (damaged, truncated or not a checkpoint): "
            f"{describe_load_failure(exc)}; {_previous_hint(path)}"
        ) from exc
    if not is_training_checkpoint(obj):
        raise LAVTUserError(f"{path} is not a lavt training checkpoint (no format {FORMAT!r}); to start from its weights use init_from")
    if obj.get("version", 0) > VERSION:
        raise LAVTUserError(f"{path} was written by a newer lavt (checkpoint version {obj['version']}); upgrade lavt")
    verify_checkpoint(obj, path)
    return obj

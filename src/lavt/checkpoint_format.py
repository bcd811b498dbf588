"""The on-disk format of training runs, shared by their writer and their readers.

`lavt.engine.checkpoint` writes run folders; `lavt.loading` (and so inference and the demo)
reads them without depending on the training engine. A run folder holds `checkpoint.pt`
(the full training state, a dict marked `"format": FORMAT`) and the model folders
`model_best/` and `model_last/`. Checkpoints hold only tensors and plain values, so they
load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lavt.errors import LAVTUserError

FORMAT = "lavt.train_checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
BEST_DIR = "model_best"
LAST_DIR = "model_last"


def is_training_checkpoint(obj: Any) -> bool:
    """True for a dict written as a training checkpoint (it carries the format marker)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint file (weights_only, clear errors for foreign or newer files)."""
    path = Path(path)
    if not path.is_file():
        raise LAVTUserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LAVTUserError(f"{path} could not be read as a training checkpoint: {str(exc).splitlines()[0]}") from exc
    if not is_training_checkpoint(obj):
        raise LAVTUserError(f"{path} is not a lavt training checkpoint (no format {FORMAT!r}); to start from its weights use init_from")
    if obj.get("version", 0) > VERSION:
        raise LAVTUserError(f"{path} was written by a newer lavt (checkpoint version {obj['version']}); upgrade lavt")
    return obj

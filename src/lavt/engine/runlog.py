"""A training run's record: `log.jsonl` (one JSON object per event), optional TensorBoard
scalars, and the curves drawn from the log (`curves.png`). Written by the main process only."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from lavt.visualize import plot_training

LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"


class RunLog:
    """Appends records to `out/log.jsonl` and, with `tensorboard`, their numbers to
    `out/tensorboard`; does nothing when not `enabled` (processes other than the main one)."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = out / LOG_NAME
        self.tb = None
        if enabled:
            _end_partial_line(self.path)
        if enabled and tensorboard:
            try:
                # an optional dependency, imported only when asked for
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


def _end_partial_line(path: Path) -> None:
    """A run killed while appending leaves a partial last line: end it, so the records a
    resumed run appends stay one per line (readers skip the broken one)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, 2)
        if f.read(1) != b"\n":
            f.write(b"\n")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plot_curves(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Training loss and learning rate per logged step and validation scores per epoch,
    from a run's log.jsonl (None when there is no log yet)."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return None
    steps: dict[int, tuple[float, float]] = {}
    epochs: dict[int, dict[str, float]] = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("event") == "train":
            lr = r.get("lr")  # {group name: lr}: the first group's is drawn
            first = next(iter(lr.values()), None) if isinstance(lr, dict) else lr
            steps[int(r["step"])] = (
                float(r["loss"]),
                float("nan") if first is None else float(first),
            )  # a resumed run overwrites repeated steps
        elif r.get("event") == "epoch" and r.get("val"):
            epochs[int(r["epoch"])] = r["val"]
    xs = sorted(steps)
    return plot_training(
        out_path, xs, [steps[s][0] for s in xs], lrs=[steps[s][1] for s in xs], validation=epochs,
        loss_label="training loss (mean since the last record)",
    )

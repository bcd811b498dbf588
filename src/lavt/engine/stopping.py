"""How a training run stops early, and the one line it leaves: Ctrl-C, SIGTERM (a scheduler
preempting the job, `kill`, torchrun passing it on), or a checkpoint that cannot be written.
Checkpoints are written to a temporary name and renamed, so a stop at any point leaves the
previous one whole; the messages name it and how to go on."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lavt.engine import checkpoint as ckpt_io


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during `train`: the message says where the run stopped, which
    checkpoint is the last good one and how to go on; `exit_code` is the shell's for the signal."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM while `train` runs."""


def sigterm_stops_training() -> Callable[[], None]:
    """From here on SIGTERM stops training as Ctrl-C does (raises `Terminated`); returns what
    puts the previous handler back. Only from the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)


def last_good(checkpoint: Path, saved: int | None) -> str:
    """Which checkpoint a stopped run can go on from, and how."""
    if saved is None:
        return "no checkpoint had been written yet: run the same command again to start over"
    return f"the last good checkpoint is {checkpoint} (after epoch {saved}): run the same command with --resume auto to continue"


def write_failure(exc: OSError, epoch: int, out: Path, checkpoint: Path, saved: int | None) -> str:
    """The one-line message for a checkpoint that could not be written (a full disk most often)."""
    full = ckpt_io.is_no_space(exc)
    reason = "no space left on the device" if full else (exc.strerror or str(exc) or type(exc).__name__)
    kept = (
        f"the last good checkpoint {checkpoint} (after epoch {saved}) is intact and loadable"
        if saved is not None
        else "no checkpoint had been written yet"
    )
    fix = "free some space" if full else "make the folder writable"
    return f"could not write the checkpoint of epoch {epoch} in {out}: {reason}; {kept}; {fix} and run the same command with --resume auto"

"""The one switch for every fast path: `set_fast_paths`, `fast_paths`, `fast_paths_enabled`.

On (the default), the models call the kernels of `lavt.ops` at their marked points; off, they
run the plain PyTorch reference (the official order of operations, no caches, no custom
autograd). The state is one process-wide bool, so checking it costs a global read; it is
not thread-local: a `fast_paths(...)` block changes it for every thread.

`LAVT_FAST_PATHS` sets the starting state when `lavt.ops` is imported: `1` or unset (or
empty) = on, `0` = off. Any other value is reported as a `LAVTUserError` at the first use of
the switch rather than at import, so that `lavt --help` and the CLI's one-line error report
still work; setting the switch explicitly replaces the bad value.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from lavt.errors import LAVTUserError

ENV_VAR = "LAVT_FAST_PATHS"
_ENV_VALUES = {"": True, "1": True, "0": False}


def _from_environment() -> bool | None:
    """The state the environment asks for; None when the value is not one of the allowed."""
    return _ENV_VALUES.get(os.environ.get(ENV_VAR, "").strip())


# True / False, or None while the environment's value is invalid (reported at first use).
_enabled: bool | None = _from_environment()


def _invalid_environment() -> LAVTUserError:
    value = os.environ.get(ENV_VAR)
    return LAVTUserError(
        f"environment variable {ENV_VAR}={value!r} is not valid: use {ENV_VAR}=1 (fast paths on, "
        f"the default; unset means the same) or {ENV_VAR}=0 (the plain PyTorch reference path)"
    )


def fast_paths_enabled() -> bool:
    """Whether the models take the fast paths (True unless switched off)."""
    if _enabled is None:
        raise _invalid_environment()
    return _enabled


def set_fast_paths(enabled: bool) -> None:
    """Turn every fast path on (True) or off (False, the plain PyTorch reference)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise LAVTUserError(f"set_fast_paths takes True or False, got {enabled!r}")
    _enabled = enabled


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """`with fast_paths(False): ...` runs the block on the plain path and restores the
    previous state on exit, also when the block raises. Also usable as a decorator."""
    global _enabled
    previous = _enabled
    set_fast_paths(enabled)
    try:
        yield
    finally:
        _enabled = previous

"""The one exception type for mistakes a user can make (bad paths, bad values, bad files).

The CLI turns it into a single line on stderr and exit code 2, never a traceback.
"""
import importlib.util
import re
from collections.abc import Sequence


class LAVTUserError(ValueError):
    """A problem with the user's input: the message says what, where, and what to do."""

    def __init__(self, message: object = "", *args: object) -> None:
        # A DataLoader worker re-raises an error in the main process as `type(text)`, where the
        # text is the worker's whole traceback; keep only the message that was raised there.
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if isinstance(message, str) and message.startswith("Caught ") and "\nOriginal Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message, *args)


def describe_load_failure(exc: BaseException) -> str:
    """Why `torch.load(weights_only=True)` (also inside transformers) refused a file, in one
    clause: the import it refused (a pickle that would run code) or the reader's own reason,
    without torch's advice to retry with weights_only=False."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return f"it asks to import {refused.group(1)}, which could run code, so it was refused and nothing in it ran"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        reasons = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue", "(", "Weights"))]
        return f"not a valid weights file ({reasons[0] if reasons else 'refused by the weights-only reader'})"
    return lines[0] if lines else type(exc).__name__


def require_extra(command: str, extra: str, modules: Sequence[str]) -> None:
    """One line naming the optional extra that `command` needs when any of `modules` is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise LAVTUserError(f"{command} needs the '{extra}' extra ({', '.join(missing)} not installed): "
                            f'pip install "lavt[{extra}]"  (or, in a checkout: .venv/bin/pip install -e ".[{extra}]")')

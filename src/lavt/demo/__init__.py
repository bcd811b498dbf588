"""The embedded default: generated scenes, a small LAVT trained on them, and its evaluation.

Importing the package itself is light (the shipped model's location only), so the web server
finds the default model without loading the demo's trainer.
"""
from __future__ import annotations

from pathlib import Path

from lavt.errors import LAVTUserError

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"


def shipped_model_dir() -> Path:
    """The folder of the demo model shipped inside the package."""
    if not (SHIPPED_MODEL / "config.json").is_file():
        raise LAVTUserError(
            f"the shipped demo model is missing from {SHIPPED_MODEL}; reinstall lavt or train one "
            "with `lavt demo --train --out DIR`"
        )
    return SHIPPED_MODEL

"""LAVT: Language-Aware Vision Transformer for referring image segmentation."""
from __future__ import annotations

__version__ = "0.1.0"

from lavt.errors import LAVTUserError

__all__ = ["LAVTUserError", "__version__"]

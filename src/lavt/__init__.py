"""LAVT: Language-Aware Vision Transformer for referring image segmentation.

Public API (imported lazily so `lavt --help` does not pay for torch):
`LAVT`, `LAVTConfig`, `build_config`, `load_official`, `Predictor`, `ReferringMetrics`.
"""
from __future__ import annotations

import importlib
from typing import Any

from lavt.errors import LAVTUserError

__version__ = "0.1.0"

_LAZY = {
    "LAVT": "lavt.models",
    "LAVTConfig": "lavt.models",
    "build_config": "lavt.models",
    "load_official": "lavt.models",
    "load_swin_pretrained": "lavt.models",
    "load_text_encoder": "lavt.models",
    "Predictor": "lavt.inference",
    "ReferringMetrics": "lavt.metrics",
}

__all__ = ["LAVTUserError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    # Lazy on purpose: `import lavt` (and so `lavt --help`) must not import torch or transformers.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lavt' has no attribute {name!r}")

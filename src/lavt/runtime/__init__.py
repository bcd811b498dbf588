"""Run an exported LAVT (`lavt export`) without torch: onnxruntime, tokenizers, numpy, Pillow.

Nothing in this package imports torch, nor any lavt module that does (a test runs it where
`import torch` fails). Names are loaded lazily, so `lavt.runtime.prediction` can be imported by
the torch side without starting onnxruntime.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "OnnxPredictor": "lavt.runtime.predictor",
    "OnnxModel": "lavt.runtime.session",
    "ExportedTokenizer": "lavt.runtime.tokenizer",
    "Prediction": "lavt.runtime.prediction",
    "read_export_config": "lavt.runtime.folder",
    "is_export_folder": "lavt.runtime.folder",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lavt.runtime' has no attribute {name!r}")

"""Referring datasets: the refer-format reader, torch datasets, tokenisation, synthref generator.

Names are imported on first use, so `lavt.data.synthref` and `lavt.data.info` work without
loading torch or transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReferDataset": "lavt.data.dataset",
    "ReferImageGroups": "lavt.data.dataset",
    "collate_eval": "lavt.data.dataset",
    "Refer": "lavt.data.refer",
    "decode_segmentation": "lavt.data.refer",
    "ExpressionTokenizer": "lavt.data.tokenization",
    "default_text_encoder_dir": "lavt.models.text_encoder",
    "dataset_info": "lavt.data.info",
    "generate_synthref": "lavt.data.synthref",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lavt.data' has no attribute {name!r}")
    attr = "generate" if name == "generate_synthref" else name
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

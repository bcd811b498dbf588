"""Tiny exported models shared by the export, runtime and hub tests (each is exported once per session)."""
from __future__ import annotations

from pathlib import Path

import torch

from helpers import randomise, tiny_config
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.export import export_model
from lavt.models import LAVT

TOKENS = 12
_EXPORTS: dict[tuple, Path] = {}
_MODELS: dict[int, Path] = {}


def tiny_model_dir(root: Path, seed: int = 0) -> Path:
    """A saved tiny LAVT with a BERT text encoder over the packaged uncased vocabulary (48 px)."""
    if seed not in _MODELS:
        torch.manual_seed(seed)
        model = randomise(LAVT(tiny_config(image_size=48, max_tokens=TOKENS)), seed=seed).eval()
        tok = ExpressionTokenizer(default_text_encoder_dir(), max_tokens=TOKENS)
        _MODELS[seed] = model.save_pretrained(root / f"tiny_model_{seed}", tokenizer=tok)
    return _MODELS[seed]


def tiny_export(root: Path, **options) -> Path:
    """`export_model` of the tiny model with `options`, once per distinct options."""
    key = tuple(sorted(options.items()))
    if key not in _EXPORTS:
        name = "export_" + "_".join(f"{k}-{v}" for k, v in key) if key else "export"
        _EXPORTS[key] = export_model(tiny_model_dir(root), root / name, **options).folder
    return _EXPORTS[key]

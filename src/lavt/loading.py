"""Load a LAVT model from whatever a user points at: one function, one dispatch.

- a model folder written by `save_pretrained` (config.json + model.safetensors);
- a training run folder (uses `model_best/`, else `model_last/`, else `checkpoint.pt`);
- a training checkpoint file written by `lavt train` (`checkpoint.pt`);
- an official LAVT checkpoint (`lavt` or `lavt_one`, read with `lavt.load_official`);
- a folder written by `lavt export` (run through onnxruntime: `lavt.onnx_module`);
- a Hugging Face Hub id (`org/name`, `org/name@revision`) of any of those folders, resolved
  through huggingface_hub's cache (`lavt.hub`); a local path of the same spelling wins.

The tokenizer saved with the model comes back too when there is one; evaluation and
prediction fall back to the packaged uncased BERT vocabulary (the official one) otherwise.

This module sits below the engine: training, evaluation, inference and the demo all load
through it, and it reads training checkpoints through `lavt.checkpoint_format`, never
through the training engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lavt.checkpoint_format import BEST_DIR, CHECKPOINT_NAME, LAST_DIR, is_training_checkpoint, verify_checkpoint
from lavt.data.tokenization import ExpressionTokenizer
from lavt.errors import LAVTUserError
from lavt.hub import resolve_source
from lavt.models import LAVT, LAVTConfig, load_official, load_state_strict
from lavt.models.convert import read_checkpoint
from lavt.models.lavt import CONFIG_NAME
from lavt.models.text_encoder import default_text_encoder_dir
from lavt.runtime.folder import is_export_folder

if TYPE_CHECKING:
    from lavt.onnx_module import OnnxLAVT


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer (or None), what kind of file it came from
    ('folder', 'training', 'official' or 'onnx') and what else is known about it (epoch, best score...)."""

    model: LAVT | OnnxLAVT
    tokenizer: ExpressionTokenizer | None
    kind: str
    source: Path
    info: dict[str, Any] = field(default_factory=dict)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    pwam_heads: tuple[int, ...] | None = None,
    max_tokens: int | None = None,
    graphs: str | None = None,
) -> LoadedModel:
    """Load any saved LAVT (see module docstring) onto `device`, in eval mode.

    `pwam_heads` only matters for official checkpoints whose saved args lack `--mha`.
    `graphs` picks the float32 or int8 graphs of an exported folder (default: the folder's
    choice); it is an error for anything else.
    """
    p = resolve_source(path)
    if not p.exists():
        raise LAVTUserError(f"checkpoint {p} does not exist")
    if p.is_dir() and is_export_folder(p):
        try:
            from lavt.onnx_module import OnnxLAVT  # onnxruntime: an optional dependency (the `onnx` extra)
        except ImportError as exc:
            raise LAVTUserError(f"{p} is an exported (ONNX) model; running it needs the 'onnx' extra: pip install \"lavt[onnx]\"") from exc
        onnx_model = OnnxLAVT(p, device=device, precision=graphs)
        return LoadedModel(onnx_model.eval(), _tokenizer_from(p, max_tokens, onnx_model), "onnx", p)
    if graphs is not None:
        raise LAVTUserError(f"--graphs {graphs} picks the graphs of an exported folder (lavt export), but {p} is a torch model; "
                            "leave --graphs out (--precision sets its arithmetic)")
    if p.is_file() and p.suffix == ".safetensors" and (p.parent / CONFIG_NAME).is_file():
        p = p.parent
    if p.is_dir():
        if (p / CONFIG_NAME).is_file():
            model = LAVT.from_pretrained(p)
            return LoadedModel(model.to(device).eval(), _tokenizer_from(p, max_tokens, model), "folder", p)
        for sub in (BEST_DIR, LAST_DIR):
            if (p / sub / CONFIG_NAME).is_file():
                return load_model(p / sub, device, pwam_heads=pwam_heads, max_tokens=max_tokens)
        if (p / CHECKPOINT_NAME).is_file():
            return load_model(p / CHECKPOINT_NAME, device, pwam_heads=pwam_heads, max_tokens=max_tokens)
        raise LAVTUserError(
            f"{p} holds no model: expected config.json + model.safetensors, a training run folder "
            f"({BEST_DIR}/, {LAST_DIR}/ or {CHECKPOINT_NAME}) or give a checkpoint file"
        )

    ckpt = read_checkpoint(p)
    if is_training_checkpoint(ckpt):
        verify_checkpoint(ckpt, p)
        model = model_from_training_checkpoint(ckpt, source=str(p))
        tok = None
        for sub in (LAST_DIR, BEST_DIR):
            if (p.parent / sub / "vocab.txt").is_file():
                tok = _tokenizer_from(p.parent / sub, max_tokens, model)
                break
        if tok is None:
            cfg = ckpt.get("config") or {}
            for key in ("tokenizer", "text_encoder"):
                if cfg.get(key) and Path(cfg[key]).is_dir():
                    tok = _tokenizer_from(Path(cfg[key]), max_tokens, model)
                    break
        info = {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"), "best": ckpt.get("best")}
        return LoadedModel(model.to(device).eval(), tok, "training", p, info)

    model = load_official(ckpt, pwam_heads=pwam_heads)
    info = {"epoch": ckpt.get("epoch") if isinstance(ckpt, dict) else None}
    return LoadedModel(model.to(device).eval(), None, "official", p, info)


def model_from_training_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> LAVT:
    """Rebuild the LAVT stored in a training checkpoint dict (strict load)."""
    cfg = dict(ckpt["model_config"])
    cfg["use_checkpoint"] = False  # activation checkpointing is a training-time setting
    model = LAVT(LAVTConfig.from_dict(cfg, source=f"{source} (model_config)"))
    load_state_strict(model, ckpt["model"], source=source)
    return model


def default_tokenizer(model: LAVT | None = None, max_tokens: int | None = None) -> ExpressionTokenizer:
    """The packaged uncased BERT WordPiece vocabulary (identical to bert-base-uncased)."""
    tokens = max_tokens or (model.config.max_tokens if model is not None else None)
    tok = ExpressionTokenizer.from_pretrained(default_text_encoder_dir(), max_tokens=tokens)
    check_vocabulary(model, tok)
    return tok


def check_vocabulary(model: LAVT | None, tokenizer: Any) -> None:
    """A tokenizer whose ids do not fit the text encoder would silently give garbage."""
    if model is None or getattr(model, "text_encoder", None) is None:
        return
    n_model = model.text_encoder.config.vocab_size
    n_tok = getattr(tokenizer, "vocab_size", n_model)
    if n_tok > n_model:
        raise LAVTUserError(
            f"the tokenizer has {n_tok} tokens but the model's text encoder only {n_model}; "
            "pass the tokenizer folder the model was trained with (--tokenizer)"
        )


def _tokenizer_from(folder: Path, max_tokens: int | None, model: LAVT | OnnxLAVT) -> ExpressionTokenizer | None:
    if not (folder / "vocab.txt").is_file():
        return None
    tokens = max_tokens or model.config.max_tokens
    tok = ExpressionTokenizer.from_pretrained(folder, max_tokens=tokens)
    check_vocabulary(model, tok)
    return tok

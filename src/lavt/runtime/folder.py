"""The exported folder's layout and its `config.json`, read without torch.

`lavt export` writes: one or two ONNX graphs (float32, and int8 beside them with
`--quantize int8`), `config.json` (below) and the tokenizer (`tokenizer.json` for the
`tokenizers` library, `vocab.txt` and `tokenizer_config.json` for the torch side).

config.json: `model_type` "lavt_onnx", `format_version`, `parts` ("full": one graph from
pixels and token ids to logits; "split": `text` (ids -> features) and `vision` (pixels and
features -> logits)), `graphs` ({precision: {part: file}}), `precision` (the graph a runtime
runs by default), `inputs` ("ids", or "features" for a model without a text encoder),
`image_size` [H, W], `mean`, `std`, `max_tokens`, `text_dim`, `tokenizer` (file or null),
`opset`, `model_config` (the LAVTConfig) and `parity` (what the export measured).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lavt.errors import LAVTUserError

MODEL_TYPE = "lavt_onnx"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
GRAPH_NAMES = {
    "float32": {"full": "model.onnx", "text": "text_encoder.onnx", "vision": "vision.onnx"},
    "int8": {"full": "model.int8.onnx", "text": "text_encoder.int8.onnx", "vision": "vision.int8.onnx"},
}
PRECISIONS = tuple(GRAPH_NAMES)


def is_export_folder(path: str | Path) -> bool:
    """True when `path` is a folder whose config.json says it was written by `lavt export`."""
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    try:
        raw = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(raw, dict) and raw.get("model_type") == MODEL_TYPE


def refuse_export_folder(path: str | Path, flag: str, why: str = "they hold no trainable weights") -> None:
    """One clear error where torch weights are needed (training, warm starts, the demo's
    scorer) and `path` is an exported folder; `why` says what the graphs lack there."""
    if Path(path).is_dir() and is_export_folder(path):
        raise LAVTUserError(f"{flag} {path} is an exported (ONNX) folder: its graphs are for inference, {why}; "
                            "give the model folder it was exported from")


def read_export_config(folder: str | Path) -> dict[str, Any]:
    """The checked config.json of an exported folder."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise LAVTUserError(f"{folder} is not an exported LAVT folder: it has no {CONFIG_NAME} (write one with `lavt export`)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LAVTUserError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("model_type") != MODEL_TYPE:
        raise LAVTUserError(f"{path} does not describe an exported LAVT (model_type is not {MODEL_TYPE!r}); run `lavt export`")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise LAVTUserError(
            f"{path} has format_version {cfg.get('format_version')!r}; this lavt reads version {FORMAT_VERSION}: export again"
        )
    missing = [k for k in ("parts", "graphs", "precision", "inputs", "image_size", "mean", "std", "max_tokens") if k not in cfg]
    if missing:
        raise LAVTUserError(f"{path} lacks {', '.join(missing)}; export the model again with `lavt export`")
    for precision, graphs in cfg["graphs"].items():
        for part, name in graphs.items():
            if not (folder / name).is_file():
                raise LAVTUserError(f"{folder} lacks {name} ({precision} {part} graph named in {CONFIG_NAME}); export again")
    return cfg

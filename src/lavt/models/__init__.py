"""LAVT model pieces: Swin backbone with PWAM and the language pathway, decoder, text encoder."""
from lavt.models.config import BERT_BASE_UNCASED, LAVTConfig, SWIN_PRESETS, build_config
from lavt.models.lavt import LAVT
from lavt.models.official import load_official, load_swin_pretrained, load_state_strict
from lavt.models.text_encoder import build_text_encoder, load_text_encoder

__all__ = [
    "BERT_BASE_UNCASED",
    "LAVT",
    "LAVTConfig",
    "SWIN_PRESETS",
    "build_config",
    "build_text_encoder",
    "load_official",
    "load_state_strict",
    "load_swin_pretrained",
    "load_text_encoder",
]

"""LAVT model pieces: Swin backbone with PWAM and the language pathway, decoder, text encoder.

`convert` brings official LAVT checkpoints and the Microsoft Swin initialisation onto the
model; `state` is the strict state_dict loading every loader shares.
"""
from lavt.models.config import BERT_BASE_UNCASED, SWIN_PRESETS, LAVTConfig, build_config
from lavt.models.convert import load_official, load_swin_pretrained
from lavt.models.lavt import LAVT
from lavt.models.state import load_state_strict
from lavt.models.text_encoder import build_text_encoder, default_text_encoder_dir, load_text_encoder

__all__ = [
    "BERT_BASE_UNCASED",
    "LAVT",
    "LAVTConfig",
    "SWIN_PRESETS",
    "build_config",
    "build_text_encoder",
    "default_text_encoder_dir",
    "load_official",
    "load_state_strict",
    "load_swin_pretrained",
    "load_text_encoder",
]

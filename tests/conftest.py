from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden vectors not found at {GOLDEN}")
    return GOLDEN


TINY_BERT = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
)


def tiny_config(**overrides):
    """A small but complete LAVT (every stage padded at 40x56 with window 4)."""
    from lavt.models import LAVTConfig

    kw = dict(
        embed_dim=8,
        depths=(1, 2, 1, 2),
        num_heads=(1, 2, 2, 4),
        window_size=4,
        pwam_heads=(1, 2, 1, 2),
        text_dim=32,
        text_encoder=dict(TINY_BERT),
        image_size=48,
        drop_path_rate=0.0,
    )
    kw.update(overrides)
    return LAVTConfig(**kw)

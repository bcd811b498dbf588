"""Small shared pieces for the engine tests: a generated dataset, a tiny BERT folder and a
tiny training configuration (seconds per run on one CPU core)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

TINY_TEXT = dict(
    vocab_size=30522,  # the uncased BERT vocabulary the tokenizer produces ids for
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,  # deterministic: one process and two take comparable steps
    attention_probs_dropout_prob=0.0,
)

TINY_MODEL = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, drop_path_rate=0.0)


def make_synth(root: Path, num_images: int = 24) -> Path:
    """The generated referring dataset (`synthref`, split_by unc) with small images."""
    from lavt.data.synthref import generate

    if not (root / "synthref").is_dir():
        generate(root, seed=0, num_images=num_images, image_size=(40, 56), overwrite=True)
    return root


def make_tiny_text_encoder(folder: Path) -> Path:
    """A randomly initialised two-layer BERT saved as a local Hugging Face folder, with the
    packaged uncased vocabulary beside it."""
    import torch
    from transformers import BertConfig, BertModel

    from lavt.data.tokenization import default_text_encoder_dir

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_TEXT), add_pooling_layer=False).save_pretrained(folder)
    shutil.copy(default_text_encoder_dir() / "vocab.txt", folder / "vocab.txt")
    return folder


def tiny_train_config(data_root: Path, text_dir: Path, out: Path, **overrides: Any):
    """A TrainConfig for a 32x32 tiny LAVT on the synthref data."""
    from lavt.engine.config import TrainConfig

    kw: dict[str, Any] = dict(
        data_root=str(data_root),
        dataset="synthref",
        text_encoder=str(text_dir),
        output_dir=str(out),
        model="tiny",
        model_overrides=dict(TINY_MODEL),
        image_size=32,
        epochs=1,
        batch_size=4,
        lr=1e-3,
        num_workers=0,
        val_max_images=2,
        progress=False,
        plot=False,
        log_every=1,
    )
    kw.update(overrides)
    return TrainConfig(**kw).validate()

"""Converting official weights onto this model: released LAVT checkpoints and Microsoft Swin.

The architecture is read off the tensor shapes (embed_dim, depths, heads, window, text width,
BERT size), so nobody passes `--swin_type`/`--window12` again. Loading never runs pickled code:
`torch.load(weights_only=True)` with only `argparse.Namespace` (the saved `args`) allowed.
"""
from __future__ import annotations

import argparse
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lavt.errors import LAVTUserError, describe_load_failure
from lavt.models.config import LAVTConfig
from lavt.models.lavt import LAVT
from lavt.models.state import load_state_strict

_BLOCK = re.compile(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.")
_BERT_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def read_checkpoint(source: str | Path) -> Any:
    """torch.load without executing pickled code; clear errors for a missing or foreign file."""
    path = Path(source)
    if not path.is_file():
        raise LAVTUserError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals
        raise LAVTUserError(
            f"{path} could not be read as a PyTorch checkpoint with weights_only=True: {describe_load_failure(exc)}; "
            "use a checkpoint that holds only weights (download or save it again if it is damaged)"
        ) from exc


def _mha_from_args(args: Any) -> tuple[int, ...] | None:
    mha = getattr(args, "mha", None) if args is not None else None
    if isinstance(args, dict):
        mha = args.get("mha")
    if isinstance(mha, str) and mha.strip():
        try:
            return tuple(int(a) for a in mha.split("-"))
        except ValueError:
            return None
    return None


def split_official(ckpt: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, Any]:
    """-> (segmentation state_dict, BERT state_dict or None, saved args or None).

    Accepts a released `lavt` checkpoint (`model` + `bert_model`), a released `lavt_one`
    checkpoint (`model` holding `text_encoder.*`), or a bare `lavt` state_dict.
    """
    if not isinstance(ckpt, Mapping):
        raise LAVTUserError(f"an official checkpoint is a dict, got {type(ckpt).__name__}")
    if "model" in ckpt and isinstance(ckpt["model"], Mapping):
        model_sd = dict(ckpt["model"])
        bert = ckpt.get("bert_model")
        bert_sd = dict(bert) if isinstance(bert, Mapping) else None
        args = ckpt.get("args")
    elif any(str(k).startswith("backbone.") for k in ckpt):
        model_sd, bert_sd, args = dict(ckpt), None, None
    else:
        keys = sorted(map(str, ckpt))[:8]
        raise LAVTUserError(
            "not an official LAVT checkpoint: expected a dict with 'model' (and 'bert_model') or a "
            f"state_dict with 'backbone.*' keys; found keys {keys}"
        )
    # DDP-saved weights carry a `module.` prefix.
    model_sd = {k[7:] if k.startswith("module.") else k: v for k, v in model_sd.items()}
    inner = {k[len("text_encoder."):]: v for k, v in model_sd.items() if k.startswith("text_encoder.")}
    if inner:
        if bert_sd is not None:
            raise LAVTUserError("checkpoint holds both 'bert_model' and 'text_encoder.*' weights; which one is meant?")
        bert_sd = inner
        model_sd = {k: v for k, v in model_sd.items() if not k.startswith("text_encoder.")}
    if bert_sd is not None:
        bert_sd = {k[7:] if k.startswith("module.") else k: v for k, v in bert_sd.items()}
    return model_sd, bert_sd, args


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise LAVTUserError(f"official checkpoint lacks '{key}': it is not a LAVT model state_dict")
    return tuple(sd[key].shape)


def infer_bert_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """BertConfig fields from a BertModel state_dict (heads follow the BERT rule: 64 per head)."""
    vocab, hidden = _shape(sd, "embeddings.word_embeddings.weight")
    layers = 1 + max((int(m.group(1)) for k in sd if (m := _BERT_LAYER.match(k))), default=-1)
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=_shape(sd, "encoder.layer.0.intermediate.dense.weight")[0] if layers else 4 * hidden,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=_shape(sd, "embeddings.position_embeddings.weight")[0],
        type_vocab_size=_shape(sd, "embeddings.token_type_embeddings.weight")[0],
        layer_norm_eps=1e-12,
        pad_token_id=0,
        initializer_range=0.02,
    )


def infer_config(
    model_sd: Mapping[str, torch.Tensor],
    bert_sd: Mapping[str, torch.Tensor] | None = None,
    pwam_heads: tuple[int, ...] | None = None,
) -> LAVTConfig:
    """The LAVTConfig that an official state_dict was built with, from its tensor shapes."""
    embed_dim, _, patch, _ = _shape(model_sd, "backbone.patch_embed.proj.weight")
    depth: dict[int, int] = {}
    for k in model_sd:
        m = _BLOCK.match(k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depth[i] = max(depth.get(i, 0), j + 1)
    if sorted(depth) != [0, 1, 2, 3]:
        raise LAVTUserError(f"expected blocks in 4 backbone stages, found stages {sorted(depth)}")
    depths = tuple(depth[i] for i in range(4))
    heads = tuple(
        _shape(model_sd, f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table")[1] for i in range(4)
    )
    rows = _shape(model_sd, "backbone.layers.0.blocks.0.attn.relative_position_bias_table")[0]
    window = (math.isqrt(rows) + 1) // 2
    if (2 * window - 1) ** 2 != rows:
        raise LAVTUserError(f"relative position table with {rows} rows is not (2w-1)^2 for any window w")
    hidden_mlp = _shape(model_sd, "backbone.layers.0.blocks.0.mlp.fc1.weight")[0]
    text_dim = _shape(model_sd, "backbone.layers.0.fusion.image_lang_att.f_key.0.weight")[1]
    bert = infer_bert_config(bert_sd) if bert_sd else None
    ape = "backbone.absolute_pos_embed" in model_sd
    return LAVTConfig(
        ape=ape,
        ape_grid=_shape(model_sd, "backbone.absolute_pos_embed")[2] if ape else None,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=window,
        patch_size=patch,
        mlp_ratio=hidden_mlp / embed_dim,
        qkv_bias="backbone.layers.0.blocks.0.attn.qkv.bias" in model_sd,
        pwam_heads=tuple(pwam_heads) if pwam_heads else (1, 1, 1, 1),
        decoder_hidden=_shape(model_sd, "classifier.conv1_4.weight")[0],
        num_classes=_shape(model_sd, "classifier.conv1_1.weight")[0],
        text_dim=text_dim,
        text_encoder=bert,
    )


def load_official(
    source: str | Path | Mapping[str, Any], pwam_heads: tuple[int, ...] | list[int] | None = None
) -> LAVT:
    """Build a LAVT model from an official checkpoint (path or loaded dict) and load it strictly.

    `pwam_heads` (PWAM heads per stage, the official `--mha`) cannot be read from shapes; it is
    taken from the checkpoint's saved `args.mha` when present, else 1 per stage.
    """
    ckpt = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    model_sd, bert_sd, args = split_official(ckpt)
    heads = tuple(pwam_heads) if pwam_heads else _mha_from_args(args)
    cfg = infer_config(model_sd, bert_sd, heads)
    model = LAVT(cfg)
    state = dict(model_sd)
    if bert_sd is not None:
        state.update({f"text_encoder.{k}": v for k, v in bert_sd.items()})
    load_state_strict(model, state, source=str(source) if isinstance(source, (str, Path)) else "checkpoint")
    return model.eval()


# ---------------------------------------------------------------------- Swin initialisation
def _resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """Bicubic resize of a ((2w'-1)^2, heads) relative position table to window `window`."""
    old = math.isqrt(table.shape[0])
    new = 2 * window - 1
    grid = table.T.reshape(1, table.shape[1], old, old)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], new * new).T.contiguous()


def swin_checkpoint_filter(swin_sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an original Microsoft Swin state_dict onto this model's `backbone.*` keys.

    Drops the classification head, the final norm, `attn_mask` and `relative_position_index`
    buffers (regenerated), and resizes relative position tables when the window differs.
    """
    own = model.state_dict()
    out: dict[str, torch.Tensor] = OrderedDict()
    for k, v in swin_sd.items():
        k = k[7:] if k.startswith("module.") else k
        if k.startswith(("head.", "norm.")) or k.endswith(("attn_mask", "relative_position_index")):
            continue
        key = f"backbone.{k}"
        if key.endswith("relative_position_bias_table") and key in own and own[key].shape != v.shape:
            v = _resize_bias_table(v.float(), model.config.window_size)
        out[key] = v
    return out


def load_swin_pretrained(model: nn.Module, source: str | Path | Mapping[str, Any]) -> dict[str, list[str]]:
    """Initialise the backbone from a Microsoft Swin checkpoint (e.g.
    `swin_base_patch4_window12_384_22k.pth`, a dict with 'model'); non-strict like the official
    mmcv loader. Returns what was not loaded: {'missing': [...], 'unexpected': [...]}."""
    ckpt = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else ckpt
    if not isinstance(sd, Mapping) or not any(str(k).startswith("layers.") for k in sd):
        raise LAVTUserError(f"{source} is not a Swin checkpoint (no 'layers.*' weights)")
    mapped = swin_checkpoint_filter(sd, model)
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise LAVTUserError(f"Swin weights do not fit the backbone (wrong preset?): {'; '.join(bad[:5])}")
    result = model.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("backbone.") and "relative_position_index" not in k]
    return {"missing": missing, "unexpected": list(result.unexpected_keys)}

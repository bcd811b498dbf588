"""Warm start of a demo recipe from a saved demo model (`lavt demo --train --init DIR`).

The recipe may differ from the saved model in the patch size (the stem is resampled), in
the image size (the absolute position grid is resized) and in deeper stages (the added
blocks start as identities, so the grown model computes what the source did).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from lavt.demo.recipe import DemoRecipe
from lavt.errors import LAVTUserError
from lavt.loading import load_model
from lavt.models import LAVT

STEM = "backbone.patch_embed.proj.weight"
APE = "backbone.absolute_pos_embed"
HEAD = "no_target_head."  # a no-target head the source lacks starts fresh
_BLOCK = re.compile(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.")
_RESIDUAL_OUT = re.compile(r"\.(attn\.proj|mlp\.fc2)\.")


def resample_patch_embed(weight: torch.Tensor, patch: int) -> torch.Tensor:
    """The stem kernel for another integer-ratio patch size, chosen so that the new stem on an
    image gives what the old stem gives on that image rescaled by old/new (nearest upsampling
    when the patch shrinks: each new tap is the sum of a k x k block of old taps; average
    pooling when it grows: each old tap is spread evenly over a k x k block)."""
    old = weight.shape[-1]
    if patch == old:
        return weight
    if old % patch == 0:
        k = old // patch
        return weight.unflatten(-1, (patch, k)).unflatten(-3, (patch, k)).sum(dim=(-3, -1))
    if patch % old == 0:
        k = patch // old
        return weight.repeat_interleave(k, -2).repeat_interleave(k, -1) / (k * k)
    raise LAVTUserError(f"cannot resample a {old}x{old} stem to {patch}x{patch}: the patch sizes must divide one another")


def warm_start(model: LAVT, folder: Path) -> None:
    """Copy a saved demo model's weights into `model`. The recipe must build the same shapes,
    except for the patch size and the absolute position grid, which are resampled (the stem
    as in `resample_patch_embed`, the position table bicubically, as the forward resizes it),
    and for blocks added at the end of a stage, which start as identities. A no-target head
    that `model` has and the saved model lacks keeps its fresh initialisation; one that only the
    saved model has is left out, with a warning."""
    loaded = load_model(folder).model
    source, target = loaded.state_dict(), model.state_dict()
    if STEM in source and STEM in target and source[STEM].shape[:2] == target[STEM].shape[:2]:
        source[STEM] = resample_patch_embed(source[STEM].float(), target[STEM].shape[-1])
    if APE in source and APE in target and source[APE].shape[:2] == target[APE].shape[:2]:
        if source[APE].shape != target[APE].shape:
            source[APE] = F.interpolate(source[APE].float(), size=target[APE].shape[-2:], mode="bicubic", align_corners=False)
    # Deeper stages: the blocks the source lacks start as identities (their residual branches'
    # output projections zeroed), so the grown model computes what the source did.
    have: dict[str, int] = {}  # blocks per stage in the source
    for k in source:
        if m := _BLOCK.match(k):
            have[m.group(1)] = max(have.get(m.group(1), 0), int(m.group(2)) + 1)
    for key in target:
        m = _BLOCK.match(key)
        if key not in source and m and m.group(1) in have and int(m.group(2)) >= have[m.group(1)]:
            source[key] = torch.zeros_like(target[key]) if _RESIDUAL_OUT.search(key) else target[key]
    for key in target:
        if key.startswith(HEAD) and key not in source:
            source[key] = target[key]
    dropped = [k for k in source if k.startswith(HEAD) and k not in target]
    if dropped:
        # classic training changes the features the head reads, so its head would be stale
        warnings.warn(f"--init {folder}: its no-target head is left out (classic training); "
                      "train a new one afterwards with `lavt demo --train --generalized --init MODEL_DIR`", stacklevel=2)
        for k in dropped:
            del source[k]
    bad = sorted(k for k in target if k not in source or source[k].shape != target[k].shape)
    extra = sorted(k for k in source if k not in target)
    if bad or extra:
        c = loaded.config
        raise LAVTUserError(
            f"--init {folder}: its architecture differs from the recipe's ({len(bad)} missing or misshaped and "
            f"{len(extra)} unexpected weights, e.g. {(bad + extra)[:3]}); it was trained with --embed-dim "
            f"{c.embed_dim} --depths {','.join(map(str, c.depths))} --num-heads {','.join(map(str, c.num_heads))} "
            f"--window-size {c.window_size} --decoder-hidden {c.decoder_hidden}: give the same (only "
            "--patch-size and --image-size may differ, and --depths may add blocks)"
        )
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in source.items()})


def check_recipe(recipe: DemoRecipe) -> None:
    """Every recipe error, before any work: options, and an --init of another architecture."""
    recipe.validate()
    if recipe.init:
        with warnings.catch_warnings():  # a dry run: its warnings come once, from the real warm start
            warnings.simplefilter("ignore")
            warm_start(LAVT(recipe.model_config()), Path(recipe.init))

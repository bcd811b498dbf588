"""Scoring a demo model on generated scenes: the official protocol (argmax at the model's
input size against the masks resized to it, every expression), with the text features of
the frozen encoder from `TextCache` and the engine's scoring of an image group."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lavt.demo.scenes import SceneSet, TextCache, generate_scenes, load_scenes, scene_dataset
from lavt.engine.evaluate import score_image_group
from lavt.loading import default_tokenizer, load_model
from lavt.metrics import ReferringMetrics
from lavt.visualize import caption, colour, overlay, save_png, side_by_side

OVERLAYS = 12  # scenes drawn
PER_SCENE = 3  # expressions drawn per scene


def scored_groups(
    model: Any,
    texts: TextCache,
    scenes: SceneSet,
    empty_text: bool,
    precision: str,
    return_preds: bool,
    no_target: tuple[str, float] | None = None,
) -> Iterator[tuple[int, list[tuple[int, str, str]], list[tuple[int, int]], list[np.ndarray], list | None]]:
    """Per image of `scenes`, one forward with all its expressions (official protocol):
    (image index, its (ref, expression, kind) items, their square (I, U), the predictions when
    `return_preds`, and the no-target decisions under the rule `no_target` (None: none))."""
    device = next(model.parameters()).device
    for i, refs in scenes.refs_by_image().items():
        items = [(r, text, kind) for r in refs for text, kind in scenes.expressions[r]]
        feats, mask = texts(["" if empty_text else t for _, t, _ in items])
        group = {"image": scenes.images[i], "masks": scenes.masks[[r for r, _, _ in items]], "text_features": feats, "text_mask": mask}
        decisions: list | None = None if no_target is None else []
        rule = {} if no_target is None else {"decisions": decisions, "no_target": no_target}
        square, _, preds = score_image_group(
            model, group, device, max_batch=None, precision=precision, return_preds=return_preds, original=False, **rule
        )
        yield i, items, square, preds, decisions


@torch.no_grad()
def evaluate_scenes(
    model: Any,
    texts: TextCache,
    scenes: SceneSet,
    empty_text: bool = False,
    precision: str = "auto",
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Official-protocol scores on every expression of `scenes` (one forward per image with all
    its expressions), overall and per expression kind. `empty_text` replaces every expression
    by "" (how much language matters); `keep_predictions` adds each prediction (bool mask at
    the model's input size) with its IoU."""
    model.eval()
    overall = ReferringMetrics()
    per_kind: dict[str, ReferringMetrics] = {}
    predictions = []
    for i, items, square, preds, _ in scored_groups(model, texts, scenes, empty_text, precision, keep_predictions):
        for k, ((r, text, kind), (inter, union)) in enumerate(zip(items, square)):
            iou = overall.add(inter, union)
            per_kind.setdefault(kind or "all", ReferringMetrics()).add(inter, union)
            if keep_predictions:
                predictions.append({"image": i, "ref": r, "expression": text, "kind": kind, "iou": iou, "pred": preds[k]})
    out: dict[str, Any] = {"metrics": overall.compute(), "count": len(overall)}
    out["per_kind_oIoU"] = {k: v.compute()["oIoU"] for k, v in sorted(per_kind.items())}
    if keep_predictions:
        out["predictions"] = predictions
    return out


def _iou_line(p: dict[str, Any]) -> str:
    return f"\"{p['expression']}\"  (IoU {100 * p['iou']:.0f})"


def draw_overlays(
    scenes: SceneSet,
    predictions: list[dict[str, Any]],
    folder: Path,
    count: int = OVERLAYS,
    pick: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = lambda found: found[:PER_SCENE],
    line: Callable[[dict[str, Any]], str] = _iou_line,
) -> list[tuple[Path, list[str]]]:
    """Side-by-side pictures of the first `count` scenes: the scene, then the predictions `pick`
    chooses (default: the first PER_SCENE), each in its colour, with a legend of one `line`
    per prediction (default: the expression and its IoU). Returns each picture with its legend."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for p in predictions:
        by_image.setdefault(p["image"], []).append(p)
    written = []
    for i in list(by_image)[:count]:
        picks = pick(by_image[i])
        scene = Image.open(scenes.image_files[i]).convert("RGB")
        colors = [colour(k) for k in range(len(picks))]
        panels = [scene]
        for p, c in zip(picks, colors):
            mask = np.asarray(Image.fromarray(p["pred"].astype(np.uint8) * 255).resize(scene.size, Image.NEAREST)) > 0
            panels.append(overlay(scene, mask, c))
        lines = [line(p) for p in picks]
        picture = caption(side_by_side(panels), lines, colors=colors, background=(255, 255, 255), foreground=(0, 0, 0))
        written.append((save_png(picture, folder / f"scene_{i:03d}.png"), lines))
    return written


@dataclass
class DemoScores:
    """A demo model scored on fresh scenes, with and without the expressions."""

    model: Any
    data: Path  # the scenes' refer-format root
    scenes: SceneSet
    with_text: dict[str, Any]
    no_text: dict[str, Any]
    seconds: float
    overlays: list[tuple[Path, list[str]]]


def score_demo(model_dir: Path, out: Path, make_scenes: Callable[[Path], Path], dataset: str, score: Callable[..., dict[str, Any]],
               draw: Callable[..., list[tuple[Path, list[str]]]], precision: str) -> DemoScores:
    """The demo's scoring, classic or generalised (`make_scenes` writes the scenes under a
    folder, `score` scores them, `draw` draws the overlays): the model loaded once, the scenes
    scored with and without their expressions, overlays in `out/overlays`."""
    loaded = load_model(model_dir)
    model, tokenizer = loaded.model, loaded.tokenizer or default_tokenizer(loaded.model)
    data = make_scenes(out / "scenes")
    scenes = load_scenes(data, None, model.config.image_size, dataset=dataset)
    texts = TextCache(model, tokenizer)
    t0 = time.perf_counter()
    with_text = score(model, texts, scenes, precision=precision, keep_predictions=True)
    no_text = score(model, texts, scenes, empty_text=True, precision=precision)
    seconds = time.perf_counter() - t0
    overlays = draw(scenes, with_text.pop("predictions"), out / "overlays")
    return DemoScores(model, data, scenes, with_text, no_text, seconds, overlays)


def evaluate_demo(model_dir: Path, out: Path, seed: int, images: int, precision: str = "auto", style: str = "synthref") -> dict[str, Any]:
    """Score a demo model on `images` fresh scenes of `seed` (of `style`), with and without the
    expressions; writes the scenes to `out/scenes` and overlays to `out/overlays`."""
    r = score_demo(model_dir, out, lambda folder: generate_scenes(folder, seed, images, style=style), scene_dataset(style),
                   evaluate_scenes, draw_overlays, precision)
    size = r.model.config.image_size
    return {
        "scenes": {"root": str(r.data), "style": style, "seed": seed, "images": len(r.scenes.image_files),
                   "expressions": r.with_text["count"]},
        "with_expression": r.with_text,
        "empty_expression": r.no_text,
        "protocol": f"official: masks at {size}x{size}, every expression",
        "eval_seconds": round(r.seconds, 2),
        "overlays": [str(p) for p, _ in r.overlays],
    }

"""`lavt demo`: the embedded default, end to end with nothing downloaded.

- `lavt demo --out DIR`: fresh generated scenes (a seed never used in training), the shipped
  demo model segments every expression, and the same model with every expression replaced
  by an empty one shows how much the language matters. Writes DIR/results.json, overlay
  pictures with their expressions, and DIR/model (loadable by `lavt predict`/`lavt evaluate`).
- `lavt demo --train --out DIR`: the same, from scratch: generate, train, evaluate, save.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lavt.errors import LAVTUserError

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
EVAL_SEED = 20261127  # fresh scenes: the shipped model was trained on seeds 0 and 1


def shipped_model_dir() -> Path:
    if not (SHIPPED_MODEL / "config.json").is_file():
        raise LAVTUserError(
            f"the shipped demo model is missing from {SHIPPED_MODEL}; reinstall lavt or train one "
            "with `lavt demo --train --out DIR`"
        )
    return SHIPPED_MODEL


def generate_scenes(folder: Path, seed: int, images: int, image_size: tuple[int, int]) -> Path:
    from lavt.data.synthref import generate

    generate(folder, seed=seed, num_images=images, image_size=image_size, overwrite=True)
    return folder


def _table(rows: list[tuple[str, dict[str, float]]]) -> str:
    keys = ["oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':<{width}}  " + "  ".join(f"{k:>6}" for k in keys)]
    for name, m in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{m[k]:6.2f}" for k in keys))
    return "\n".join(lines)


def _draw_overlays(scenes: Any, predictions: list[dict[str, Any]], folder: Path, count: int) -> list[Path]:
    """Side-by-side pictures: scene | prediction with the expression and IoU written on it."""
    from PIL import Image, ImageDraw

    from lavt.visualize import overlay

    folder.mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for p in predictions:
        by_image.setdefault(p["image"], []).append(p)
    written = []
    for i in list(by_image)[:count]:
        picks = by_image[i][:3]
        scene = Image.open(scenes.image_files[i]).convert("RGB")
        w, h = scene.size
        panels = [scene]
        for p in picks:
            mask = np.asarray(Image.fromarray(p["pred"].numpy().astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
            panels.append(overlay(scene, mask))
        caption_h = 16 * len(picks) + 6
        canvas = Image.new("RGB", (w * len(panels), h + caption_h), "white")
        for k, panel in enumerate(panels):
            canvas.paste(panel, (k * w, 0))
        draw = ImageDraw.Draw(canvas)
        for k, p in enumerate(picks):
            draw.text((w * (k + 1) + 2, 2), str(k + 1), fill=(255, 255, 0))
            draw.text((4, h + 3 + 16 * k), f"{k + 1}: \"{p['expression']}\"  (IoU {100 * p['iou']:.0f})", fill=(0, 0, 0))
        path = folder / f"scene_{i:03d}.png"
        canvas.save(path)
        written.append(path)
    return written


def evaluate_demo(model_dir: Path, out: Path, seed: int, images: int, precision: str = "auto") -> dict[str, Any]:
    """Score a demo model on fresh scenes, with and without the expressions."""
    from lavt.demo.trainer import TextCache, evaluate_scenes, load_scenes
    from lavt.loading import default_tokenizer, load_model

    loaded = load_model(model_dir)
    model, tokenizer = loaded.model, loaded.tokenizer or default_tokenizer(loaded.model)
    data = generate_scenes(out / "scenes", seed, images, (128, 192))
    scenes = load_scenes(data, None, model.config.image_size)
    texts = TextCache(model, tokenizer)
    t0 = time.perf_counter()
    with_text = evaluate_scenes(model, texts, scenes, precision=precision, keep_predictions=True)
    no_text = evaluate_scenes(model, texts, scenes, empty_text=True, precision=precision)
    seconds = time.perf_counter() - t0
    overlays = _draw_overlays(scenes, with_text.pop("predictions"), out / "overlays", 12)
    return {
        "scenes": {"root": str(data), "seed": seed, "images": len(scenes.image_files), "expressions": with_text["count"]},
        "with_expression": with_text,
        "empty_expression": no_text,
        "protocol": f"official: masks at {model.config.image_size}x{model.config.image_size}, every expression",
        "eval_seconds": round(seconds, 2),
        "overlays": [str(p) for p in overlays],
    }


def report(results: dict[str, Any]) -> str:
    a, b = results["with_expression"], results["empty_expression"]
    lines = [
        f"{results['scenes']['expressions']} expressions on {results['scenes']['images']} fresh scenes (seed {results['scenes']['seed']})",
        _table([("with expression", a["metrics"]), ("empty expression", b["metrics"])]),
        "oIoU by expression kind: " + ", ".join(f"{k} {v:.1f}" for k, v in a["per_kind_oIoU"].items()),
    ]
    return "\n".join(lines)


def run_demo(out: Path, seed: int = EVAL_SEED, images: int = 120, model: Path | None = None, precision: str = "auto") -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    source = Path(model) if model else shipped_model_dir()
    results = evaluate_demo(source, out, seed, images, precision)
    target = out / "model"
    if target.resolve() != source.resolve():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    results["model"] = str(target)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nwrote {out / 'results.json'}, {len(results['overlays'])} overlays in {out / 'overlays'}, model in {target}")
    print(f'try: lavt predict --checkpoint {target} {results["overlays"][0] if results["overlays"] else "IMAGE"} "the red circle" --out {out / "predictions"}')
    return results


def run_train(out: Path, recipe: Any, seed: int = EVAL_SEED, images: int = 120) -> dict[str, Any]:
    """Generate, train from scratch, evaluate on fresh scenes, save model and curve."""
    from lavt.demo.trainer import check_recipe, load_scenes, plot_history, train_demo

    check_recipe(recipe)  # a bad option or --init fails now, not after generating the data
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "train_data"
    print(f"generating {recipe.train_images} training scenes (seed {recipe.data_seed}) ...", flush=True)
    from lavt.data.synthref import generate

    generate(data, seed=recipe.data_seed, num_images=recipe.train_images, image_size=(128, 192),
             split_fractions=(1.0, 0.0, 0.0, 0.0), overwrite=True)
    train_set = load_scenes(data, "train", recipe.image_size)
    length = f"{recipe.steps} steps" if recipe.minutes is None else f"for {recipe.minutes:g} minutes"
    print(f"{len(train_set.expressions)} objects, {train_set.num_expressions} expressions; training {length}", flush=True)
    result = train_demo(recipe, train_set)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    # float16 storage: the shipped model must stay under 10 MB; outputs change by ~1e-3 at most
    result.model.save_pretrained(model_dir, tokenizer=result.tokenizer, dtype=torch.float16)
    (model_dir / "training.json").write_text(json.dumps({"recipe": recipe.to_dict(), "steps_done": result.steps, "train_seconds": round(result.seconds, 1)}, indent=2) + "\n")
    curve = plot_history(result.history, out / "training_curve.png")
    results = evaluate_demo(model_dir, out, seed, images, recipe.precision)
    results.update({
        "model": str(model_dir),
        "recipe": recipe.to_dict(),
        "steps_done": result.steps,
        "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "training_curve": str(curve),
        "final_loss": float(np.mean([h["loss"] for h in result.history[-50:]])),
    })
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "training_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in result.history))
    print(report(results))
    print(f"\ntrained {result.steps} steps in {result.seconds / 60:.1f} min ({results['total_seconds'] / 60:.1f} min in all); "
          f"wrote {model_dir}, {curve}, {out / 'results.json'}")
    return results

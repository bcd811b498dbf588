"""`lavt demo`: the embedded default, end to end with nothing downloaded.

- `lavt demo --out DIR`: fresh generated scenes (a seed never used in training), the shipped
  demo model segments every expression, and the same model with every expression replaced
  by an empty one shows how much the language matters. Writes DIR/results.json, overlay
  pictures with their expressions, and DIR/model (loadable by `lavt predict`/`lavt evaluate`).
- `lavt demo --train --out DIR`: the same, from scratch: generate, train, evaluate, save.
- `--style aerial`: the same on top-down aerial scenes (`synthrs`); with `--train`, the
  shipped model is fine-tuned on them (unless `--init` or `--scratch` says otherwise).
- `--generalized`: the same on generalised scenes (multi-target and no-target expressions),
  scored with the generalised metrics; with `--train --init MODEL_DIR`, only the init
  model's no-target head is trained (its masks stay exactly the init model's).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lavt.data.synthref.language_generalized import GDATASET
from lavt.demo import shipped_model_dir
from lavt.demo.evaluate import evaluate_demo
from lavt.demo.generalized import evaluate_generalized_demo, generalized_report
from lavt.demo.recipe import DemoRecipe
from lavt.demo.scenes import generate_generalized_scenes, generate_scenes, load_scenes, scene_dataset
from lavt.demo.trainer import train_demo
from lavt.demo.warmstart import check_recipe
from lavt.engine.report import metrics_table
from lavt.errors import LAVTUserError
from lavt.runtime.folder import refuse_export_folder
from lavt.visualize import plot_training

EVAL_SEED = 20261127  # fresh scenes: the shipped model was trained on data seeds 0-7
QUICK_IMAGES = 10  # evaluation scenes of `--quick` at most


def main(
    out: Path,
    *,
    train: bool = False,
    model: Path | None = None,
    seed: int | None = None,
    images: int = 120,
    precision: str = "auto",
    quick: bool = False,
    steps: int | None = None,
    minutes: float | None = None,
    init: Path | None = None,
    recipe_options: dict[str, Any] | None = None,
    generalized: bool = False,
    style: str = "synthref",
    scratch: bool = False,
) -> dict[str, Any]:
    """`lavt demo` with its options: evaluate a demo model (the shipped one, or `model`) or,
    with `train`, train one by `DemoRecipe.from_options` first (`recipe_options` are recipe
    fields, None meaning the default). `generalized`: generalised scenes and metrics; with
    `train`, only the no-target head of the `init` model learns."""
    seed = EVAL_SEED if seed is None else seed
    if images < 1:
        raise LAVTUserError(f"--images must be positive, got {images}")
    if style != "synthref" and generalized:
        raise LAVTUserError(f"--generalized works on synthref scenes only, not with --style {style}")
    if not train:
        return run_demo(out, seed=seed, images=images, model=model, precision=precision, generalized=generalized, style=style)
    recipe = DemoRecipe.from_options(
        steps=steps, minutes=minutes, quick=quick, init=init, precision=precision, generalized=generalized, style=style,
        scratch=scratch, **(recipe_options or {})
    )
    return run_train(out, recipe, seed=seed, images=min(images, QUICK_IMAGES) if quick else images)


def report(results: dict[str, Any]) -> str:
    if "no_target_rule" in results:
        return generalized_report(results)
    a, b = results["with_expression"], results["empty_expression"]
    lines = [
        f"{results['scenes']['expressions']} expressions on {results['scenes']['images']} fresh "
        f"{'aerial ' if results['scenes'].get('style') == 'aerial' else ''}scenes (seed {results['scenes']['seed']})",
        metrics_table([("with expression", a["metrics"]), ("empty expression", b["metrics"])]),
        "oIoU by expression kind: " + ", ".join(f"{k} {v:.1f}" for k, v in a["per_kind_oIoU"].items()),
    ]
    return "\n".join(lines)


def run_demo(
    out: Path, seed: int = EVAL_SEED, images: int = 120, model: Path | None = None, precision: str = "auto", generalized: bool = False,
    style: str = "synthref",
) -> dict[str, Any]:
    """Evaluate a demo model (default: the shipped one) on fresh scenes (generalised ones with
    `generalized`); copy it to out/model."""
    source = Path(model) if model else shipped_model_dir()
    refuse_export_folder(source, "--model", f"and lavt demo feeds its model text features (score the export with "
                         f"lavt evaluate -c {source} on a generated set, lavt data synth)")
    out.mkdir(parents=True, exist_ok=True)
    if generalized:
        results = evaluate_generalized_demo(source, out, seed, images, precision)
    else:
        results = evaluate_demo(source, out, seed, images, precision, style=style)
    target = out / "model"
    if target.resolve() != source.resolve():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    results["model"] = str(target)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nwrote {out / 'results.json'}, {len(results['overlays'])} overlays in {out / 'overlays'}, model in {target}")
    example = results["overlays"][0] if results["overlays"] else "IMAGE"
    words = "the largest building" if style == "aerial" else "the red circle"
    print(f'try: lavt predict --checkpoint {target} {example} "{words}" --out {out / "predictions"}')
    return results


def run_train(out: Path, recipe: DemoRecipe, seed: int = EVAL_SEED, images: int = 120) -> dict[str, Any]:
    """Generate, train from scratch, evaluate on fresh scenes, save model and curve."""
    check_recipe(recipe)  # a bad option or --init fails now, not after generating the data
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"generating {recipe.train_images} training scenes (seed {recipe.data_seed}) ...", flush=True)
    if recipe.generalized:
        data = generate_generalized_scenes(out / "train_data", recipe.data_seed, recipe.train_images, train_only=True)
        train_set = load_scenes(data, "train", recipe.image_size, dataset=GDATASET)
    else:
        data = generate_scenes(out / "train_data", recipe.data_seed, recipe.train_images, train_only=True, style=recipe.style)
        # aerial scenes are always split 80/10/10: all of them are training data here
        train_set = load_scenes(data, "train" if recipe.style == "synthref" else None, recipe.image_size,
                                dataset=scene_dataset(recipe.style))
    length = f"{recipe.steps} steps" if recipe.minutes is None else f"for {recipe.minutes:g} minutes"
    print(f"{len(train_set.expressions)} objects, {train_set.num_expressions} expressions; training {length}", flush=True)
    result = train_demo(recipe, train_set)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    # float16 storage: the shipped model must stay under 10 MB; outputs change by ~1e-3 at most
    result.model.save_pretrained(model_dir, tokenizer=result.tokenizer, dtype=torch.float16)
    (model_dir / "training.json").write_text(
        json.dumps({"recipe": recipe.to_dict(), "steps_done": result.steps, "train_seconds": round(result.seconds, 1)}, indent=2) + "\n"
    )
    h = result.history
    curve = plot_training(out / "training_curve.png", [r["step"] for r in h], [r["loss"] for r in h],
                          lrs=[r["lr"] for r in h], loss_label="no-target BCE" if recipe.generalized else "CE + Dice",
                          title="demo no-target head training" if recipe.generalized else "demo training")
    if recipe.generalized:
        results = evaluate_generalized_demo(model_dir, out, seed, images, recipe.precision)
    else:
        results = evaluate_demo(model_dir, out, seed, images, recipe.precision, style=recipe.style)
    results.update({
        "model": str(model_dir),
        "recipe": recipe.to_dict(),
        "steps_done": result.steps,
        "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "training_curve": str(curve),
        "final_loss": float(np.mean([r["loss"] for r in h[-50:]])),
    })
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in h))
    print(report(results))
    print(f"\ntrained {result.steps} steps in {result.seconds / 60:.1f} min ({results['total_seconds'] / 60:.1f} min in all); "
          f"wrote {model_dir}, {curve}, {out / 'results.json'}")
    return results

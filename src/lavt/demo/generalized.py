"""`lavt demo --generalized`: a demo model on fresh generalised scenes (multi-target and
no-target expressions, `lavt data synth --generalized`), scored with the generalised metrics
(gIoU, cIoU, N-acc, T-acc, Pr@t) under the official protocol, beside the same model given
empty expressions. The no-target decision is the model's own (`config.no_target`); a model
without one (`none`) predicts a target for every expression.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lavt.data.synthref.language_generalized import GDATASET
from lavt.demo.evaluate import OVERLAYS, PER_SCENE, draw_overlays, score_demo, scored_groups
from lavt.demo.scenes import SceneSet, TextCache, generate_generalized_scenes
from lavt.engine.report import GENERALIZED_KEYS, metrics_table
from lavt.metrics import GeneralizedReferringMetrics, ReferringMetrics

NO_SUCH_OBJECT = "no such object"


@torch.no_grad()
def evaluate_generalized_scenes(
    model: Any,
    texts: TextCache,
    scenes: SceneSet,
    empty_text: bool = False,
    precision: str = "auto",
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Generalised metrics on every expression of `scenes` (official protocol, the model's
    no-target rule), gIoU per expression kind, and the classic metrics over the targeted
    expressions (their masks as predicted, the decision ignored). `empty_text` replaces every
    expression by ""; `keep_predictions` adds each prediction with its decision."""
    model.eval()
    rule = (model.config.no_target, model.config.no_target_threshold)
    overall, classic = GeneralizedReferringMetrics(), ReferringMetrics()
    per_kind: dict[str, GeneralizedReferringMetrics] = {}
    predictions = []
    for i, items, square, preds, decisions in scored_groups(model, texts, scenes, empty_text, precision, keep_predictions, rule):
        for k, ((r, text, kind), (inter, union), decision) in enumerate(zip(items, square, decisions)):
            gt_none, pred_none = bool(scenes.no_target[r]), bool(decision[0])
            # I and U of the mask as predicted, scored as `lavt evaluate` does (the metric applies the decision)
            flags = {"pred_no_target": pred_none, "gt_no_target": gt_none}
            iou = overall.add(inter, union, **flags)
            per_kind.setdefault(kind or "all", GeneralizedReferringMetrics()).add(inter, union, **flags)
            if not gt_none:
                classic.add(inter, union)
            if keep_predictions:
                predictions.append({"image": i, "ref": r, "expression": text, "kind": kind, "iou": iou, "gt_no_target": gt_none,
                                    "no_target": pred_none, "no_target_probability": decision[1], "pred": preds[k] & (not pred_none)})
    out: dict[str, Any] = {"metrics": overall.compute(), "count": len(overall)}
    out["per_kind_gIoU"] = {k: v.compute()["gIoU"] for k, v in sorted(per_kind.items())}
    out["classic_targeted"] = classic.compute()
    if keep_predictions:
        out["predictions"] = predictions
    return out


def _picks(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to PER_SCENE predictions of a scene, showing a no-target and a multi-target
    expression where the scene has them."""
    none = next((p for p in found if p["gt_no_target"]), None)
    multi = next((p for p in found if p["kind"] == "multi" and p is not none), None)
    firsts = [p for p in (none, multi) if p is not None]
    # by identity: the dicts hold mask arrays, which `in` would compare by value
    return (firsts + [p for p in found if all(p is not f for f in firsts)])[:PER_SCENE]


def _legend_line(p: dict[str, Any]) -> str:
    """A prediction decided to name nothing shows the bare scene and is marked "no such
    object", with what is true."""
    truth = "none there" if p["gt_no_target"] else ("several there" if p["kind"] == "multi" else "one there")
    if p["no_target"]:
        verdict = "right" if p["gt_no_target"] else "wrong"
        return f"\"{p['expression']}\"  -> {NO_SUCH_OBJECT} ({verdict}: {truth})"
    return f"\"{p['expression']}\"  (IoU {100 * p['iou']:.0f}; {truth})"


def draw_generalized_overlays(
    scenes: SceneSet, predictions: list[dict[str, Any]], folder: Path, count: int = OVERLAYS
) -> list[tuple[Path, list[str]]]:
    """Side-by-side pictures of the first `count` scenes: the scene, then up to PER_SCENE
    predictions; an expression decided to name nothing shows the bare scene and is marked
    "no such object" in the legend, with what is true. Returns each picture with its legend."""
    return draw_overlays(scenes, predictions, folder, count, pick=_picks, line=_legend_line)


def evaluate_generalized_demo(model_dir: Path, out: Path, seed: int, images: int, precision: str = "auto") -> dict[str, Any]:
    """Score a demo model on `images` fresh generalised scenes of `seed`, with and without the
    expressions; writes the scenes to `out/scenes` and overlays to `out/overlays`."""
    r = score_demo(model_dir, out, lambda folder: generate_generalized_scenes(folder, seed, images), GDATASET,
                   evaluate_generalized_scenes, draw_generalized_overlays, precision)
    m, size = r.with_text["metrics"], r.model.config.image_size
    return {
        "scenes": {"root": str(r.data), "dataset": GDATASET, "seed": seed, "images": len(r.scenes.image_files),
                   "expressions": r.with_text["count"], "no_target": m["no_target"], "targeted": m["targeted"]},
        "no_target_rule": r.model.config.no_target,
        "with_expression": r.with_text,
        "empty_expression": r.no_text,
        "protocol": f"official: masks at {size}x{size}, every expression; generalised metrics",
        "eval_seconds": round(r.seconds, 2),
        "overlays": [str(p) for p, _ in r.overlays],
        "overlay_legends": {str(p): lines for p, lines in r.overlays},
    }


def generalized_report(results: dict[str, Any]) -> str:
    """The generalised table of `lavt demo --generalized`."""
    a, b, s = results["with_expression"], results["empty_expression"], results["scenes"]
    return "\n".join([
        f"{s['expressions']} expressions ({s['no_target']} no-target, {s['targeted']} targeted) on {s['images']} fresh "
        f"generalised scenes (seed {s['seed']}); no-target rule: {results['no_target_rule']}",
        metrics_table([("with expression", a["metrics"]), ("empty expression", b["metrics"])], keys=GENERALIZED_KEYS),
        "gIoU by expression kind: " + ", ".join(f"{k} {v:.1f}" for k, v in a["per_kind_gIoU"].items()),
        f"classic oIoU over the targeted expressions (decision ignored): {a['classic_targeted']['oIoU']:.2f}",
    ])

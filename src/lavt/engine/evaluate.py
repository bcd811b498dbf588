"""Evaluation: every expression of a split, scored under two protocols side by side.

- `official`: the official test.py protocol. The prediction is the argmax of the logits at
  the model's square input size (480x480 for the released models) and is compared with the
  ground-truth mask resized to that square (nearest).
- `original`: the protocol of later work (CRIS, CGFormer, LISA, EVF-SAM). The logits are
  resized bilinearly to the image's original height and width and then argmax-ed, and
  compared with the mask at the original resolution. `align_corners=False` because the
  input square is itself a half-pixel-centred resize of the original image.

All expressions of one image go through the model in one batch (`ReferImageGroups`), and
the text-independent stem runs once per image (`LAVT.segment_expressions`); the numbers are
those of one forward per expression. Under torchrun each process scores a share of the
images and the sums are all-reduced, so the totals are exact.
"""
from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lavt.data.dataset import ReferImageGroups
from lavt.data.tokenization import ExpressionTokenizer
from lavt.engine.config import EvalConfig
from lavt.engine.distributed import DistEnv, all_gather_objects, process_group
from lavt.engine.generalized import GeneralizedScores, group_decisions, pick_area_threshold
from lavt.engine.loop import progress_bar
from lavt.engine.samplers import ShardSampler
from lavt.errors import LAVTUserError
from lavt.loading import check_vocabulary, default_tokenizer, load_model
from lavt.metrics import ReferringMetrics
from lavt.precision import autocast
from lavt.visualize import caption, compare, enlarge, save_png

PROTOCOLS: dict[str, str] = {
    "official": "argmax at the model's square input size vs the ground truth resized to it (nearest), as the official test.py",
    "original": "logits resized bilinearly (align_corners=False) to the original image size, argmax, vs the original mask",
}


@dataclass
class EvalResult:
    """Scores per protocol, counts, and the JSON-ready report."""

    metrics: dict[str, dict[str, float]]
    counts: dict[str, int]
    report: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def score_image_group(
    model: torch.nn.Module,
    group: dict[str, Any],
    device: torch.device,
    max_batch: int | None = 64,
    precision: str = "fp32",
    return_preds: bool = True,
    original: bool = True,
    decisions: list | None = None,
    no_target: tuple[str, float] = ("none", 0.0),
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[np.ndarray]]:
    """All expressions of one image, `max_batch` per forward (None: all at once).

    `group` holds `image` (3,S,S), `masks` (E,S,S) at the square size, the text as token ids
    (`input_ids`, `attention_mask`) or as text-encoder features (`text_features`,
    `text_mask`), and, with `original`, `orig_masks` (E masks of the original (H,W)).
    Returns (I, U) per expression at the square size, (I, U) at the original size (empty
    without `original`), and (when `return_preds`) the predicted masks, bool (H,W) each, at
    the original size (at the square size without `original`). A `decisions` list receives
    each expression's no-target decision under `no_target` = (mode, area threshold), as
    `lavt.engine.generalized.group_decisions` gives it."""
    image = group["image"].to(device)[None]
    keys = ("text_features", "text_mask") if "text_features" in group else ("input_ids", "attention_mask")
    text = {k: group[k].to(device) for k in keys}
    gts = group["masks"].to(device)
    origs = group["orig_masks"] if original else None
    n = gts.shape[0]
    step = n if max_batch is None else max_batch
    square: list[tuple[int, int]] = []
    at_original: list[tuple[int, int]] = []
    preds: list[np.ndarray] = []
    segment = getattr(model, "segment_expressions", None)
    extra = {"return_no_target": True} if decisions is not None and no_target[0] == "head" else {}
    for s in range(0, n, step):
        e = min(n, s + step)
        chunk = {k: v[s:e] for k, v in text.items()}
        with autocast(precision, device):
            if segment is not None:
                logits = segment(image, **chunk, **extra)
            else:
                logits = model(image.expand(e - s, -1, -1, -1), **chunk, **extra)
        logits, nt_logit = logits if extra else (logits, None)
        logits = logits.float()
        pred = logits.argmax(1).bool()
        if decisions is not None:
            decisions += group_decisions(no_target[0], no_target[1], pred, nt_logit)
        gt = gts[s:e].bool()
        square += list(zip((pred & gt).flatten(1).sum(1).tolist(), (pred | gt).flatten(1).sum(1).tolist()))
        if origs is None:
            if return_preds:
                preds += list(pred.cpu().numpy())
            continue
        h, w = origs[s].shape[-2:]
        up = F.interpolate(logits, size=(int(h), int(w)), mode="bilinear", align_corners=False).argmax(1).bool()
        og = torch.stack([torch.as_tensor(m) for m in origs[s:e]]).to(device).bool()
        at_original += list(zip((up & og).flatten(1).sum(1).tolist(), (up | og).flatten(1).sum(1).tolist()))
        if return_preds:
            preds += list(up.cpu().numpy())
    return square, at_original, preds


def evaluate(config: EvalConfig, loaded: Any = None) -> EvalResult:
    """Score a model on a split under both protocols; write the JSON/JSONL/overlays the
    config asks for (main process). `loaded` may be a `LoadedModel` already in memory."""
    config.validate(check_paths=loaded is None)
    with process_group(config.device) as env:
        return _run(config, env, loaded)


def _run(config: EvalConfig, env: DistEnv, loaded: Any) -> EvalResult:
    t0 = time.time()
    if config.precision == "fp16" and env.device.type != "cuda":
        raise LAVTUserError("precision fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
    if loaded is None:
        loaded = load_model(config.checkpoint, env.device, graphs=config.graphs)
    model = loaded.model.to(env.device).eval()
    if config.tokenizer:
        tokenizer = ExpressionTokenizer.from_pretrained(config.tokenizer, max_tokens=model.config.max_tokens)
        check_vocabulary(model, tokenizer)
    else:
        tokenizer = loaded.tokenizer or default_tokenizer(model)
    image_size = config.image_size or model.config.image_size
    hw = getattr(model, "image_hw", None)  # an exported folder's fixed graph size
    if hw is not None and tuple(hw) != (image_size, image_size):
        raise LAVTUserError(
            f"{config.checkpoint} is an export for {hw[0]}x{hw[1]} images, but evaluation resizes every image to "
            f"{image_size}x{image_size}; export the model again with --image-size {image_size} to evaluate it"
        )
    split_by = config.resolved_split_by
    ds = ReferImageGroups(
        config.data_root, config.dataset, split_by, config.split, tokenizer=tokenizer,
        image_size=image_size, mask_mode=config.mask_mode, max_images=config.max_images, image_dir=config.image_dir,
    )
    generalized = _generalized(config, model) if ds.generalized else None
    loader = DataLoader(ds, batch_size=None, sampler=ShardSampler(len(ds), env.rank, env.world_size), num_workers=config.num_workers)

    official, original = ReferringMetrics(), ReferringMetrics()
    records: list[dict[str, Any]] = []
    # The num_worst lowest IoUs (original resolution): a heap keyed on -IoU keeps the best of
    # them at the root, ready to be replaced. Items: (-IoU, order, record, packed mask, shape).
    worst: list[tuple] = []
    keep_preds = bool(config.overlays)
    bar = progress_bar(len(loader), f"{config.dataset} {config.split}", config.progress and env.is_main)
    counter = 0
    for group in loader:
        decisions = None if generalized is None else []
        sq, og, preds = score_image_group(model, group, env.device, config.max_batch, config.precision, keep_preds,
                                          decisions=decisions, no_target=_rule(generalized))
        for k, ((i1, u1), (i2, u2)) in enumerate(zip(sq, og)):
            gt_nt = generalized is not None and bool(group["no_targets"][k])
            if gt_nt:  # the classic metrics cover the targeted expressions
                iou1, iou2 = (i1 / u1 if u1 else 0.0), (i2 / u2 if u2 else 0.0)
            else:
                iou1, iou2 = official.add(i1, u1), original.add(i2, u2)
            rec = {
                "image_id": int(group["image_id"]), "ref_id": int(group["ref_ids"][k]), "sent_id": int(group["sent_ids"][k]),
                "expression": group["expressions"][k],
                "official": {"I": i1, "U": u1, "IoU": iou1}, "original": {"I": i2, "U": u2, "IoU": iou2},
            }
            if generalized is not None:
                rec.update(generalized.add((i1, u1), (i2, u2), decisions[k], gt_nt))
                iou2 = rec["gIoU"]["original"]
            records.append(rec)
            if keep_preds:
                item = (-iou2, counter, rec, np.packbits(preds[k]), preds[k].shape)
                counter += 1
                if len(worst) < config.num_worst:
                    heapq.heappush(worst, item)
                elif item[0] > worst[0][0]:
                    heapq.heapreplace(worst, item)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    official.all_reduce(env.device)
    original.all_reduce(env.device)
    if generalized is not None:
        generalized.all_reduce(env.device)
    if official.count == 0:
        raise LAVTUserError(f"{config.dataset}/{split_by}/{config.split} has no expressions to score (none with a target)")
    all_records = [r for part in all_gather_objects(records, env) for r in part]
    metrics = {"official": official.compute(), "original": original.compute()}
    counts = {
        "images": ds.num_images,
        "refs": ds.num_refs,
        "expressions": official.count if generalized is None else generalized.official.count,
        "skipped_images": ds.skipped,
    }
    report = {
        "checkpoint": str(loaded.source),
        "checkpoint_kind": loaded.kind,
        "dataset": config.dataset,
        "split_by": split_by,
        "split": config.split,
        "mask_mode": config.mask_mode,
        "image_size": image_size,
        "protocols": {
            "official": {"resolution": f"{image_size}x{image_size}", "description": PROTOCOLS["official"]},
            "original": {"resolution": "original", "description": PROTOCOLS["original"]},
        },
        "metrics": metrics,
        "sums": {
            "official": {"cum_I": official.cum_i, "cum_U": official.cum_u},
            "original": {"cum_I": original.cum_i, "cum_U": original.cum_u},
        },
        "counts": counts,
        "device": str(env.device),
        "world_size": env.world_size,
        "precision": config.precision,
        "seconds": round(time.time() - t0, 3),
    }
    if generalized is not None:
        report["generalized"] = _generalized_report(generalized, config, env)
        counts["targeted"] = official.count
    worst_all = [w for part in all_gather_objects(worst, env) for w in part] if keep_preds else []
    if env.is_main:
        if config.json:
            _write_json(Path(config.json), report)
        if config.per_expression:
            _write_jsonl(Path(config.per_expression), sorted(all_records, key=lambda r: (r["ref_id"], r["sent_id"])))
        if config.overlays:
            chosen = sorted(worst_all, key=lambda w: (-w[0], w[1]))[: config.num_worst]
            write_overlays(ds, chosen, Path(config.overlays))
    return EvalResult(metrics, counts, report, all_records)


def _generalized(config: EvalConfig, model: Any) -> GeneralizedScores:
    """The no-target rule of this evaluation: the config's, else the model's."""
    mode = config.no_target or model.config.no_target
    threshold = model.config.no_target_threshold if config.no_target_threshold is None else config.no_target_threshold
    # a LAVT holds the head as a module; an exported folder (lavt.onnx_module) as a graph output
    has_head = getattr(model, "no_target_head", None) is not None or getattr(model, "has_no_target_head", False)
    if mode == "head" and not has_head:
        raise LAVTUserError("no_target=head needs a model with a no-target head (trained with model_overrides.no_target=head); "
                            "use no_target=area with this model")
    if config.pick_no_target_threshold and mode != "area":
        raise LAVTUserError(f"pick_no_target_threshold picks the threshold of no_target=area, but the rule is {mode!r}; "
                            "also pass --no-target area")
    return GeneralizedScores(mode, threshold, keep_for_picking=config.pick_no_target_threshold)


def _rule(generalized: GeneralizedScores | None) -> tuple[str, float]:
    return ("none", 0.0) if generalized is None else (generalized.mode, generalized.threshold)


def _generalized_report(generalized: GeneralizedScores, config: EvalConfig, env: DistEnv) -> dict[str, Any]:
    """The generalised metrics of both protocols under the rule used (or the picked threshold)."""
    out: dict[str, Any] = {"no_target": generalized.mode, "no_target_threshold": generalized.threshold}
    if config.pick_no_target_threshold:
        rows = [r for part in all_gather_objects(generalized.rows, env) for r in part]
        out["no_target_threshold"], out["metrics"] = pick_area_threshold(rows)
        out["picked"] = True
    else:
        out["metrics"] = generalized.compute()
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)


def write_overlays(ds: Any, worst: list[tuple], folder: Path, min_width: int = 320) -> list[Path]:
    """One PNG per worst case: the original image, ground truth in green, prediction in red
    (overlap yellow), with the expression and both IoUs in a caption strip underneath.
    Small images are enlarged (nearest) to `min_width` so the caption stays readable."""
    paths = []
    for rank, (_, _, rec, bits, shape) in enumerate(worst, 1):
        h, w = shape
        pred = np.unpackbits(bits)[: h * w].reshape(h, w).astype(bool)
        image = ds.refer.load_image(rec["image_id"])
        gt = ds.refer.mask(rec["ref_id"], ds.mask_mode).astype(bool)
        picture = caption(
            enlarge(compare(image, pred, gt), min_width),
            [f'"{rec["expression"]}"',
             f"IoU {rec['original']['IoU']:.3f} original, {rec['official']['IoU']:.3f} official; green GT, red prediction"],
        )
        paths.append(save_png(picture, folder / f"{rank:03d}_ref{rec['ref_id']}_sent{rec['sent_id']}.png"))
    return paths

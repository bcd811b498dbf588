"""`lavt evaluate`: score a model on a split under the official and the original-resolution
protocols. Parses options into an EvalConfig and calls `lavt.engine.evaluate.evaluate`."""
from __future__ import annotations

import argparse
import os

FLAGS: dict[str, tuple[str, type | None, str]] = {
    "--checkpoint": ("checkpoint", str, "model folder, training run/checkpoint, or official .pth"),
    "--data-root": ("data_root", str, "refer-format data folder"),
    "--dataset": ("dataset", str, "refcoco (default), refcoco+, refcocog, synthref, grefcoco (generalised), rrsisd, refsegrs, synthrs ..."),
    "--image-root": ("image_dir", str, "image folder when not the dataset's standard one"),
    "--split-by": ("split_by", str, "partition (default: unc, or umd for refcocog)"),
    "--split": ("split", str, "val (default), testA, testB, test ..."),
    "--json": ("json", str, "write metrics, protocols, checkpoint and counts to this JSON file"),
    "--per-expression": ("per_expression", str, "write one JSON line per expression (IoU under both protocols)"),
    "--overlays": ("overlays", str, "folder for overlay images of the worst cases"),
    "--num-worst": ("num_worst", int, "how many worst cases to draw (default 20)"),
    "--image-size": ("image_size", int, "square input side (default: the model's)"),
    "--mask-mode": ("mask_mode", str, "any (default) or official (drops pixels where polygons overlap)"),
    "--max-batch": ("max_batch", int, "expressions per forward (default 64)"),
    "--max-images": ("max_images", int, "score only the first N images (quick checks)"),
    "--tokenizer": ("tokenizer", str, "folder with vocab.txt (default: saved with the model, else bert uncased)"),
    "--precision": ("precision", str, "fp32 (default), bf16, fp16 (CUDA)"),
    "--graphs": ("graphs", str, "exported folder: float32 or int8 graphs (default: the folder's choice)"),
    "--device": ("device", str, "auto (default), cpu, cuda, cuda:N"),
    "--workers": ("num_workers", int, "data-loading worker processes"),
    "--no-target": ("no_target", str, "generalised datasets: none, area or head (default: the model's rule)"),
    "--no-target-threshold": ("no_target_threshold", float, "area rule: no target at most this share of the image"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="oIoU / mIoU / P@t of a model on a split (official 480x480 and original resolution)",
        description="Evaluate every expression of a split; prints a table of both protocols. On a generalised "
                    "dataset (gRefCOCO layout) also gIoU, cIoU, N-acc, T-acc and Pr@t.",
    )
    p.add_argument("--config", help="YAML or JSON file with EvalConfig keys")
    for flag, (key, typ, help_) in FLAGS.items():
        names = ["-c", flag] if key == "checkpoint" else [flag]
        p.add_argument(*names, dest=key, type=typ, default=None, help=help_)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--pick-no-target-threshold", dest="pick_no_target_threshold", action="store_true", default=None,
                   help="area rule: report the threshold with the best gIoU on this split (pick it on val)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="any EvalConfig key")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: the library loads torch, which `lavt --help` must not wait for
    from lavt.engine.config import load_eval_config, parse_overrides
    from lavt.engine.evaluate import evaluate
    from lavt.engine.report import format_table

    overrides = parse_overrides(args.overrides)
    keys = [key for key, _, _ in FLAGS.values()] + ["progress", "pick_no_target_threshold"]
    overrides.update({k: getattr(args, k) for k in keys if getattr(args, k) is not None})
    config = load_eval_config(args.config, overrides)
    result = evaluate(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_table(result.report))
        if config.json:
            print(f"wrote {config.json}")
    return 0

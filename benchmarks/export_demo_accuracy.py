#!/usr/bin/env python
"""What int8 costs on the shipped demo model: official-protocol oIoU on the demo's fresh scenes
(`lavt demo`'s seed, 120 scenes) for torch float32, onnxruntime float32, and the int8 graphs
(dynamic: linear layers; static: linear layers and convolutions, QDQ calibrated on generated
scenes), with the time each path takes for all expressions (one batched run per scene).

    python benchmarks/export_demo_accuracy.py [--images 120] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lavt.demo import shipped_model_dir
from lavt.demo.run import EVAL_SEED
from lavt.demo.scenes import generate_scenes, load_scenes
from lavt.export import export_model
from lavt.loading import load_model
from lavt.metrics import ReferringMetrics
from lavt.runtime import ExportedTokenizer, OnnxModel


def score(run, scenes, tokenizer) -> tuple[dict[str, float], float]:
    metrics = ReferringMetrics()
    seconds = 0.0
    for i, refs in scenes.refs_by_image().items():
        items = [(r, text) for r in refs for text, _ in scenes.expressions[r]]
        ids, mask = tokenizer([t for _, t in items])
        image = scenes.images[i][None].numpy()
        t0 = time.perf_counter()
        logits = run(image, ids, mask)
        seconds += time.perf_counter() - t0
        pred = logits.argmax(1).astype(bool)
        gt = scenes.masks[[r for r, _ in items]].numpy()
        for p, g in zip(pred, gt):
            metrics.add(int((p & g).sum()), int((p | g).sum()))
    return metrics.compute(), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=120)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"scenes": {"seed": EVAL_SEED, "images": args.images}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scenes = load_scenes(generate_scenes(root / "scenes", EVAL_SEED, args.images), None, 128)
        dynamic = export_model(shipped_model_dir(), root / "dynamic", quantize="int8")
        static = export_model(shipped_model_dir(), root / "static", quantize="int8", int8_method="static")
        tokenizer = ExportedTokenizer(dynamic.folder / "tokenizer.json", dynamic.config["max_tokens"])
        model = load_model(shipped_model_dir()).model

        @torch.inference_mode()
        def torch_run(image, ids, mask):
            return model.segment_expressions(torch.from_numpy(image), torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

        def onnx_run(onnx: OnnxModel):
            return lambda image, ids, mask: onnx.logits(np.repeat(image, len(ids), axis=0), ids, mask)

        paths = {
            "torch_fp32": torch_run,
            "onnx_fp32": onnx_run(OnnxModel(dynamic.folder, "float32", threads=args.threads)),
            "onnx_int8_dynamic": onnx_run(OnnxModel(dynamic.folder, "int8", threads=args.threads)),
            "onnx_int8_static": onnx_run(OnnxModel(static.folder, "int8", threads=args.threads)),
        }
        res["files"] = {"dynamic": dynamic.files, "static": static.files}
        for name, run in paths.items():
            metrics, seconds = score(run, scenes, tokenizer)
            res[name] = {"metrics": metrics, "seconds": seconds}
            print(f"{name:18s} oIoU {metrics['oIoU']:.2f}  mIoU {metrics['mIoU']:.2f}  P@0.5 {metrics['P@0.5']:.2f}  {seconds:.1f} s",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

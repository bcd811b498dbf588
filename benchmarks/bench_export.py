#!/usr/bin/env python
"""ONNX export against the official float32 code, in one run, the paper's setting by default
(Swin-B window 12 + BERT-base, 480 px, 20 tokens, batch 1).

The official model and ours get the same random weights (`bench_model.py`'s set-up, imported).
Ours is saved, exported with `lavt export`'s function (float32 full graph, int8 dynamic, and
the split pair), and timed beside the official float32 and our torch float32 / bf16:

- onnxruntime float32 and int8, one graph from pixels and token ids (the decoder's 3x3
  convolutions as Winograd matmuls, the export's default; `--direct-too` adds a float32 export
  that keeps them as `Conv` nodes);
- the split export with the expression's text features cached (only the vision graph runs),
  float32 and int8;
- the export time, the file sizes, and each path's logits against the official float32 (max
  abs difference, mean abs difference / logits std, share of pixels whose argmax differs).

    python benchmarks/bench_export.py --official /path/to/LAVT-RIS
    python benchmarks/bench_export.py --official /path/to/LAVT-RIS --preset tiny --size 224 --bert-layers 2  # quick
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import (  # noqa: E402  (the shared set-up of the model benchmark)
    bf16,
    machine,
    make_config,
    make_inputs,
    med,
    official_and_ours,
    official_forward,
    time_alternating,
)


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    return {
        "max_abs": float(np.abs(out - ref).max()),
        "mean_abs_over_std": float(np.abs(out - ref).mean() / ref.std()),
        "mask_mismatch": float((out.argmax(1) != ref.argmax(1)).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, required=True, help="checkout of yz93/LAVT-RIS")
    p.add_argument("--preset", default="base", choices=["tiny", "small", "base", "large"])
    p.add_argument("--window", type=int, default=12)
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--bert-layers", type=int, default=12)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--int8-method", default="dynamic", choices=["dynamic", "static", "both"],
                   help="int8 quantisation (default dynamic; both: a second full export, static)")
    p.add_argument("--no-split", action="store_true", help="skip the split export")
    p.add_argument("--direct-too", action="store_true", help="also time a float32 export with direct convolutions")
    p.add_argument("--out", type=Path, default=None, help="folder for the exports (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lavt.export import export_model
    from lavt.runtime import OnnxModel

    log = lambda *a: print(*a, flush=True)  # noqa: E731
    res: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:]),
        "machine": machine(),
        "setting": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    import onnxruntime

    res["machine"]["onnxruntime"] = onnxruntime.__version__
    log(f"# {res['machine']['cpu']}, {args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")

    cfg = make_config(args)
    off, bert, ours = official_and_ours(args, cfg)
    ours.eval()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        saved = ours.save_pretrained(root / "model")
        t0 = time.perf_counter()
        first = "dynamic" if args.int8_method == "both" else args.int8_method
        options = dict(image_size=args.size, tokens=args.tokens, quantize="int8", int8_method=first)
        full = export_model(saved, root / "full", **options)
        export_s = time.perf_counter() - t0
        split = None if args.no_split else export_model(saved, root / "split", parts="split", **options)
        static = None
        if args.int8_method == "both":
            static = export_model(saved, root / "static", **{**options, "int8_method": "static"})
        direct = None
        if args.direct_too:
            direct = export_model(saved, root / "direct", image_size=args.size, tokens=args.tokens, convolutions="direct")
        res["export"] = {"seconds_full_float32_and_int8": export_s, "files_full": full.files, "parity_full": full.parity}
        if split is not None:
            res["export"].update(files_split=split.files, parity_split=split.parity)
        if static is not None:
            res["export"].update(seconds_static=static.seconds, files_static=static.files, parity_static=static.parity)
        log(f"export (float32 + int8 full graph, parity checks included): {export_s:.1f} s")
        for name, size in {**full.files, **(split.files if split else {})}.items():
            if name.endswith(".onnx"):
                log(f"  {name}: {size / 1e6:.1f} MB")

        graphs = [("onnx_fp32", full.folder, "float32"), ("onnx_int8", full.folder, "int8")]
        if static is not None:
            graphs += [("onnx_int8_static", static.folder, "int8")]
        if direct is not None:
            graphs += [("onnx_fp32_direct", direct.folder, "float32")]
        if split is not None:
            graphs += [("split_fp32", split.folder, "float32"), ("split_int8", split.folder, "int8")]
        sessions = {name: OnnxModel(folder, precision=prec, threads=args.threads) for name, folder, prec in graphs}
        image, ids, mask = make_inputs(1, args.size, args.tokens, seed=3)
        img, ids_np, mask_np = image.numpy(), ids.numpy(), mask.numpy()
        cached = {k: s.text_features(ids_np, mask_np) for k, s in sessions.items() if k.startswith("split")}
        outs: dict[str, np.ndarray] = {}

        def torch_call(name: str, fn: Callable[[], torch.Tensor], autocast: bool = False) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode(), bf16() if autocast else contextlib.nullcontext():
                    outs[name] = fn().float().numpy()
            return run

        def onnx_call(name: str) -> Callable[[], None]:
            s = sessions[name]
            if name.startswith("split"):
                def run() -> None:
                    outs[name] = s.logits_from_features(img, cached[name], mask_np)
            else:
                def run() -> None:
                    outs[name] = s.logits(img, ids_np, mask_np)
            return run

        fns = {
            "official_fp32": torch_call("official_fp32", lambda: official_forward(off, bert, image, ids, mask)),
            "torch_fp32": torch_call("torch_fp32", lambda: ours(image, ids, mask)),
            "torch_bf16": torch_call("torch_bf16", lambda: ours(image, ids, mask), True),
            **{name: onnx_call(name) for name in sessions},
        }
        wall, cpu = time_alternating(fns, args.repeats)
        ref = outs["official_fp32"]
        base = med(wall["official_fp32"])
        res["inference"] = {}
        for name in fns:
            entry = {"s": med(wall[name]), "cpu_s": med(cpu[name]), "speedup_vs_official_fp32": base / med(wall[name]),
                     "runs": wall[name], **compare(ref, outs[name])}
            res["inference"][name] = entry
            log(f"{name:14s} {entry['s']:.3f} s  x{entry['speedup_vs_official_fp32']:.2f}  max|d| {entry['max_abs']:.2e}  "
                f"mean|d|/std {entry['mean_abs_over_std']:.2e}  argmax differs {100 * entry['mask_mismatch']:.3f}%")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

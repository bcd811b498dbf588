"""`lavt export --checkpoint C --out DIR`: ONNX graphs with float32 parity, optionally int8."""
from __future__ import annotations

import argparse
from pathlib import Path

from lavt.errors import LAVTUserError, require_extra


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (a folder onnxruntime runs without torch)",
        description="Writes model.onnx (image, input_ids, attention_mask -> logits; dynamic batch, fixed size "
        "and token count), config.json, the tokenizer files and a model card, then runs onnxruntime against "
        "the torch model on random inputs and on a generated scene and prints the largest logit difference "
        "(float32 fails above 1e-4). Needs the 'onnx' extra.",
    )
    p.add_argument("--checkpoint", "-c", required=True,
                   help="model folder, training run/checkpoint, official .pth or Hugging Face Hub id (org/name[@revision])")
    p.add_argument("--out", "-o", required=True, type=Path, help="folder to write")
    p.add_argument("--image-size", default=None, help="S or H,W in pixels (default: the model's image size)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per expression (default: the model's, 20)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write int8 graphs (model.int8.onnx), which the runtime then runs by default")
    p.add_argument("--int8-method", choices=["dynamic", "static"], default="dynamic",
                   help="dynamic: int8 weights of the linear layers (default); static: also the convolutions, "
                   "QDQ calibrated on generated scenes")
    p.add_argument("--parts", choices=["full", "split"], default="full",
                   help="full: one graph; split: text encoder and vision graphs (text features in between)")
    p.add_argument("--convolutions", choices=["winograd", "direct"], default="winograd",
                   help="winograd: the decoder's wide 3x3 convolutions as Winograd matmuls, faster in onnxruntime on "
                   "CPUs (default); direct: keep them as Conv nodes, for runtimes with fast direct convolutions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_extra("lavt export", "onnx", ("onnx", "onnxruntime"))
    if not 7 <= args.opset <= 23:
        raise LAVTUserError(f"--opset must be between 7 and 23, got {args.opset}")
    # imported when the command runs: the exporter loads torch, which `lavt --help` must not wait for
    from lavt.export import export_model

    report = export_model(args.checkpoint, args.out, image_size=args.image_size, tokens=args.tokens, opset=args.opset,
                          quantize=args.quantize, int8_method=args.int8_method, parts=args.parts,
                          convolutions=args.convolutions)
    for precision, result in report.parity.items():
        print(f"{precision}: largest logit difference to torch {result['random_max_abs']:.3g} on random inputs, "
              f"{result['example_max_abs']:.3g} on a generated scene (logits up to "
              f"{max(result['random_logit_scale'], result['example_logit_scale']):.3g}; argmax differs on "
              f"{100 * max(result['random_mask_mismatch'], result['example_mask_mismatch']):.3f}% of pixels)")
        if "random_no_target_max_abs" in result:
            print(f"{precision}: no-target head logit difference {result['random_no_target_max_abs']:.3g} on random inputs, "
                  f"{result['example_no_target_max_abs']:.3g} on the scene")
    for name, size in report.files.items():
        print(f"  {name}: {size / 1e6:.1f} MB")
    print(f"wrote {report.folder} in {report.seconds:.1f} s")
    return 0

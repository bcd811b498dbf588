#!/usr/bin/env python
"""The kernels behind the export's speed, on this CPU: matmul peaks (torch float32 / bf16,
onnxruntime float32 / int8) and the paper-size decoder's 3x3 convolutions in onnxruntime as
`Conv` against the export's Winograd subgraph (`lavt.export.winograd`).

    python benchmarks/bench_onnx_kernels.py                # both parts, 2 threads
    python benchmarks/bench_onnx_kernels.py --only convs --repeats 9
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import machine  # noqa: E402
from lavt.export.winograd import rewrite_convolutions  # noqa: E402

# (C_in, C_out, side) of LAVT's decoder at 480 px with Swin-B (hidden 512): conv1_2, conv2_2,
# conv1_3, conv2_3, conv1_4, conv2_4
DECODER = [(640, 512, 120), (512, 512, 120), (768, 512, 60), (512, 512, 60), (1536, 512, 30), (512, 512, 30)]
MATMULS = [(2048, 2048, 2048), (576, 1024, 3072), (14400, 128, 512), (225, 4096, 1024)]


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def session(model, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def matmul_model(k: int, n: int, int8: bool):
    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w")
        node, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node(node, ["a", "w"], ["y"])], "mm", [helper.make_tensor_value_info("a", a_type, [None, k])],
                              [helper.make_tensor_value_info("y", y_type, None)], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def peak_row(m: int, k: int, n: int, threads: int, repeats: int) -> dict:
    a, b = torch.randn(m, k), torch.randn(k, n)
    ab, bb = a.bfloat16(), b.bfloat16()
    a8 = np.random.default_rng(1).integers(0, 255, (m, k), dtype=np.uint8)
    s32, s8 = session(matmul_model(k, n, False), threads), session(matmul_model(k, n, True), threads)
    an = a.numpy()
    times = {
        "torch_fp32": median_time(lambda: a @ b, repeats),
        "torch_bf16": median_time(lambda: ab @ bb, repeats),
        "ort_fp32": median_time(lambda: s32.run(None, {"a": an}), repeats),
        "ort_int8": median_time(lambda: s8.run(None, {"a": a8}), repeats),
    }
    row = {"shape": [m, k, n], **{name: 2 * m * k * n / t / 1e9 for name, t in times.items()}}
    print(f"{m}x{k}x{n}: " + ", ".join(f"{name} {row[name]:.0f}" for name in times) + " GFLOP/s (GOP/s for int8)", flush=True)
    return row


def peaks(threads: int, repeats: int) -> list[dict]:
    return [peak_row(m, k, n, threads, repeats) for m, k, n in MATMULS]


def conv_model(c_in: int, c_out: int, side: int):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c_in, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def conv_row(c_in: int, c_out: int, side: int, threads: int, repeats: int) -> dict:
    direct, wino = conv_model(c_in, c_out, side), conv_model(c_in, c_out, side)
    rewrite_convolutions(wino)
    x = np.random.default_rng(1).standard_normal((1, c_in, side, side)).astype(np.float32)
    sd, sw = session(direct, threads), session(wino, threads)
    want, got = sd.run(None, {"x": x})[0], sw.run(None, {"x": x})[0]
    row = {"c_in": c_in, "c_out": c_out, "side": side,
           "conv_ms": 1e3 * median_time(lambda: sd.run(None, {"x": x}), repeats),
           "winograd_ms": 1e3 * median_time(lambda: sw.run(None, {"x": x}), repeats),
           "rel_diff": float(np.abs(got - want).max() / np.abs(want).max())}
    print(f"{c_in}->{c_out} at {side}x{side}: Conv {row['conv_ms']:.1f} ms, Winograd {row['winograd_ms']:.1f} ms "
          f"(x{row['conv_ms'] / row['winograd_ms']:.2f}), max diff {row['rel_diff']:.1e} of the output's scale", flush=True)
    return row


def convs(threads: int, repeats: int) -> list[dict]:
    rows = [conv_row(c_in, c_out, side, threads, repeats) for c_in, c_out, side in DECODER]
    total_c, total_w = sum(r["conv_ms"] for r in rows), sum(r["winograd_ms"] for r in rows)
    print(f"decoder: Conv {total_c:.0f} ms, Winograd {total_w:.0f} ms (x{total_c / total_w:.2f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["peaks", "convs"], default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res: dict = {"machine": {**machine(), "onnxruntime": ort.__version__}}
    print(f"# {res['machine']['cpu']}, {args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}", flush=True)
    if args.only in (None, "peaks"):
        res["peaks"] = peaks(args.threads, args.repeats)
    if args.only in (None, "convs"):
        res["convs"] = convs(args.threads, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

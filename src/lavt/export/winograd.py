"""A graph pass: the decoder's wide 3x3 convolutions of an exported graph rewritten as Winograd
F(m x m, 3x3) in standard ONNX operators.

Why: onnxruntime runs `Conv` as a direct convolution; at the paper's size the decoder's 3x3
convolutions are about half of a forward's multiply-adds. F(4x4, 3x3) computes each 4x4
output tile with 36 channel matmuls instead of 144 multiply-adds per channel pair, the same
formulation as torch's fast path (`lavt.ops.winograd`), whose transform matrices it reuses.
The trace itself stays the plain reference path; this pass only replaces `Conv` nodes, with
every shape fixed by the export (the batch axis stays dynamic).

Per convolution, in channels-last order (N, H, W, C), so that every copy moves whole channel
vectors: pad; cut the overlapping (m+2) x (m+2) tiles (stride m) by a reshape and two strided
slices per axis; V = (B^T kron B^T) D as one matmul over the tile positions; M_k = V_k U_k
((m+2)^2 batched channel matmuls; U = G g G^T, folded when the session starts); Y = (A^T kron A^T) M;
reassemble, crop, add the bias, back to NCHW (onnxruntime's transpose optimiser removes the
NCHW/NHWC pairs between consecutive convolutions).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lavt.ops.winograd import MATRICES, MIN_CHANNELS

# F(4x4) on maps of at least this side, F(2x2) below: lower than torch's threshold, because in
# onnxruntime F(4x4) wins on smaller maps already (BENCHMARKS.md, "Winograd in the exported graph").
ONNX_F4_MIN_SIDE = 8


def transform_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T kron B^T, G kron G, A^T kron A^T) in float64 for tile size m."""
    bt, g, at = (np.array(a, dtype=np.float64) for a in MATRICES[m])
    return np.kron(bt, bt), np.kron(g, g), np.kron(at, at)


def winograd_applies(node: Any, weight: np.ndarray | None, min_channels: int = MIN_CHANNELS) -> bool:
    """A 3x3, stride-1, padding-1, ungrouped, undilated `Conv` with a constant float32 filter
    of at least `min_channels` input and output channels."""
    if node.op_type != "Conv" or weight is None or weight.ndim != 4 or weight.dtype != np.float32:
        return False
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (
        tuple(weight.shape[2:]) == (3, 3)
        and attrs.get("kernel_shape", [3, 3]) == [3, 3]
        and attrs.get("pads", [0, 0, 0, 0]) == [1, 1, 1, 1]
        and attrs.get("strides", [1, 1]) == [1, 1]
        and attrs.get("dilations", [1, 1]) == [1, 1]
        and attrs.get("group", 1) == 1
        and attrs.get("auto_pad", b"NOTSET") == b"NOTSET"
        and min(weight.shape[:2]) >= min_channels
    )


def winograd_nodes(prefix: str, x: str, y: str, weight: np.ndarray, bias: np.ndarray | None,
                   size: tuple[int, int], m: int) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers computing `y = Conv(x, weight, bias, pads=1)` (NCHW, spatial
    `size`) by F(m x m, 3x3); every new name starts with `prefix`."""
    from onnx import helper, numpy_helper

    c_out, c_in = weight.shape[:2]
    a = m + 2
    h, w = size
    th, tw = -(-h // m), -(-w // m)
    # padded to m * (tiles + 1) a side: the strided slices of the tiles' last two rows fit
    hp, wp = m * (th + 1), m * (tw + 1)
    kb, kg, ka = transform_matrices(m)
    nodes: list[Any] = []
    inits: dict[str, Any] = {}

    def const(name: str, value: np.ndarray | list[int]) -> str:
        full = f"{prefix}/c/{name}"
        arr = np.asarray(value, dtype=np.int64) if isinstance(value, list) else value
        inits[full] = numpy_helper.from_array(np.ascontiguousarray(arr), full)
        return full

    def node(op: str, inputs: list[str], name: str, out: str | None = None, **attrs: Any) -> str:
        out = out or f"{prefix}/{name}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"{prefix}/{name}", **attrs))
        return out

    def tiles(src: str, axis: int, n: int, shape: list[int], name: str) -> str:
        # tile t along `axis` covers positions m*t .. m*t+m+1: the first m of each by one reshape
        # of the first m*n positions, the last two by strided slices (start m and m+1, step m)
        head = node("Slice", [src, const(f"{name}_s", [0]), const(f"{name}_e", [m * n]), const(f"{name}_ax", [axis])], f"{name}_head")
        parts = [node("Reshape", [head, const(f"{name}_shape", shape)], f"{name}_headr")]
        for j in (0, 1):
            tail = node("Slice", [src, const(f"{name}_s{j}", [m + j]), const(f"{name}_e{j}", [m * n + m + j]),
                                  const(f"{name}_ax", [axis]), const(f"{name}_step", [m])], f"{name}_tail{j}")
            parts.append(node("Unsqueeze", [tail, const(f"{name}_uax", [axis + 1])], f"{name}_tail{j}u"))
        return node("Concat", parts, f"{name}_tiles", axis=axis + 1)

    xh = node("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])
    p = node("Pad", [xh, const("pads", [0, 1, 1, 0, 0, hp - h - 1, wp - w - 1, 0])], "pad")
    rows = tiles(p, 1, th, [-1, th, m, wp, c_in], "rows")  # (N, th, a, wp, C)
    d = tiles(rows, 3, tw, [-1, th, a, tw, m, c_in], "cols")  # (N, th, a, tw, a, C)
    d = node("Transpose", [d], "tile_major", perm=[2, 4, 0, 1, 3, 5])  # (a, a, N, th, tw, C)
    d = node("Reshape", [d, const("flat", [a * a, -1])], "tiles2d")
    v = node("MatMul", [const("bt_kron", kb.astype(np.float32)), d], "input_transform")
    v = node("Reshape", [v, const("v_shape", [a * a, -1, c_in])], "v")
    # U = G g G^T as nodes on the 3x3 filters, not stored: onnxruntime folds these constants
    # when the session starts, and the file keeps the filters' own size ((m+2)^2 / 9 less)
    u = node("MatMul", [const("g_kron", kg.astype(np.float32)), const("filters", weight.reshape(c_out * c_in, 9).T)], "filter_transform")
    u = node("Reshape", [u, const("u_shape", [a * a, c_out, c_in])], "u3")
    u = node("Transpose", [u], "u", perm=[0, 2, 1])  # (a*a, C_in, C_out)
    prod = node("MatMul", [v, u], "channel_matmul")  # (a*a, N*tiles, C_out)
    prod = node("Reshape", [prod, const("flat_out", [a * a, -1])], "prod2d")
    yt = node("MatMul", [const("at_kron", ka.astype(np.float32)), prod], "output_transform")
    yt = node("Reshape", [yt, const("y_tiles", [m, m, -1, th, tw, c_out])], "y_tiles")
    yt = node("Transpose", [yt], "y_major", perm=[2, 3, 0, 4, 1, 5])  # (N, th, m, tw, m, C_out)
    yt = node("Reshape", [yt, const("y_map", [-1, m * th, m * tw, c_out])], "y_map")
    if (m * th, m * tw) != (h, w):
        yt = node("Slice", [yt, const("crop_s", [0, 0]), const("crop_e", [h, w]), const("crop_ax", [1, 2])], "crop")
    if bias is not None:
        yt = node("Add", [yt, const("bias", bias.astype(np.float32).reshape(c_out))], "bias")
    node("Transpose", [yt], "nchw", out=y, perm=[0, 3, 1, 2])
    return nodes, list(inits.values())


def _conv_input_sizes(model: Any, names: list[str]) -> dict[str, tuple[int, int]]:
    """The spatial size of each named tensor, by one onnxruntime run at batch 1 on zeros (the
    exported graphs fix H, W and N; shape inference alone loses them through `Resize`)."""
    import onnx
    import onnxruntime as ort

    outputs = len(model.graph.output)
    for name in names:  # exposed as outputs for one run, then removed again
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    try:
        serialized = model.SerializeToString()
    finally:
        del model.graph.output[outputs:]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    del serialized
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = np.zeros(shape, dtype=np.int64 if "int64" in inp.type else np.float32)
    return {name: tuple(out.shape[-2:]) for name, out in zip(names, session.run(names, feeds))}  # type: ignore[misc]


def rewrite_convolutions(model: Any, min_channels: int | None = None,
                         tile_size: Callable[[tuple[int, int]], int] | None = None,
                         sizes: dict[str, tuple[int, int]] | None = None) -> int:
    """Replace, in place, every `Conv` of `model` (an onnx ModelProto) where `winograd_applies`
    by its Winograd subgraph; returns how many were replaced. `min_channels` defaults to torch's
    `MIN_CHANNELS` (read at call time); `tile_size(size)` picks m per map (default: 4 from
    `ONNX_F4_MIN_SIDE` pixels a side, else 2). `sizes` (input name -> map size) is read and
    filled: graphs of one export share their convolutions' inputs, so the probing run that
    finds the sizes is needed once, not once per graph."""
    from onnx import numpy_helper

    min_channels = MIN_CHANNELS if min_channels is None else min_channels
    pick = tile_size or (lambda s: 4 if min(s) >= ONNX_F4_MIN_SIDE else 2)
    inits = {t.name: t for t in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            weights[node.name] = numpy_helper.to_array(inits[node.input[1]])
    targets = [n for n in model.graph.node if winograd_applies(n, weights.get(n.name), min_channels)]
    if not targets:
        return 0
    sizes = {} if sizes is None else sizes
    unknown = [n.input[0] for n in targets if n.input[0] not in sizes]
    if unknown:
        sizes.update(_conv_input_sizes(model, unknown))
    used = {name for n in targets for name in n.input[1:]}
    target_ids = {id(n) for n in targets}
    new_nodes = []
    for node in model.graph.node:
        if id(node) not in target_ids:
            new_nodes.append(node)
            continue
        bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        size = sizes[node.input[0]]
        nodes, new_inits = winograd_nodes(f"{node.name}/winograd", node.input[0], node.output[0], weights[node.name], bias,
                                          size, pick(size))
        new_nodes.extend(nodes)
        model.graph.initializer.extend(new_inits)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    # the direct filters are dead now unless something else reads them
    still_read = {name for n in model.graph.node for name in n.input}
    dead = [t for t in model.graph.initializer if t.name in used and t.name not in still_read]
    for t in dead:
        model.graph.initializer.remove(t)
    return len(targets)


def rewrite_file(path: Path, sizes: dict[str, tuple[int, int]] | None = None) -> int:
    """`rewrite_convolutions` on the graph file at `path`, saved in place when anything changed."""
    import onnx

    model = onnx.load(str(path))
    count = rewrite_convolutions(model, sizes=sizes)
    if count:
        tmp = path.with_name(path.name + ".tmp")
        onnx.save(model, str(tmp))
        tmp.replace(path)
    return count

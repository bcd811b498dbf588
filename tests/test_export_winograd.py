"""The export's Winograd pass: 3x3 `Conv` nodes rewritten as F(m x m, 3x3) matmuls compute what
onnxruntime's own convolution computes (sizes that tile evenly and not, batch 1 and 3, with and
without bias), only the convolutions it is meant for are touched, and an exported LAVT keeps
torch's logits with the pass on (and the official ones: `test_export_golden.py`)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lavt.export.winograd as winograd
from lavt.cli import main
from lavt.export import export_model
from lavt.runtime import OnnxModel
from onnx_helpers import tiny_export, tiny_model_dir


def _conv_graph(c_in, c_out, size, bias=True, seed=0, **attrs):
    """x -> Conv(3x3) -> Relu, weights at a trained network's scale."""
    rng = np.random.default_rng(seed)
    k = attrs.get("kernel_shape", [3, 3])
    groups = attrs.get("group", 1)
    weight = (rng.standard_normal((c_out, c_in // groups, *k)) / np.sqrt(9 * c_in)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
        inputs.append("b")
    attrs = {key: value for key, value in {"kernel_shape": k, "pads": [1, 1, 1, 1], **attrs}.items() if value is not None}
    nodes = [helper.make_node("Conv", inputs, ["c"], name="conv", **attrs), helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c_in, *size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    ("c_in", "c_out", "size", "m", "bias"),
    [
        (32, 24, (16, 16), 4, True),   # tiles evenly
        (32, 24, (13, 18), 4, True),   # the last tile row and column reach past the map
        (24, 40, (7, 5), 2, False),    # F(2x2), odd sizes, no bias
        (16, 16, (2, 3), 2, True),     # smaller than one F(4x4) tile
        (48, 16, (9, 30), 4, True),
    ],
)
def test_rewrite_equals_onnxruntime_conv(c_in, c_out, size, m, bias):
    reference = _conv_graph(c_in, c_out, size, bias)
    rewritten = _conv_graph(c_in, c_out, size, bias)
    assert winograd.rewrite_convolutions(rewritten, min_channels=1, tile_size=lambda s: m) == 1
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Conv" not in ops and ops[-1] == "Relu"
    assert {t.name for t in rewritten.graph.initializer}.isdisjoint({"w", "b"})  # the direct filter is gone
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, c_in, *size)).astype(np.float32)
        want, got = _run(reference, x), _run(rewritten, x)
        assert got.shape == want.shape == (batch, c_out, *size)
        # F(4x4)'s transforms scale by up to 8: rounding ~1e-6 of the output's scale, F(2x2) less
        assert np.abs(got - want).max() <= (2e-5 if m == 4 else 2e-6) * np.abs(want).max()


@pytest.mark.parametrize(
    ("attrs", "c_in", "c_out"),
    [
        ({"strides": [2, 2]}, 32, 32),
        ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, 32, 32),
        ({"group": 2}, 32, 32),
        ({"kernel_shape": [1, 1], "pads": [0, 0, 0, 0]}, 32, 32),
        ({"pads": [0, 0, 0, 0]}, 32, 32),
        ({"auto_pad": "SAME_UPPER", "pads": None}, 32, 32),  # padding by rule, not by the pads attribute
        ({}, 32, 8),  # below the channel threshold
    ],
)
def test_other_convolutions_are_left_alone(attrs, c_in, c_out):
    model = _conv_graph(c_in, c_out, (12, 12), **attrs)
    assert winograd.rewrite_convolutions(model, min_channels=16) == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]


def test_default_threshold_leaves_a_narrow_decoder_as_convolutions(tmp_path):
    """The tiny model's 16-channel decoder is below torch's `MIN_CHANNELS` rule too."""
    folder = tiny_export(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["convolutions"] == "winograd" and cfg["winograd_convolutions"] == {"model.onnx": 0}
    assert sum(n.op_type == "Conv" for n in onnx.load(str(folder / "model.onnx")).graph.node) == 8  # 6 decoder 3x3, patch embed, classifier


def test_exported_lavt_keeps_torch_logits_with_winograd(tmp_path, monkeypatch):
    """With every 3x3 decoder convolution rewritten, float32 and dynamic int8 alike, the float32
    graph stays within float32 rounding of torch and of the direct export, and the int8 graph's
    float convolutions are rewritten while its quantised matmuls stay int8."""
    model_dir = tiny_model_dir(tmp_path)
    direct = export_model(model_dir, tmp_path / "direct", convolutions="direct")
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    probes = []
    probe = winograd._conv_input_sizes
    monkeypatch.setattr(winograd, "_conv_input_sizes", lambda model, names: probes.append(names) or probe(model, names))
    report = export_model(model_dir, tmp_path / "wino", quantize="int8")
    assert len(probes) == 1 and len(probes[0]) == 6  # the map sizes found once for both graphs
    assert direct.config["convolutions"] == "direct" and "winograd_convolutions" not in direct.config
    assert report.config["winograd_convolutions"] == {"model.onnx": 6, "model.int8.onnx": 6}
    assert report.parity["float32"]["random_max_abs"] < 2e-5 and report.parity["float32"]["example_max_abs"] < 2e-5
    for name in ("model.onnx", "model.int8.onnx"):
        ops = [n.op_type for n in onnx.load(str(report.folder / name)).graph.node]
        assert ops.count("Conv") == 2, name  # the patch embedding and the 1x1 classifier
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(report.folder / "model.int8.onnx")).graph.node}
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, 48, 48)).astype(np.float32)
    ids = np.zeros((2, 12), np.int64)
    ids[:, :5] = [101, 2417, 4418, 2006, 102]
    mask = (ids > 0).astype(np.int64)
    got = OnnxModel(report.folder, "float32").logits(image, ids, mask)
    want = OnnxModel(direct.folder, "float32").logits(image, ids, mask)
    assert np.abs(got - want).max() < 2e-5
    assert "Winograd" in (report.folder / "README.md").read_text()


def test_cli_convolutions_flag(tmp_path, capsys):
    model_dir = tiny_model_dir(tmp_path)
    assert main(["export", "-c", str(model_dir), "-o", str(tmp_path / "e"), "--convolutions", "direct"]) == 0
    assert json.loads((tmp_path / "e" / "config.json").read_text())["convolutions"] == "direct"
    with pytest.raises(SystemExit) as exc:
        main(["export", "-c", str(model_dir), "-o", str(tmp_path / "e2"), "--convolutions", "fft"])
    assert exc.value.code == 2
    assert "invalid choice: 'fft'" in capsys.readouterr().err

"""`lavt export`: the graphs reproduce the torch model (any batch), the folder is complete and
self-describing, int8 and split exports, the torch tools run an exported folder, the CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from helpers import tiny_config
from lavt.cli import main
from lavt.errors import LAVTUserError
from lavt.export import export_model, parse_size
from lavt.export.parity import check_float32
from lavt.inference import Predictor
from lavt.models import LAVT
from lavt.runtime import OnnxModel, OnnxPredictor
from onnx_helpers import TOKENS, tiny_export, tiny_model_dir


def _scene(h=61, w=83, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    arr[10:40, 20:50] = (220, 30, 30)
    return arr


def _batch(model, b, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, 48, 48, generator=g)
    mask = torch.zeros(b, TOKENS, dtype=torch.int64)
    for i in range(b):
        mask[i, : 2 + (5 * i) % (TOKENS - 1)] = 1
    ids = torch.randint(1, 30522, (b, TOKENS), generator=g) * mask
    return image, ids, mask


def test_folder_contents_and_config(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "README.md"} <= names
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["model_type"] == "lavt_onnx" and cfg["parts"] == "full" and cfg["precision"] == "float32"
    assert cfg["graphs"] == {"float32": {"full": "model.onnx"}}
    assert cfg["image_size"] == [48, 48] and cfg["max_tokens"] == TOKENS and cfg["opset"] == 18
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert cfg["model_config"]["embed_dim"] == 8
    assert cfg["parity"]["float32"]["random_max_abs"] <= 1e-4 and cfg["parity"]["float32"]["example_max_abs"] <= 1e-4
    graph = onnx.load(str(exported / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["image", "input_ids", "attention_mask"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 48, 48]
    assert graph.opset_import[0].version == 18
    # The text encoder is inside the graph: its word embeddings (vocabulary x width) are a weight of it.
    assert (30522, 32) in {tuple(init.dims) for init in graph.graph.initializer}


@pytest.mark.parametrize("batch", [1, 3])
def test_float32_graph_equals_torch_at_any_batch(onnx_root, exported, batch):
    model = LAVT.from_pretrained(tiny_model_dir(onnx_root))
    image, ids, mask = _batch(model, batch, seed=batch)
    with torch.no_grad():
        ref = model(image, ids, mask).numpy()
    ours = OnnxModel(exported).logits(image.numpy(), ids.numpy(), mask.numpy())
    assert ours.shape == (batch, 2, 48, 48)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_predictions_equal_the_torch_predictor(onnx_root, exported):
    torch_p = Predictor.from_pretrained(tiny_model_dir(onnx_root))
    onnx_p = OnnxPredictor(exported)
    texts = ["the red square", "the thing on the left", "a"]
    ours, ref = onnx_p.predict(_scene(), texts), torch_p.predict(_scene(), texts)
    for a, b in zip(ours, ref):
        assert a.expression == b.expression and a.mask.shape == b.mask.shape == (61, 83)
        np.testing.assert_allclose(a.probability, b.probability, atol=2e-5, rtol=0)
        assert (a.mask != b.mask).mean() < 1e-3


def test_torch_tools_run_an_exported_folder(onnx_root, exported):
    via_onnx = Predictor.from_pretrained(exported)  # loading sees the export and runs onnxruntime
    assert type(via_onnx.model).__name__ == "OnnxLAVT" and via_onnx.tokenizer.max_tokens == TOKENS
    direct = OnnxPredictor(exported)
    texts = ["the red square", "the blue one"]
    for a, b in zip(via_onnx.predict(_scene(), texts), direct.predict(_scene(), texts)):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-6, rtol=0)
        assert np.array_equal(a.mask, b.mask)


def test_split_export_caches_text_features(onnx_root, exported):
    split = tiny_export(onnx_root, parts="split")
    cfg = json.loads((split / "config.json").read_text())
    assert cfg["graphs"]["float32"] == {"text": "text_encoder.onnx", "vision": "vision.onnx"}
    full_p, split_p = OnnxPredictor(exported), OnnxPredictor(split)
    texts = ["the red square", "the left one", "the red square"]
    for a, b in zip(split_p.predict(_scene(), texts), full_p.predict(_scene(), texts)):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-5, rtol=0)
    assert len(split_p._features) == 2  # two distinct expressions, computed once each
    calls = []
    real = split_p.model.text_features
    split_p.model.text_features = lambda *a: calls.append(a) or real(*a)
    split_p.predict(_scene(seed=1), ["the left one"])
    assert calls == []  # cached: only the vision graph ran


def test_split_export_text_features_once_per_distinct_expression(onnx_root):
    split = tiny_export(onnx_root, parts="split")
    small = OnnxPredictor(split, cache_size=1)  # fewer places than distinct expressions in one request
    rows = []
    real = small.model.text_features
    small.model.text_features = lambda ids, mask: rows.append(len(ids)) or real(ids, mask)
    texts = ["the red square", "the left one", "the red square"]
    predictions = small.predict(_scene(), texts)
    assert [p.expression for p in predictions] == texts
    assert rows == [2]  # the repeated expression is encoded once
    assert len(small._features) == 1
    np.testing.assert_array_equal(predictions[0].probability, predictions[2].probability)


def test_int8_graph_beside_the_float32_one(onnx_root):
    folder = tiny_export(onnx_root, quantize="int8")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["precision"] == "int8" and cfg["graphs"]["int8"] == {"full": "model.int8.onnx"}
    assert (folder / "model.onnx").is_file() and (folder / "model.int8.onnx").is_file()
    ops = {n.op_type for n in onnx.load(str(folder / "model.int8.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert OnnxPredictor(folder).precision == "int8"
    assert OnnxPredictor(folder, precision="float32").precision == "float32"
    assert 0 < cfg["parity"]["int8"]["random_max_abs"] < 1.0  # measured, close but not float32-exact
    assert (folder / "model.int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size


def test_model_without_text_encoder_exports_the_vision_graph(tmp_path):
    torch.manual_seed(0)
    model = LAVT(tiny_config(text_encoder=None, image_size=40)).eval()
    folder = export_model(model.save_pretrained(tmp_path / "m"), tmp_path / "e", image_size="40,56", tokens=6).folder
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["inputs"] == "features" and cfg["tokenizer"] is None and cfg["image_size"] == [40, 56]
    with pytest.raises(LAVTUserError, match="without a text encoder"):
        OnnxPredictor(folder)
    with pytest.raises(LAVTUserError, match="needs a model with a text encoder"):
        export_model(tmp_path / "m", tmp_path / "e2", parts="split")


def test_argument_errors(onnx_root, exported):
    assert parse_size("480", 1) == (480, 480) and parse_size("100,148", 1) == (100, 148) and parse_size(None, 64) == (64, 64)
    with pytest.raises(LAVTUserError, match="--image-size must be S or H,W"):
        parse_size("big", 1)
    with pytest.raises(LAVTUserError, match="--tokens must be between 2 and the text encoder's 32 positions"):
        export_model(tiny_model_dir(onnx_root), onnx_root / "bad", tokens=40)
    with pytest.raises(LAVTUserError, match=r"image must be \(B, 3, 48, 48\) for this export"):
        OnnxModel(exported).logits(np.zeros((1, 3, 40, 40), np.float32), np.zeros((1, TOKENS)), np.zeros((1, TOKENS)))
    with pytest.raises(LAVTUserError, match="has no int8 graphs"):
        OnnxModel(exported, precision="int8")
    with pytest.raises(LAVTUserError, match=r"differs from the torch model by 0.002 on the logits \(random inputs; allowed 0.0001\)"):
        check_float32({"random_max_abs": 2e-3, "random_logit_scale": 5.0, "example_max_abs": 0.0}, "DIR")
    check_float32({"random_max_abs": 1.5e-4, "random_logit_scale": 80.0}, "DIR")  # 1e-5 of the largest logit beyond 10
    with pytest.raises(LAVTUserError, match=r"\(example inputs; allowed 0.0008\)"):
        check_float32({"random_max_abs": 0.0, "example_max_abs": 9e-4, "example_logit_scale": 80.0}, "DIR")


def test_cli_export_then_predict_through_the_folder(onnx_root, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", "-c", str(tiny_model_dir(onnx_root)), "--out", str(out), "--tokens", "10"]) == 0
    printed = capsys.readouterr().out
    assert "float32: largest logit difference to torch" in printed and "model.onnx" in printed
    assert json.loads((out / "config.json").read_text())["max_tokens"] == 10
    from PIL import Image

    Image.fromarray(_scene()).save(tmp_path / "scene.png")
    assert main(["predict", "-c", str(out), str(tmp_path / "scene.png"), "the red square", "--out", str(tmp_path / "p")]) == 0
    assert "[1] 'the red square'" in capsys.readouterr().out
    assert (tmp_path / "p" / "scene_1_mask.png").is_file()
    assert main(["export", "-c", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_and_serve_run_an_exported_folder(onnx_root, exported, tmp_path):
    from PIL import Image

    from helpers import make_synth
    from lavt.serve.service import SegmentService

    data = make_synth(tmp_path / "data", num_images=12)
    reports = {}
    for name, checkpoint in (("torch", tiny_model_dir(onnx_root)), ("onnx", exported)):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "-c", str(checkpoint), "--data-root", str(data), "--dataset", "synthref", "--split", "train",
                     "--max-images", "4", "--device", "cpu", "--no-progress", "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["onnx"]["checkpoint_kind"] == "onnx" and reports["torch"]["checkpoint_kind"] == "folder"
    assert reports["onnx"]["counts"] == reports["torch"]["counts"]
    for protocol in ("official", "original"):
        for key, value in reports["torch"]["metrics"][protocol].items():
            assert reports["onnx"]["metrics"][protocol][key] == pytest.approx(value, abs=0.5), (protocol, key)
    service = SegmentService.load(str(exported), device="cpu")
    answer = service.predict(Image.fromarray(_scene()), ["the red square"])
    direct = OnnxPredictor(exported).predict(_scene(), ["the red square"])[0]
    assert np.array_equal(answer.masks[0], direct.mask)
    assert service.info["config"]["max_tokens"] == TOKENS
    assert service.info["parameters"] == LAVT.from_pretrained(tiny_model_dir(onnx_root)).num_parameters() > 0


def test_non_square_export_through_the_torch_tools(onnx_root, tmp_path, capsys):
    """An H,W export: `lavt predict` and `lavt serve` resize to the graph's own size (masks equal
    the torch-free runtime's); `lavt evaluate`, which resizes to squares, says to export a square."""
    from PIL import Image

    from helpers import make_synth
    from lavt.serve.service import SegmentService

    folder = export_model(tiny_model_dir(onnx_root), tmp_path / "wide", image_size="40,56").folder
    predictor = Predictor.from_pretrained(folder)
    assert predictor.input_size == (40, 56)
    got = predictor.predict(_scene(), ["the red square", "the blue thing"])
    want = OnnxPredictor(folder).predict(_scene(), ["the red square", "the blue thing"])
    for a, b in zip(got, want):
        assert a.mask.shape == (61, 83) and (a.mask != b.mask).mean() < 1e-3
    service = SegmentService.load(str(folder), device="cpu")
    assert service.info["input_size"] == [40, 56]
    assert np.array_equal(service.predict(Image.fromarray(_scene()), ["the red square"]).masks[0], want[0].mask)
    data = make_synth(tmp_path / "data", num_images=2)
    assert main(["evaluate", "-c", str(folder), "--data-root", str(data), "--dataset", "synthref", "--split", "train",
                 "--device", "cpu", "--no-progress"]) == 2
    assert "is an export for 40x56 images" in capsys.readouterr().err


def test_graphs_switch_picks_float32_or_int8(onnx_root, tmp_path, capsys):
    """`--graphs` (predict, evaluate, serve) runs an int8 folder's float32 graph, refuses graphs a
    folder lacks, and refuses torch models, each with one line that says why."""
    from PIL import Image

    from lavt.serve.service import SegmentService

    int8 = tiny_export(onnx_root, quantize="int8")
    assert Predictor.from_pretrained(int8).model.onnx.precision == "int8"
    as_float = Predictor.from_pretrained(int8, graphs="float32")
    assert as_float.model.onnx.precision == "float32"
    want = OnnxPredictor(int8, precision="float32").predict(_scene(), ["the red square"])[0].mask
    assert (as_float.predict(_scene(), ["the red square"])[0].mask != want).mean() < 1e-3
    assert SegmentService.load(str(int8), device="cpu", graphs="float32").predictor.model.onnx.precision == "float32"
    Image.fromarray(_scene()).save(tmp_path / "scene.png")
    scene, out = str(tmp_path / "scene.png"), str(tmp_path / "p")
    cases = [
        (["predict", "-c", str(int8), scene, "the red square", "--out", out, "--graphs", "float32"], 0, None),
        (["predict", "-c", str(tiny_export(onnx_root)), scene, "a", "--out", out, "--graphs", "int8"], 2,
         "has no int8 graphs (it has: float32); export with --quantize int8"),
        (["predict", "-c", str(tiny_model_dir(onnx_root)), scene, "a", "--out", out, "--graphs", "int8"], 2,
         "picks the graphs of an exported folder"),
        (["evaluate", "-c", str(int8), "--data-root", str(tmp_path), "--graphs", "int4"], 2,
         "graphs in options must be one of 'float32', 'int8', got 'int4'"),
    ]
    for argv, code, message in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        if message:
            assert message in err and "Traceback" not in err, err


def test_an_exported_folder_where_torch_weights_are_needed(onnx_root, tmp_path, capsys):
    """`lavt demo --model` and `--train --init` given an exported folder: one line that says to
    give the torch folder, nothing written."""
    from helpers import one_error_line

    folder = tiny_export(onnx_root)
    for argv, phrase in [
        (["demo", "--model", str(folder), "--out", str(tmp_path / "a")],
         r"is an exported \(ONNX\) folder: .*lavt demo feeds its model text features"),
        (["demo", "--train", "--quick", "--init", str(folder), "--out", str(tmp_path / "b")],
         r"--init .* is an exported \(ONNX\) folder: its graphs are for inference"),
    ]:
        assert main(argv) == 2
        one_error_line(capsys.readouterr().err, phrase)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("parts", ["full", "split"])
def test_static_int8_calibrates_every_graph(onnx_root, parts):
    """`--int8-method static`: QDQ graphs calibrated on generated scenes (the convolutions
    quantised too, so the Winograd pass leaves them alone), run by the runtime by default."""
    folder = tiny_export(onnx_root, quantize="int8", int8_method="static", parts=parts)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["precision"] == "int8" and cfg["int8_method"] == "static"
    for name in cfg["graphs"]["int8"].values():
        graph = onnx.load(str(folder / name)).graph
        ops = [n.op_type for n in graph.node]
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0, name
        if name != "text_encoder.int8.onnx":  # the vision side's convolutions read quantised filters
            produced = {o: n.op_type for n in graph.node for o in n.output}
            convs = [n for n in graph.node if n.op_type == "Conv"]
            assert convs and all(produced.get(n.input[1]) == "DequantizeLinear" for n in convs), name
    assert 0 < cfg["parity"]["int8"]["random_max_abs"] < 1.0
    result = OnnxPredictor(folder).predict(_scene(), ["the red square"])[0]
    assert result.mask.shape == (61, 83)

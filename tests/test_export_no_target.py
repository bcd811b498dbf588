"""Exports of models that decide "no target" (generalised RIS): the head's logit is a second
graph output held to float32 parity, and the torch-free `OnnxPredictor` and the torch tools
running the folder decide as the torch `Predictor` does (head and area rule, full and split)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from helpers import randomise, tiny_config
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.export import export_model
from lavt.inference import Predictor
from lavt.models import LAVT
from lavt.runtime import OnnxModel, OnnxPredictor

TEXTS = ["the red circle", "the green star on the left", "a cat"]


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    arr[5:20, 8:25] = (220, 30, 30)
    return Image.fromarray(arr)


def _saved(tmp_path, name, **config):
    torch.manual_seed(0)
    model = randomise(LAVT(tiny_config(max_tokens=12, **config))).eval()
    tok = ExpressionTokenizer(default_text_encoder_dir(), max_tokens=12)
    if config.get("no_target") == "area":  # the threshold set between the two smallest mask shares: both answers occur
        p = Predictor(model, tok)
        _, ids, mask = p.tokenize(TEXTS)
        shares = p.predict_logits(p.preprocess(_image())[0], ids, mask).argmax(1).float().mean((1, 2)).sort().values
        assert shares[0] < shares[1], shares
        model.config.no_target_threshold = float(shares[:2].mean())
    if config.get("no_target") == "head":  # the head's bias set between its two lowest logits: both answers occur
        p = np.array([r.no_target_probability for r in Predictor(model, tok).predict(_image(), TEXTS)])
        low = np.sort(np.log(p / (1 - p)))[:2]
        with torch.no_grad():
            model.no_target_head.fc2.bias.sub_(float(low.mean()))
    return model.save_pretrained(tmp_path / name, tokenizer=tok)


def _same_decisions(torch_side, onnx_side):
    assert [r.expression for r in onnx_side] == [r.expression for r in torch_side]
    for a, b in zip(torch_side, onnx_side):
        assert a.no_target == b.no_target
        if a.no_target_probability is None:
            assert b.no_target_probability is None
        else:
            assert b.no_target_probability == pytest.approx(a.no_target_probability, abs=1e-5)
        assert (a.mask != b.mask).mean() < 1e-3


@pytest.mark.parametrize("parts", ["full", "split"])
def test_head_logit_is_exported_and_decides_as_torch(tmp_path, parts):
    saved = _saved(tmp_path, "head", no_target="head")
    report = export_model(saved, tmp_path / "onnx", parts=parts)
    graph = "model.onnx" if parts == "full" else "vision.onnx"
    assert [o.name for o in onnx.load(str(report.folder / graph)).graph.output] == ["logits", "no_target_logit"]
    assert report.config["no_target_head_probability"] == 0.5
    for name in ("random", "example"):
        assert report.parity["float32"][f"{name}_no_target_max_abs"] < 1e-4
    torch_side = Predictor.from_pretrained(saved).predict(_image(), TEXTS)
    decided = [r.no_target for r in torch_side]
    assert True in decided and False in decided, decided  # the comparison covers both answers
    _same_decisions(torch_side, OnnxPredictor(report.folder).predict(_image(), TEXTS))
    # the torch tools running the folder through onnxruntime (lavt predict/evaluate/serve)
    _same_decisions(torch_side, Predictor.from_pretrained(report.folder).predict(_image(), TEXTS))
    logits, no_target = OnnxModel(report.folder).logits(*_feeds(), return_no_target=True)
    assert logits.shape == (3, 2, 48, 48) and no_target.shape == (3,)


def _feeds():
    ids = np.zeros((3, 12), np.int64)
    ids[:, :4] = [101, 2417, 4418, 102]
    return np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32), ids, (ids > 0).astype(np.int64)


def test_area_rule_decides_as_torch(tmp_path):
    saved = _saved(tmp_path, "area", no_target="area")
    report = export_model(saved, tmp_path / "onnx")
    assert "no_target_head_probability" not in report.config
    assert [o.name for o in onnx.load(str(report.folder / "model.onnx")).graph.output] == ["logits"]
    torch_side = Predictor.from_pretrained(saved).predict(_image(), TEXTS)
    onnx_side = OnnxPredictor(report.folder).predict(_image(), TEXTS)
    assert all(r.no_target is not None and r.no_target_probability is None for r in onnx_side)
    decided = [r.no_target for r in torch_side]
    assert True in decided and False in decided, decided  # the comparison covers both answers
    _same_decisions(torch_side, onnx_side)


def test_classic_model_makes_no_decision(tmp_path):
    report = export_model(_saved(tmp_path, "classic"), tmp_path / "onnx")
    assert [(r.no_target, r.no_target_probability) for r in OnnxPredictor(report.folder).predict(_image(), TEXTS)] == [(None, None)] * 3
    logits, no_target = OnnxModel(report.folder).logits(*_feeds(), return_no_target=True)
    assert no_target is None and logits.shape == (3, 2, 48, 48)


def test_evaluate_runs_an_exported_head_on_a_generalised_split(tmp_path):
    """`lavt evaluate` with the head rule on an exported folder: the same generalised metrics
    as the torch model it came from."""
    import json

    from lavt.cli import main
    from lavt.data.synthref import generate
    from lavt.data.synthref.language_generalized import generate_generalized

    data = tmp_path / "data"
    generate(data, seed=0, num_images=6, image_size=(40, 56))
    generate_generalized(data, seed=0)
    saved = _saved(tmp_path, "head", no_target="head")
    folder = export_model(saved, tmp_path / "onnx").folder
    reports = {}
    for name, checkpoint in (("torch", saved), ("onnx", folder)):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "-c", str(checkpoint), "--data-root", str(data), "--dataset", "synthgref", "--split", "train",
                     "--device", "cpu", "--no-progress", "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())["generalized"]
    assert reports["onnx"]["no_target"] == reports["torch"]["no_target"] == "head"
    for key, value in reports["torch"]["metrics"]["official"].items():
        assert reports["onnx"]["metrics"]["official"][key] == pytest.approx(value, abs=0.5), key

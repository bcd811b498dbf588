"""The golden cases of the official code (../shared/golden), exported and run in onnxruntime,
reproduce the official logits: `lavt_tiny` (text features in, the vision graph) and
`lavt_one_tiny` (BERT inside: the full graph and the split pair), at the odd 100x148 size that
pads every window and every patch merging."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lavt
from lavt.export import export_model
from lavt.runtime import OnnxModel


def _official(golden_dir, name):
    d = torch.load(golden_dir / f"{name}.pt", weights_only=True)
    sd = d["state_dict"] if d["config"]["model"] == "lavt" else {"model": d["state_dict"]}
    return d, lavt.load_official(sd, pwam_heads=d["config"]["num_heads_fusion"])


def _export(model, tmp_path, **options):
    saved = model.save_pretrained(tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the golden BERT's 120-token vocabulary fits no tokenizer: ids only
        return export_model(saved, tmp_path / "onnx", image_size="100,148", tokens=20, **options)


def test_lavt_tiny_vision_graph_reproduces_official_logits(golden_dir, tmp_path):
    d, model = _official(golden_dir, "lavt_tiny")
    report = _export(model, tmp_path)
    assert report.config["graphs"]["float32"] == {"vision": "vision.onnx"}
    logits = OnnxModel(report.folder).logits_from_features(
        d["image"].numpy(), d["l_feats"].transpose(1, 2).numpy(), d["l_mask"].numpy())
    np.testing.assert_allclose(logits, d["logits"].numpy(), atol=1e-4, rtol=0)
    assert (logits.argmax(1) != d["logits"].numpy().argmax(1)).mean() < 1e-3


@pytest.mark.parametrize("parts", ["full", "split"])
def test_lavt_one_tiny_reproduces_official_logits(golden_dir, tmp_path, parts):
    d, model = _official(golden_dir, "lavt_one_tiny")
    report = _export(model, tmp_path, parts=parts)
    onnx_model = OnnxModel(report.folder)
    logits = onnx_model.logits(d["image"].numpy(), d["input_ids"].numpy(), d["attention_mask"].numpy())
    np.testing.assert_allclose(logits, d["logits"].numpy(), atol=1e-4, rtol=0)
    if parts == "split":  # the text graph gives the official BERT output
        feats = onnx_model.text_features(d["input_ids"].numpy(), d["attention_mask"].numpy())
        np.testing.assert_allclose(feats.transpose(0, 2, 1), d["l_feats"].numpy(), atol=5e-5, rtol=0)


def test_winograd_convolutions_reproduce_official_logits(golden_dir, tmp_path, monkeypatch):
    """With the export's Winograd pass applied to every 3x3 decoder convolution (the golden
    decoder is narrower than the pass's default threshold), the logits stay official."""
    import lavt.export.winograd as winograd

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    d, model = _official(golden_dir, "lavt_one_tiny")
    report = _export(model, tmp_path)
    assert report.config["winograd_convolutions"] == {"model.onnx": 6}
    logits = OnnxModel(report.folder).logits(d["image"].numpy(), d["input_ids"].numpy(), d["attention_mask"].numpy())
    np.testing.assert_allclose(logits, d["logits"].numpy(), atol=1e-4, rtol=0)

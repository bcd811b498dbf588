"""Prediction with a no-target decision: `Predictor.predict`, `lavt predict`, the REST answer and the
web page say "no such object" (empty mask) when the model decides so, and nothing changes without one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import randomise, tiny_config
from lavt.cli import main
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.inference import Predictor
from lavt.models import LAVT

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["the red circle", "the green star"]


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))


def _predictor(**config) -> Predictor:  # noqa: ANN003
    torch.manual_seed(0)
    model = randomise(LAVT(tiny_config(**config))).eval()
    return Predictor(model, ExpressionTokenizer.from_pretrained(default_text_encoder_dir()))


def _head(bias: float) -> Predictor:
    p = _predictor(no_target="head")
    with torch.no_grad():
        p.model.no_target_head.fc2.weight.zero_()
        p.model.no_target_head.fc2.bias.fill_(bias)
    return p


def test_predictor_decisions() -> None:
    plain = _predictor().predict(_image(), TEXTS)
    assert [r.no_target for r in plain] == [None, None] and [r.no_target_probability for r in plain] == [None, None]
    said_none = _head(10.0).predict(_image(), TEXTS)
    assert [r.no_target for r in said_none] == [True, True] and all(r.area == 0 for r in said_none)
    assert said_none[0].no_target_probability == pytest.approx(1 / (1 + np.exp(-10.0)), rel=1e-6)
    assert said_none[0].mask.shape == (30, 40) and said_none[0].probability.shape == (30, 40)
    found = _head(-10.0).predict(_image(), TEXTS)
    assert [r.no_target for r in found] == [False, False]
    # the head leaves the segmentation alone: without its "no", the masks are the classic model's
    for r, c in zip(found, plain):
        np.testing.assert_array_equal(r.mask, c.mask)
    area = _predictor(no_target="area", no_target_threshold=0.999).predict(_image(), TEXTS)
    assert [r.no_target for r in area] == [True, True] and [r.no_target_probability for r in area] == [None, None]


def test_cli_predict_says_no_such_object(tmp_path: Path, capsys) -> None:
    p = _head(10.0)
    folder = p.model.save_pretrained(tmp_path / "model", tokenizer=p.tokenizer)
    image = tmp_path / "scene.png"
    _image().save(image)
    assert main(["predict", "-c", str(folder), str(image), *TEXTS, "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(": no such object (no target, probability 1.00) ->" in line for line in lines)
    assert lines[0].startswith("[1] 'the red circle': no such object")
    assert not np.asarray(Image.open(tmp_path / "out" / "scene_1_mask.png")).any()


def test_rest_and_page_say_no_such_object(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from lavt.serve.page import PageHandler
    from lavt.serve.service import SegmentService, to_json

    service = SegmentService(_head(10.0), "tiny")
    result = service.predict(_image(), TEXTS, preview=True)
    assert result.no_target == [True, True] and not any(m.any() for m in result.preview_masks)
    body = to_json(result, "tiny")
    assert [(e["no_target"], e["area"]) for e in body["results"]] == [(True, 0), (True, 0)]
    assert body["results"][0]["no_target_probability"] == pytest.approx(1.0, abs=1e-4)
    _, _, legend, rows, _ = PageHandler(service, tmp_path).render(result)
    assert [row[0] for row in rows] == ["the red circle (no such object)", "the green star (no such object)"]
    assert "no such object" in legend
    classic = to_json(SegmentService(_predictor(), "tiny").predict(_image(), TEXTS), "tiny")
    assert all("no_target" not in e for e in classic["results"])

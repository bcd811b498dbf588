"""Predictor and `lavt predict`: any image in, masks at the original size out, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_config
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.errors import LAVTUserError
from lavt.inference import Predictor, load_image
from lavt.models import LAVT


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = LAVT(tiny_config(image_size=48, max_tokens=12)).eval()
    tok = ExpressionTokenizer(default_text_encoder_dir(), max_tokens=12)
    return model.save_pretrained(tmp_path_factory.mktemp("m") / "model", tokenizer=tok)


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.from_pretrained(model_dir)


def _scene(h=70, w=90):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    arr[10:40, 20:50] = (220, 30, 30)
    return arr


def test_masks_at_original_size_one_and_many(predictor):
    arr = _scene()
    one = predictor.predict(arr, "the red square")
    assert len(one) == 1 and one[0].mask.shape == (70, 90) and one[0].mask.dtype == bool
    assert one[0].probability.shape == (70, 90) and one[0].probability.dtype == np.float32
    assert np.array_equal(one[0].mask, one[0].probability > 0.5)
    many = predictor.predict(Image.fromarray(arr), ["the red square", "the background", "a thing"])
    assert [r.expression for r in many] == ["the red square", "the background", "a thing"]
    assert all(r.mask.shape == (70, 90) for r in many)
    # batching gives what one-at-a-time gives
    np.testing.assert_allclose(many[0].probability, one[0].probability, atol=1e-5)


def test_batched_equals_model_forward(predictor):
    arr = _scene()
    ids, mask = predictor.tokenizer(["the red square", "left one"])
    image, _ = predictor.preprocess(arr)
    logits = predictor.predict_logits(image, ids, mask)
    with torch.no_grad():
        ref = predictor.model(image.expand(2, -1, -1, -1), ids, mask)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


def test_image_modes(tmp_path, predictor):
    arr = _scene()
    rgb = load_image(arr)
    assert rgb.mode == "RGB" and rgb.size == (90, 70)
    assert load_image(Image.fromarray(arr).convert("RGBA")).mode == "RGB"
    assert load_image(Image.fromarray(arr).convert("L")).mode == "RGB"
    assert load_image(arr[:, :, 0]).size == (90, 70)
    sixteen = (arr[:, :, 0].astype(np.uint16) * 257)
    np.testing.assert_array_equal(np.asarray(load_image(sixteen))[:, :, 0], arr[:, :, 0])
    path16 = tmp_path / "g16.png"
    Image.fromarray(sixteen).save(path16)
    np.testing.assert_array_equal(np.asarray(load_image(path16))[:, :, 0], arr[:, :, 0])
    np.testing.assert_array_equal(np.asarray(load_image(arr.astype(np.float32) / 255.0)), arr)
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): masks come back in display orientation
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif)
    assert load_image(path).size == (70, 90)
    assert predictor.predict(path, "x")[0].mask.shape == (90, 70)


def test_bad_inputs(tmp_path, predictor):
    with pytest.raises(LAVTUserError, match="empty"):
        predictor.predict(_scene(), "   ")
    with pytest.raises(LAVTUserError, match="at least one"):
        predictor.predict(_scene(), [])
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(LAVTUserError, match="not a readable image"):
        predictor.predict(bad, "x")
    truncated = tmp_path / "cut.png"
    Image.fromarray(_scene()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(LAVTUserError, match="not a readable image"):
        predictor.predict(truncated, "x")
    with pytest.raises(LAVTUserError, match="does not exist"):
        predictor.predict(tmp_path / "missing.jpg", "x")
    with pytest.raises(LAVTUserError, match="shape"):
        predictor.predict(np.zeros((4, 4, 5), np.uint8), "x")
    with pytest.warns(UserWarning, match="longer than 12 tokens"):
        predictor.predict(_scene(), "the very small red square that is left of the big blue circle near the top")


def test_predict_cli(tmp_path, model_dir, capsys):
    from lavt.cli import main

    image = tmp_path / "scene.png"
    Image.fromarray(_scene()).save(image)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model_dir), str(image), "the red square", "the left thing", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for k in (1, 2):
        mask = Image.open(out / f"scene_{k}_mask.png")
        assert mask.size == (90, 70) and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"scene_{k}_overlay.png").size == (90, 70)
        assert f"scene_{k}_overlay.png" in printed
    # user mistakes: one line, exit code 2, no traceback
    assert main(["predict", "-c", str(model_dir), str(image), " ", "--out", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
    notimg = tmp_path / "x.jpg"
    notimg.write_bytes(b"\x00\x01")
    assert main(["predict", "-c", str(model_dir), str(notimg), "a", "--out", str(out)]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert main(["predict", "-c", str(tmp_path), str(image), "a", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "holds no model" in err and "Traceback" not in err

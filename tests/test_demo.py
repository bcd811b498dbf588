"""The embedded default: the shipped demo model on fresh scenes, and a short `lavt demo --train`."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from lavt.cli import main
from lavt.demo.run import SHIPPED_MODEL


def test_quick_train_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--train", "--quick", "--out", str(out), "--images", "6"]) == 0
    printed = capsys.readouterr().out
    assert "with expression" in printed and "empty expression" in printed
    results = json.loads((out / "results.json").read_text())
    for key in ("with_expression", "empty_expression", "recipe", "train_seconds", "training_curve", "model"):
        assert key in results
    assert set(results["with_expression"]["metrics"]) == {"oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"}
    assert Image.open(out / "training_curve.png").size[0] > 100
    assert list((out / "overlays").glob("*.png"))
    model = out / "model"
    assert (model / "config.json").is_file() and (model / "vocab.txt").is_file()
    # the frozen text encoder is stored by reference: the folder stays small
    assert (model / "model.safetensors").stat().st_size < 10 * 2**20
    # the trained model is usable by `lavt predict`
    scene = next((out / "scenes" / "images" / "synthref").glob("*.jpg"))
    assert main(["predict", "-c", str(model), str(scene), "the red circle", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / f"{scene.stem}_1_mask.png").is_file()


def test_bad_demo_options(tmp_path, capsys):
    assert main(["demo", "--train", "--quick", "--lr", "-1", "--out", str(tmp_path)]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(["demo", "--images", "0", "--out", str(tmp_path)]) == 2
    assert "--images" in capsys.readouterr().err


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="no shipped demo model in this checkout")
def test_shipped_model_reaches_its_goal_on_fresh_scenes(tmp_path):
    from lavt.demo.run import run_demo

    size = sum(p.stat().st_size for p in SHIPPED_MODEL.iterdir())
    assert size <= 10 * 2**20
    results = run_demo(tmp_path / "demo", seed=424242, images=60)
    with_text = results["with_expression"]["metrics"]["oIoU"]
    no_text = results["empty_expression"]["metrics"]["oIoU"]
    # Measured on this seed: 74.1 oIoU with the expressions, 14.9 without (seed 20261127, 120
    # scenes: 72.2 and 16.6). The goal (>= 85) is not reached yet; these bounds guard
    # what the shipped model does.
    assert with_text >= 66.0, results["with_expression"]
    assert with_text - no_text >= 50.0
    assert (tmp_path / "demo" / "model" / "config.json").is_file()


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="no shipped demo model in this checkout")
def test_train_continues_from_a_demo_model(tmp_path, capsys):
    # 20 steps from scratch segment nothing useful; 20 steps continuing from the shipped
    # model keep what it learned (it scores ~72 oIoU on fresh scenes)
    out = tmp_path / "ft"
    assert main(["demo", "--train", "--quick", "--init", str(SHIPPED_MODEL), "--lr", "1e-4", "--out", str(out), "--images", "8"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["init"] == str(SHIPPED_MODEL)
    assert results["with_expression"]["metrics"]["oIoU"] >= 40.0, results["with_expression"]


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="no shipped demo model in this checkout")
def test_train_init_with_another_architecture_is_refused(tmp_path, capsys):
    args = ["demo", "--train", "--quick", "--init", str(SHIPPED_MODEL), "--embed-dim", "16", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--init" in err and "architecture" in err
    assert main(["demo", "--train", "--quick", "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["demo", "--train", "--quick", "--drop-path", "1.5", "--out", str(tmp_path / "z")]) == 2
    assert "--drop-path" in capsys.readouterr().err

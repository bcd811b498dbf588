"""`lavt demo --style aerial`: the embedded default on generated aerial scenes (synthrs)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image

from lavt.cli import main
from lavt.demo import SHIPPED_MODEL
from lavt.demo.recipe import AERIAL, AERIAL_MINUTES, DEFAULT_MINUTES, DemoRecipe
from lavt.demo.scenes import AERIAL_SIDE
from lavt.errors import LAVTUserError
from lavt.loading import load_model


def _digests(folder):
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.jpg")}


def test_quick_aerial_training_fine_tunes_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "aerial"
    assert main(["demo", "--train", "--style", "aerial", "--quick", "--images", "4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "fresh aerial scenes" in printed and "with expression" in printed and "empty expression" in printed
    # the shipped model's no-target head cannot follow classic fine-tuning: said once, not per check
    assert captured.err.count("warning: --init") == 1 and "no-target head is left out" in captured.err
    results = json.loads((out / "results.json").read_text())
    recipe = results["recipe"]
    assert recipe["style"] == "aerial" and recipe["init"] == str(SHIPPED_MODEL)
    assert recipe["lr"] == AERIAL["lr"] and recipe["curriculum"] == AERIAL["curriculum"]
    assert results["steps_done"] == 20 and results["scenes"]["style"] == "aerial" and results["scenes"]["images"] == 4
    kinds = set(results["with_expression"]["per_kind_oIoU"])
    assert kinds and kinds <= {"attribute", "position", "relation"}
    # trained on aerial scenes (synthrs), evaluated on fresh ones: no evaluation image is a training image
    train_images = out / "train_data" / "images" / "synthrs" / "JPEGImages"
    eval_images = out / "scenes" / "images" / "synthrs" / "JPEGImages"
    assert len(list(train_images.glob("*.jpg"))) == 60 and len(list(eval_images.glob("*.jpg"))) == 4
    assert not _digests(train_images) & _digests(eval_images)
    assert {Image.open(p).size for p in eval_images.glob("*.jpg")} == {(AERIAL_SIDE, AERIAL_SIDE)}
    assert list((out / "overlays").glob("*.png"))
    # the shipped model's architecture (less a no-target head, which classic training leaves out), with weights that moved
    shipped, tuned = load_model(SHIPPED_MODEL).model, load_model(out / "model").model
    assert tuned.config.depths == shipped.config.depths and tuned.config.image_size == shipped.config.image_size
    a = {k: v for k, v in shipped.state_dict().items() if not k.startswith("no_target_head.")}
    b = tuned.state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k].float(), b[k].float()) for k in a if not k.startswith("text_encoder."))


def test_shipped_model_on_aerial_scenes(tmp_path, capsys):
    out = tmp_path / "shipped"
    assert main(["demo", "--style", "aerial", "--images", "3", "--out", str(out)]) == 0
    assert "fresh aerial scenes" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["scenes"]["style"] == "aerial" and results["scenes"]["images"] == 3
    assert results["with_expression"]["count"] == results["empty_expression"]["count"] > 0
    assert (out / "scenes" / "synthrs" / "refs(unc).p").is_file()


def test_aerial_recipe_defaults():
    tuned = DemoRecipe.from_options(style="aerial")
    assert tuned.init == str(SHIPPED_MODEL) and tuned.minutes == AERIAL_MINUTES
    assert (tuned.lr, tuned.warmup_steps, tuned.curriculum, tuned.train_images) == tuple(
        AERIAL[k] for k in ("lr", "warmup_steps", "curriculum", "train_images"))
    assert tuned.depths == tuple(json.loads((SHIPPED_MODEL / "config.json").read_text())["depths"])
    # a given option wins over the aerial default
    assert DemoRecipe.from_options(style="aerial", lr=1e-4, train_images=30).lr == 1e-4
    # --scratch: the from-scratch recipe, on aerial scenes
    scratch = DemoRecipe.from_options(style="aerial", scratch=True)
    d = DemoRecipe()
    assert scratch.init is None and scratch.style == "aerial"
    assert (scratch.lr, scratch.curriculum, scratch.train_images, scratch.depths) == (d.lr, d.curriculum, d.train_images, d.depths)
    # the synthref default is unchanged
    plain = DemoRecipe.from_options()
    assert (plain.init, plain.minutes, plain.lr, plain.style) == (None, DEFAULT_MINUTES, d.lr, "synthref")
    with pytest.raises(LAVTUserError, match="give --init or --scratch, not both"):
        DemoRecipe.from_options(style="aerial", scratch=True, init=SHIPPED_MODEL)
    with pytest.raises(LAVTUserError, match="--style must be one of synthref, aerial, got 'satellite'"):
        DemoRecipe(style="satellite").validate()


def test_bad_aerial_options(tmp_path, capsys):
    args = ["demo", "--train", "--style", "aerial", "--quick", "--out", str(tmp_path / "x")]
    assert main([*args, "--scratch", "--init", str(SHIPPED_MODEL)]) == 2
    assert capsys.readouterr().err.strip() == "error: give --init or --scratch, not both"
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:
        main(["demo", "--style", "satellite", "--out", str(tmp_path / "z")])
    assert e.value.code == 2

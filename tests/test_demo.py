"""The embedded default: the shipped demo model on fresh scenes, and a short `lavt demo --train`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lavt.cli import main
from lavt.data.synthref import generate
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.demo import SHIPPED_MODEL
from lavt.demo.recipe import DemoRecipe
from lavt.demo.run import run_demo
from lavt.demo.scenes import ExpressionSampler, TextCache, load_scenes
from lavt.demo.trainer import train_demo
from lavt.demo.warmstart import resample_patch_embed, warm_start
from lavt.errors import LAVTUserError
from lavt.loading import load_model
from lavt.models import LAVT


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
    # a misspelt kind names the known ones; a weight without '=' is an argparse error (exit 2)
    assert main(["demo", "--train", "--quick", "--kind-weights", "relatoin=2", "--out", str(tmp_path)]) == 2
    assert "unknown expression kind 'relatoin'" in capsys.readouterr().err
    assert main(["demo", "--train", "--quick", "--kind-weights", "relation=-1", "--out", str(tmp_path)]) == 2
    assert "must be a finite number >= 0" in capsys.readouterr().err
    assert main(["demo", "--train", "--quick", "--kind-weights", "attribute=0,position=0,relation=0", "--out", str(tmp_path)]) == 2
    assert "at least one kind needs a positive weight" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--train", "--quick", "--kind-weights", "relation", "--out", str(tmp_path)])
    assert e.value.code == 2 and "KIND=WEIGHT" in capsys.readouterr().err


def test_kind_weights_shift_the_expression_draw():
    refs = [[("red star", "attribute"), ("leftmost star", "position"), ("star left of the ring", "relation")],
            [("blue ring", "attribute"), ("big blue ring", "attribute")]]
    rng = np.random.default_rng(0)
    draws = [ExpressionSampler(refs, {"relation": 2.0})(0, rng) for _ in range(8000)]
    share = draws.count("star left of the ring") / len(draws)
    assert abs(share - 0.5) < 0.02  # 2 / (1 + 1 + 2)
    zero = ExpressionSampler(refs, {"relation": 0.0, "position": 0.0})
    assert {zero(0, rng) for _ in range(200)} == {"red star"}
    # a ref whose only kinds weigh 0 is still drawn from (uniformly), not dropped
    no_attribute = ExpressionSampler(refs, {"attribute": 0.0})
    assert {no_attribute(1, rng) for _ in range(200)} == {"blue ring", "big blue ring"}
    # without weights: the earlier stages' draw, one integer per expression
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [ExpressionSampler(refs, {})(0, a) for _ in range(20)] == [refs[0][b.integers(3)][0] for _ in range(20)]


def test_shipped_model_reaches_its_goal_on_fresh_scenes(tmp_path):
    size = sum(p.stat().st_size for p in SHIPPED_MODEL.iterdir())
    assert size <= 10 * 2**20
    results = run_demo(tmp_path / "demo", seed=424242, images=60)
    with_text = results["with_expression"]["metrics"]["oIoU"]
    no_text = results["empty_expression"]["metrics"]["oIoU"]
    # Measured on this seed (float32): 84.93 oIoU with the expressions, 11.28 without. The
    # goal (>= 85) holds on average over fresh scenes (five seeds of 120 scenes: 84.50-87.19,
    # mean 85.70; the demo's seed 20261127: 85.64 float32, 85.67 bf16), not on every sample of
    # 60; these bounds guard what the shipped model does, a few points below the measured.
    assert with_text >= 82.0, results["with_expression"]
    assert with_text - no_text >= 70.0
    assert (tmp_path / "demo" / "model" / "config.json").is_file()


def test_train_continues_from_a_demo_model(tmp_path, capsys):
    # 20 steps from scratch segment nothing useful; 20 steps continuing from the shipped
    # model keep what it learned (it scores ~85 oIoU on fresh scenes)
    # (no architecture options: they default to the --init model's own, 1-1-4-1 blocks where
    # the recipe's default is 1-1-2-1)
    out = tmp_path / "ft"
    shipped = json.loads((SHIPPED_MODEL / "config.json").read_text())
    args = ["demo", "--train", "--quick", "--init", str(SHIPPED_MODEL), "--lr", "1e-4"]
    assert main(args + ["--out", str(out), "--images", "8"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["init"] == str(SHIPPED_MODEL)
    assert list(results["recipe"]["depths"]) == shipped["depths"] != [1, 1, 2, 1]
    assert results["with_expression"]["metrics"]["oIoU"] >= 40.0, results["with_expression"]


def test_train_init_with_another_architecture_is_refused(tmp_path, capsys):
    args = ["demo", "--train", "--quick", "--init", str(SHIPPED_MODEL), "--embed-dim", "16", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--init" in err and "architecture" in err
    assert "--embed-dim 32 --depths 1,1,4,1" in err  # says what the model was trained with
    assert main(["demo", "--train", "--quick", "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["demo", "--train", "--quick", "--init", str(tmp_path), "--out", str(tmp_path / "w")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["demo", "--train", "--quick", "--drop-path", "1.5", "--out", str(tmp_path / "z")]) == 2
    assert "--drop-path" in capsys.readouterr().err


def test_resampled_stem_sees_the_rescaled_image():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 16, 24)
    w4 = torch.randn(6, 3, 4, 4)
    # patch 4 -> 2: the new stem on the image = the old stem on the image upsampled 2x
    expected = F.conv2d(F.interpolate(image, scale_factor=2, mode="nearest"), w4, stride=4)
    torch.testing.assert_close(F.conv2d(image, resample_patch_embed(w4, 2), stride=2), expected, atol=1e-5, rtol=1e-5)
    # patch 2 -> 4: the new stem on the image = the old stem on the image average-pooled 2x
    w2 = torch.randn(6, 3, 2, 2)
    expected = F.conv2d(F.avg_pool2d(image, 2), w2, stride=2)
    torch.testing.assert_close(F.conv2d(image, resample_patch_embed(w2, 4), stride=4), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(LAVTUserError, match="divide"):
        resample_patch_embed(w4, 3)


def test_init_with_another_patch_size_resamples_the_stem_and_positions():
    shipped = load_model(SHIPPED_MODEL).model
    source = shipped.state_dict()
    model = LAVT(DemoRecipe(patch_size=2, depths=tuple(shipped.config.depths)).model_config())
    with pytest.warns(UserWarning, match="its no-target head is left out"):  # a classic recipe has no head
        warm_start(model, SHIPPED_MODEL)
    state = model.state_dict()
    stem, ape = "backbone.patch_embed.proj.weight", "backbone.absolute_pos_embed"
    assert state[stem].shape[-1] == 2 and state[ape].shape[-1] == 2 * source[ape].shape[-1]
    torch.testing.assert_close(state[stem], resample_patch_embed(source[stem].float(), 2))
    # every other weight is copied as it is
    key = "backbone.layers.2.blocks.1.attn.relative_position_bias_table"
    torch.testing.assert_close(state[key], source[key].float())


def test_training_for_a_time_budget(tmp_path):
    generate(tmp_path, seed=3, num_images=8, image_size=(64, 96), split_fractions=(1.0, 0.0, 0.0, 0.0), overwrite=True)
    scenes = load_scenes(tmp_path, "train", 64)
    recipe = DemoRecipe(image_size=64, embed_dim=8, num_heads=(1, 1, 1, 1), pwam_heads=(1, 1, 1, 1), decoder_hidden=8,
                        window_size=4, minutes=0.1, batch_size=2, warmup_steps=1, steps=10**6)
    result = train_demo(recipe, scenes, progress=False)
    seconds = [h["seconds"] for h in result.history]
    # it stops at the first step past the budget (6 s; long enough for several steps on a loaded machine), not after `steps`
    assert 1 < result.steps == len(result.history) < 10**6
    assert seconds[-1] >= 6.0 and seconds[-2] < 6.0
    # the learning rate decays with the share of the budget spent, not with the step count
    first, last = result.history[1], result.history[-1]
    assert last["lr"] < first["lr"]
    for h, prev in zip(result.history[2:], result.history[1:]):
        assert h["lr"] == pytest.approx(recipe.lr * (1 - prev["seconds"] / 6.0) ** 0.9, rel=1e-9)


def test_steps_and_minutes_together_are_refused(tmp_path, capsys):
    assert main(["demo", "--train", "--steps", "10", "--minutes", "1", "--out", str(tmp_path)]) == 2
    assert "--steps or --minutes" in capsys.readouterr().err
    assert main(["demo", "--train", "--minutes", "0", "--out", str(tmp_path)]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_text_cache_encodes_only_the_words():
    model = LAVT(DemoRecipe(embed_dim=8, num_heads=(1, 1, 1, 1), pwam_heads=(1, 1, 1, 1), decoder_hidden=8).model_config())
    model.load_text_encoder_weights()
    model.eval()
    tokenizer = ExpressionTokenizer(default_text_encoder_dir(), max_tokens=20)
    texts = ["the red star", "the small blue ring left of the big green cross at the top"]
    feats, mask = TextCache(model, tokenizer)(texts)
    ids, full_mask = tokenizer(texts)
    with torch.no_grad():
        full = model.text_encoder(input_ids=ids, attention_mask=full_mask)[0]
    assert torch.equal(mask, full_mask) and feats.shape == full.shape
    words = full_mask.bool()
    torch.testing.assert_close(feats[words], full[words], atol=1e-5, rtol=1e-5)
    # past the longest expression nothing is encoded (LAVT masks the padding out anyway)
    assert not feats[:, int(full_mask.sum(1).max()):].any()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(image, text_features=feats, text_mask=mask),
                                   model(image, text_features=full, text_mask=full_mask), atol=1e-4, rtol=1e-4)


def test_init_with_added_blocks_computes_what_the_source_did():
    source = load_model(SHIPPED_MODEL).model.float().eval()
    depths = list(source.config.depths)
    depths[2] += 2
    grown = LAVT(DemoRecipe(depths=tuple(depths)).model_config())
    with pytest.warns(UserWarning, match="its no-target head is left out"):
        warm_start(grown, SHIPPED_MODEL)
    grown.eval()
    assert len(grown.backbone.layers[2].blocks) == depths[2]
    torch.manual_seed(0)
    image, feats = torch.randn(2, 3, 128, 128), torch.randn(2, 20, source.config.text_dim)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        torch.testing.assert_close(grown(image, text_features=feats, text_mask=mask),
                                   source(image, text_features=feats, text_mask=mask), atol=1e-4, rtol=1e-4)

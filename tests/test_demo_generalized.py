"""`lavt demo --generalized`: the shipped demo model's no-target head on fresh generalised
scenes, head-only training (`--train --generalized`), and the classic outputs left alone."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from lavt.cli import main
from lavt.demo import SHIPPED_MODEL
from lavt.demo.evaluate import evaluate_scenes
from lavt.demo.run import run_demo
from lavt.demo.scenes import TextCache, generate_scenes, load_scenes
from lavt.loading import default_tokenizer, load_model
from lavt.models import LAVT

GENERALIZED = {"gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"}


def test_generalized_demo_prints_the_table_and_marks_no_target(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["demo", "--generalized", "--images", "6", "--seed", "31", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if "gIoU" in line)
    assert header.split() == ["gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    assert "with expression" in printed and "empty expression" in printed and "no-target rule: head" in printed
    results = json.loads((out / "results.json").read_text())
    m = results["with_expression"]["metrics"]
    assert GENERALIZED <= set(m) and set(results["empty_expression"]["metrics"]) >= GENERALIZED
    assert m["no_target"] > 0 and m["targeted"] > 0 and m["no_target"] + m["targeted"] == results["scenes"]["expressions"]
    assert results["no_target_rule"] == "head"
    legends = results["overlay_legends"]
    pngs = list((out / "overlays").glob("*.png"))
    assert set(legends) == set(results["overlays"]) and len(pngs) == len(results["overlays"]) > 0
    marked = [line for lines in legends.values() for line in lines if "-> no such object" in line]
    assert marked, legends  # the legends mark the expressions decided to name nothing
    assert any("(right: none there)" in line for line in marked)


def test_shipped_head_decides_no_target_on_fresh_scenes(tmp_path):
    results = run_demo(tmp_path / "g", seed=515151, images=24, generalized=True)
    m, empty = results["with_expression"]["metrics"], results["empty_expression"]["metrics"]
    # The demo's goal is gIoU >= 75 and N-acc >= 85 on 120 fresh scenes; these bounds sit a few
    # points below what the shipped model scores on this seed.
    assert m["no_target"] >= 50, m
    assert m["N-acc"] >= 90.0 and m["T-acc"] >= 95.0, m
    assert m["gIoU"] >= 78.0, m
    assert m["gIoU"] - empty["gIoU"] >= 50.0, empty


def _without_head(model: LAVT) -> LAVT:
    cfg = model.config.to_dict()
    cfg.update(no_target="none", no_target_threshold=0.0)
    classic = LAVT(type(model.config).from_dict(cfg))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("no_target_head.")}
    classic.load_state_dict(state)
    return classic.eval()


def test_the_head_leaves_the_classic_outputs_unchanged(tmp_path):
    loaded = load_model(SHIPPED_MODEL)
    model = loaded.model.eval()
    assert model.config.no_target == "head"
    classic = _without_head(model)
    scenes = load_scenes(generate_scenes(tmp_path / "s", 77, 4), None, model.config.image_size)
    texts = TextCache(model, loaded.tokenizer or default_tokenizer(model))
    a = evaluate_scenes(model, texts, scenes, precision="fp32", keep_predictions=True)
    b = evaluate_scenes(classic, texts, scenes, precision="fp32", keep_predictions=True)
    assert a["metrics"] == b["metrics"] and a["count"] == b["count"] > 0
    assert all((p["pred"] == q["pred"]).all() for p, q in zip(a["predictions"], b["predictions"]))
    feats, mask = texts(["the red circle", "the green star"])
    with torch.no_grad():
        logits, nt = model.segment_expressions(scenes.images[0][None], text_features=feats, text_mask=mask, return_no_target=True)
        assert torch.equal(logits, classic.segment_expressions(scenes.images[0][None], text_features=feats, text_mask=mask))
    assert nt.shape == (2,)


def test_head_only_training_changes_only_the_head(tmp_path, capsys):
    out = tmp_path / "h"
    args = ["demo", "--train", "--generalized", "--quick", "--init", str(SHIPPED_MODEL), "--images", "4", "--out", str(out)]
    assert main(args) == 0
    assert "N-acc" in capsys.readouterr().out
    before, after = load_file(SHIPPED_MODEL / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert {k for k in after if k.startswith("no_target_head.")} == {k for k in before if k.startswith("no_target_head.")}
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("no_target_head."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("no_target_head."))
    assert json.loads((out / "model" / "config.json").read_text())["no_target"] == "head"
    # without --init there is no model whose head to train
    assert main(["demo", "--train", "--generalized", "--quick", "--out", str(tmp_path / "x")]) == 2
    assert "--init MODEL_DIR" in capsys.readouterr().err

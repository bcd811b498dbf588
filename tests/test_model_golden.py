"""The model reproduces the official LAVT outputs (../shared/golden, made from yz93/LAVT-RIS),
on the fast paths and on the plain PyTorch reference path (`lavt.ops` switch off)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lavt
from lavt import ops


@pytest.fixture(autouse=True, params=[True, False], ids=["fast", "plain"])
def fast_paths(request):
    """Every test of this module runs once on each path."""
    with ops.fast_paths(request.param):
        yield request.param


def _load(golden_dir, name):
    d = torch.load(golden_dir / f"{name}.pt", weights_only=True)
    return d


@pytest.mark.parametrize("name", ["lavt_tiny", "lavt_one_tiny"])
def test_logits_features_loss_match_official(golden_dir, name):
    d = _load(golden_dir, name)
    cfg = d["config"]
    if cfg["model"] == "lavt":
        model = lavt.load_official(d["state_dict"], pwam_heads=cfg["num_heads_fusion"])  # bare state_dict
        assert model.text_encoder is None
        kw = dict(text_features=d["l_feats"].transpose(1, 2), text_mask=d["l_mask"])
        args = (d["image"],)
    else:
        model = lavt.load_official({"model": d["state_dict"]}, pwam_heads=cfg["num_heads_fusion"])
        assert model.text_encoder is not None
        kw = {}
        args = (d["image"], d["input_ids"], d["attention_mask"])
    assert model.config.embed_dim == cfg["embed_dim"]
    assert list(model.config.depths) == cfg["depths"]
    assert list(model.config.num_heads) == cfg["num_heads"]
    assert model.config.window_size == cfg["window_size"]
    with torch.no_grad():
        logits = model(*args, **kw)
        feats = model.features(*args, **kw)
    torch.testing.assert_close(logits, d["logits"], atol=5e-5, rtol=0)
    for ours, ref in zip(feats, d["features"]):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=5e-4, rtol=0)
    loss = F.cross_entropy(logits, d["target"], weight=torch.tensor(cfg["ce_weight"]))
    torch.testing.assert_close(loss, d["loss"], atol=1e-5, rtol=0)
    mismatch = (logits.argmax(1) != d["logits"].argmax(1)).float().mean().item()
    assert mismatch < 1e-3
    if cfg["model"] == "lavt_one":
        with torch.no_grad():
            l_feats = model.encode_text(d["input_ids"], d["attention_mask"])
        torch.testing.assert_close(l_feats.transpose(1, 2), d["l_feats"], atol=5e-5, rtol=0)


def test_segment_expressions_equals_separate_forwards(golden_dir):
    d = _load(golden_dir, "lavt_one_tiny")
    model = lavt.load_official({"model": d["state_dict"]}, pwam_heads=d["config"]["num_heads_fusion"])
    image = d["image"][:1]
    with torch.no_grad():
        shared = model.segment_expressions(image, d["input_ids"], d["attention_mask"])
        separate = torch.cat([model(image, d["input_ids"][i : i + 1], d["attention_mask"][i : i + 1]) for i in range(2)])
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=0)


def test_released_checkpoint_dicts_and_round_trip(golden_dir, tmp_path):
    """The released file layouts (`lavt` with bert_model, `lavt_one`) load from disk, and the
    converted folder reproduces the logits."""
    import argparse

    d = _load(golden_dir, "lavt_one_tiny")
    sd = d["state_dict"]
    model_sd = {k: v for k, v in sd.items() if not k.startswith("text_encoder.")}
    bert_sd = {k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")}
    args = argparse.Namespace(mha="1-2-2-4", swin_type="tiny", window12=False)
    released = {"model": model_sd, "bert_model": bert_sd, "optimizer": {}, "epoch": 3, "args": args, "lr_scheduler": {}}
    path = tmp_path / "model_best_refcoco.pth"
    torch.save(released, path)
    model = lavt.load_official(path)  # heads come from args.mha
    assert model.config.pwam_heads == (1, 2, 2, 4)
    with torch.no_grad():
        logits = model(d["image"], d["input_ids"], d["attention_mask"])
    torch.testing.assert_close(logits, d["logits"], atol=5e-5, rtol=0)

    out = model.save_pretrained(tmp_path / "converted")
    again = lavt.LAVT.from_pretrained(out)
    with torch.no_grad():
        logits2 = again(d["image"], d["input_ids"], d["attention_mask"])
    torch.testing.assert_close(logits2, logits, atol=0, rtol=0)

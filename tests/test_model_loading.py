"""Checkpoint key inference, explained load errors, persistence and input validation."""
from __future__ import annotations

import json
from importlib.resources import files

import pytest
import torch

import lavt
from helpers import SHARED, tiny_config
from lavt.errors import LAVTUserError
from lavt.models import LAVT, build_config, load_state_strict, load_swin_pretrained


def _reference_parts():
    path = SHARED / "reference" / "lavt_base_window12_keys.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for line in path.read_text().splitlines()[1:]:
        part, key, shape = line.split("\t")
        dims = [int(s) for s in shape.strip("[]").split(",") if s]
        dtype = torch.long if key.endswith(("relative_position_index", "num_batches_tracked")) else torch.float32
        parts.setdefault(part, {})[key] = torch.zeros(dims, dtype=dtype)
    return parts


@pytest.fixture(scope="module")
def reference_parts():
    return _reference_parts()


def test_released_base_window12_layout_is_recognised(reference_parts):
    model_sd, bert_sd = reference_parts["model"], reference_parts["bert_model"]
    assert len(model_sd) == 451 and len(bert_sd) == 197
    model = lavt.load_official({"model": model_sd, "bert_model": bert_sd, "epoch": 39})
    cfg = model.config
    assert (cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.window_size) == (128, (2, 2, 18, 2), (4, 8, 16, 32), 12)
    assert cfg.text_dim == 768 and cfg.text_encoder["num_hidden_layers"] == 12
    assert cfg.text_encoder["vocab_size"] == 30522 and cfg.text_encoder["num_attention_heads"] == 12
    n_model = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("text_encoder."))
    n_bert = sum(p.numel() for n, p in model.named_parameters() if n.startswith("text_encoder."))
    assert (n_model, n_bert) == (118_847_866, 108_891_648)
    # the lavt_one layout (BERT inside) gives the same model
    assert set(reference_parts["lavt_one"]) == set(model.state_dict())


def test_window7_model_given_window12_weights_explains(reference_parts):
    model = LAVT(build_config("base", window_size=7))
    with pytest.raises(LAVTUserError) as err:
        load_state_strict(model, reference_parts["model"], source="model_best_refcoco.pth")
    msg = str(err.value)
    assert "misshaped" in msg and "relative_position_bias_table" in msg
    assert "window" in msg and "12" in msg and "7" in msg


def test_mismatch_lists_missing_and_unexpected():
    model = LAVT(tiny_config(text_encoder=None))
    state = model.state_dict()
    state.pop("classifier.conv1_1.bias")
    state["backbone.extra.weight"] = torch.zeros(1)
    with pytest.raises(LAVTUserError, match=r"missing \(1\): classifier.conv1_1.bias.*unexpected \(1\): backbone.extra.weight"):
        load_state_strict(model, state)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    with pytest.raises(LAVTUserError, match="could not be read"):
        lavt.load_official(bad)
    with pytest.raises(LAVTUserError, match="does not exist"):
        lavt.load_official(tmp_path / "missing.pth")
    with pytest.raises(LAVTUserError, match="not an official LAVT checkpoint"):
        lavt.load_official({"weights": {}})


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(LAVTUserError, match="weights_only"):
        lavt.load_official(path)


def test_save_and_from_pretrained_round_trip(tmp_path):
    cfg = tiny_config(gate_activation="sigmoid", pwam_norm="layer", pwam_stages=(True, False, True, True))
    torch.manual_seed(1)
    model = LAVT(cfg).eval()
    folder = model.save_pretrained(tmp_path / "m")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == "lavt" and saved["gate_activation"] == "sigmoid"
    again = LAVT.from_pretrained(folder)
    assert again.config == model.config
    image = torch.randn(1, 3, 48, 48)
    ids = torch.tensor([[101, 1996, 2417, 4418, 102, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        torch.testing.assert_close(again(image, ids, mask), model(image, ids, mask), atol=0, rtol=0)


def test_config_json_with_an_extra_key_still_loads(tmp_path):
    """A config.json that carries `"extra": {}` (saved model folders may) loads unchanged,
    while a really unknown key is still refused."""
    torch.manual_seed(2)
    model = LAVT(tiny_config()).eval()
    folder = model.save_pretrained(tmp_path / "old")
    saved = json.loads((folder / "config.json").read_text())
    assert "extra" not in saved
    (folder / "config.json").write_text(json.dumps({**saved, "extra": {}}))
    again = LAVT.from_pretrained(folder)
    assert again.config == model.config
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, atol=0, rtol=0)
    (folder / "config.json").write_text(json.dumps({**saved, "extras": {}}))
    with pytest.raises(LAVTUserError, match=r"config\.json: unknown key 'extras'; did you mean 'extra'\?"):
        LAVT.from_pretrained(folder)


def test_shipped_demo_config_has_no_extra_key():
    saved = json.loads(files("lavt").joinpath("assets/demo_model/config.json").read_text())
    assert "extra" not in saved and saved["model_type"] == "lavt"


def test_from_pretrained_rejects_non_model_folders(tmp_path):
    with pytest.raises(LAVTUserError, match="not a LAVT model folder"):
        LAVT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(LAVTUserError, match="not 'lavt'"):
        LAVT.from_pretrained(tmp_path)


def test_forward_validates_inputs():
    model = LAVT(tiny_config()).eval()
    image = torch.randn(2, 3, 48, 48)
    ids = torch.randint(1, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        assert model(image, ids, mask).shape == (2, 2, 48, 48)
        with pytest.raises(ValueError, match="batch sizes differ"):
            model(image, ids[:1], mask[:1])
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            model(image[0], ids, mask)
        with pytest.raises(ValueError, match="floating-point"):
            model(image.long(), ids, mask)
        with pytest.raises(ValueError, match="integer"):
            model(image, ids.float(), mask)
        with pytest.raises(ValueError, match="attention_mask"):
            model(image, ids, mask[:, :3])
        with pytest.raises(ValueError, match="either"):
            model(image)
        with pytest.raises(ValueError, match="channels"):
            model(image, text_features=torch.randn(2, 6, 7), text_mask=mask)
        with pytest.raises(ValueError, match="text_mask"):
            model(image, text_features=torch.randn(2, 6, 32), text_mask=mask[:, :2])
    bare = LAVT(tiny_config(text_encoder=None))
    with pytest.raises(ValueError, match="no text encoder"):
        bare(image, ids, mask)


def test_swin_initialisation_from_microsoft_checkpoint(tmp_path):
    """A classification-Swin checkpoint (window 7, head, final norm, attn_mask buffers) initialises
    the backbone of a window-4 model: tables resized, the rest reported."""
    src = LAVT(tiny_config(window_size=7, text_encoder=None))
    swin = {
        k[len("backbone.") :]: v
        for k, v in src.state_dict().items()
        if k.startswith("backbone.") and ".fusion." not in k and "res_gate" not in k and not k.startswith("backbone.norm")
    }
    swin["head.weight"] = torch.zeros(10, 64)
    swin["norm.weight"] = torch.ones(64)
    swin["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": swin}, path)
    model = LAVT(tiny_config(text_encoder=None))
    report = load_swin_pretrained(model, path)
    assert any("fusion" in k for k in report["missing"]) and "backbone.norm0.weight" in report["missing"]
    assert not any("blocks" in k and "relative_position_index" not in k and "fusion" not in k for k in report["missing"])
    torch.testing.assert_close(model.backbone.patch_embed.proj.weight, src.backbone.patch_embed.proj.weight)
    table = model.backbone.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (49, 1)  # (2*4-1)^2 rows after resizing from 169
    with pytest.raises(LAVTUserError, match="not a Swin checkpoint"):
        load_swin_pretrained(model, {"model": {"foo": torch.zeros(1)}})


def test_convert_cli(golden_dir, tmp_path, capsys):
    from lavt.cli import main

    d = torch.load(golden_dir / "lavt_one_tiny.pt", weights_only=True)
    src = tmp_path / "official.pth"
    torch.save({"model": d["state_dict"], "epoch": 1}, src)
    out = tmp_path / "converted"
    assert main(["convert", str(src), str(out), "--pwam-heads", "1-2-2-4"]) == 0
    assert "window 7" in capsys.readouterr().out
    assert (out / "vocab.txt").is_file() and (out / "config.json").is_file()
    model = LAVT.from_pretrained(out)
    with torch.no_grad():
        logits = model(d["image"], d["input_ids"], d["attention_mask"])
    torch.testing.assert_close(logits, d["logits"], atol=5e-5, rtol=0)
    assert main(["convert", str(src), str(out)]) == 2  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "x"), "--pwam-heads", "1-2"]) == 2
    assert "--pwam-heads" in capsys.readouterr().err


def test_absolute_position_embedding_option_round_trips():
    """Swin's `ape` (off in LAVT, used by the demo model): official key name, grid read back."""
    torch.manual_seed(0)
    model = LAVT(tiny_config(ape=True, text_encoder=None, pwam_heads=(1, 1, 1, 1))).eval()
    assert tuple(model.state_dict()["backbone.absolute_pos_embed"].shape) == (1, 8, 12, 12)
    again = lavt.load_official(model.state_dict())
    assert again.config.ape and again.config.ape_grid == 12
    image, feats, mask = torch.randn(1, 3, 40, 56), torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(again(image, text_features=feats, text_mask=mask), model(image, text_features=feats, text_mask=mask))
        with_pos = model(image, text_features=feats, text_mask=mask)
        model.backbone.absolute_pos_embed.normal_()
        assert (model(image, text_features=feats, text_mask=mask) - with_pos).abs().max() > 1e-4


def test_half_precision_storage(tmp_path):
    torch.manual_seed(0)
    model = LAVT(tiny_config()).eval()
    full = model.save_pretrained(tmp_path / "f32")
    half = model.save_pretrained(tmp_path / "f16", dtype=torch.float16)
    size32 = (full / "model.safetensors").stat().st_size
    size16 = (half / "model.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    again = LAVT.from_pretrained(half)
    assert all(p.dtype == torch.float32 for p in again.parameters())
    image, ids = torch.randn(1, 3, 48, 48), torch.tensor([[101, 2417, 102]])
    with torch.no_grad():
        a, b = model(image, ids, torch.ones_like(ids)), again(image, ids, torch.ones_like(ids))
    assert (a - b).abs().max() < 1e-2 and (a.argmax(1) != b.argmax(1)).float().mean() < 0.01

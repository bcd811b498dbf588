"""Every ablation switch of the paper (section 4.3) does what it says."""
from __future__ import annotations

import pytest
import torch

from helpers import random_inputs, tiny_config
from lavt.models import LAVT


def _model(**kw):
    """A tiny model with weights drawn at the scale of trained ones (as the golden files do):
    Swin's initialisation makes the gate ~1e-3, which would hide what the switches change."""
    torch.manual_seed(0)
    model = LAVT(tiny_config(text_encoder=None, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
    return model


def _stage_inputs(model, image, l, mask):
    """What each stage's Swin blocks receive (E_{i-1} after patch merging)."""
    seen = []
    hooks = [layer.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].clone())) for layer in model.backbone.layers]
    with torch.no_grad():
        feats = model.features(image, text_features=l, text_mask=mask)
    for h in hooks:
        h.remove()
    return seen, feats


def test_padding_words_are_ignored():
    model = _model()
    image, l, mask = random_inputs()
    l2 = l.clone()
    l2[0, 4:] += 5.0  # padding positions of sample 0
    with torch.no_grad():
        a = model(image, text_features=l, text_mask=mask)
        b = model(image, text_features=l2, text_mask=mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    l3 = l.clone()
    l3[0, :4] += torch.randn(4, l.shape[2])  # real words matter (a constant shift would be normalised away)
    with torch.no_grad():
        c = model(image, text_features=l3, text_mask=mask)
    assert (a[0] - c[0]).abs().max() > 1e-3


def test_language_pathway_off_makes_visual_stream_text_independent():
    image, l, mask = random_inputs()
    other = torch.randn_like(l)
    on = _model()
    off = _model(language_pathway=False)
    off.load_state_dict(on.state_dict(), strict=False)  # the gate has no role without the pathway
    s_on1, _ = _stage_inputs(on, image, l, mask)
    s_on2, _ = _stage_inputs(on, image, other, mask)
    s_off1, f_off1 = _stage_inputs(off, image, l, mask)
    s_off2, f_off2 = _stage_inputs(off, image, other, mask)
    assert (s_on1[1] - s_on2[1]).abs().max() > 1e-3  # the pathway carries language to stage 2
    for a, b in zip(s_off1, s_off2):
        torch.testing.assert_close(a, b)
    assert (f_off1[0] - f_off2[0]).abs().max() > 1e-3  # decoder still reads PWAM features


def test_pwam_stage_switch_removes_fusion_at_that_stage():
    image, l, mask = random_inputs()
    model = _model(pwam_stages=(False, True, True, True))
    assert model.backbone.layers[0].fusion is None and model.backbone.layers[0].res_gate is None
    assert not any(k.startswith("backbone.layers.0.fusion") for k in model.state_dict())
    _, f1 = _stage_inputs(model, image, l, mask)
    _, f2 = _stage_inputs(model, image, torch.randn_like(l), mask)
    torch.testing.assert_close(f1[0], f2[0])  # stage-1 feature is purely visual now
    assert (f1[1] - f2[1]).abs().max() > 1e-3


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "none"])
def test_gate_activation(act):
    model = _model(gate_activation=act)
    image, l, mask = random_inputs()
    layer = model.backbone.layers[0]
    got = {}
    layer.fusion.register_forward_hook(lambda m, a, out: got.__setitem__("f", out))
    layer.downsample.register_forward_pre_hook(lambda m, a: got.__setitem__("e", a[0]))
    layer.blocks[-1].register_forward_hook(lambda m, a, out: got.__setitem__("v", out))
    with torch.no_grad():
        model.features(image, text_features=l, text_mask=mask)
    v, f, e = got["v"], got["f"], got["e"]
    if act == "none":
        assert layer.res_gate is None
        torch.testing.assert_close(e, v + f)
    else:
        assert isinstance(layer.res_gate[3], torch.nn.Tanh if act == "tanh" else torch.nn.Sigmoid)
        s = layer.res_gate(f)
        torch.testing.assert_close(e, v + s * f)
        if act == "sigmoid":
            assert s.min() > 0
        else:
            assert s.min() < 0


@pytest.mark.parametrize("norm", ["instance", "layer", "none"])
def test_pwam_norm(norm):
    model = _model(pwam_norm=norm)
    image, l, mask = random_inputs()
    got = {}
    model.backbone.layers[0].fusion.image_lang_att.f_query.register_forward_hook(lambda m, a, out: got.__setitem__("q", out))
    with torch.no_grad():
        model.features(image, text_features=l, text_mask=mask)
    q = got["q"]  # (B, HW, C)
    if norm == "layer":  # undo the LayerNorm's affine part to see the normalisation itself
        ln = model.backbone.layers[0].fusion.image_lang_att.f_query[1].ln
        q = (q - ln.bias) / ln.weight
    over_pixels = q.mean(1).abs().max().item()
    over_channels = q.mean(2).abs().max().item()
    if norm == "instance":
        assert over_pixels < 1e-4 and over_channels > 1e-3
    elif norm == "layer":
        assert over_channels < 1e-4 and over_pixels > 1e-3
    else:
        assert over_pixels > 1e-3 and over_channels > 1e-3


def test_decoder_features_gated_reads_E():
    image, l, mask = random_inputs()
    f_model = _model()
    e_model = _model(decoder_features="gated")
    e_model.load_state_dict(f_model.state_dict())
    got = {}
    layer = e_model.backbone.layers[0]
    layer.downsample.register_forward_pre_hook(lambda m, a: got.__setitem__("e", a[0]))
    with torch.no_grad():
        fe = e_model.features(image, text_features=l, text_mask=mask)
        ff = f_model.features(image, text_features=l, text_mask=mask)
    e = e_model.backbone.norm0(got["e"]).transpose(1, 2).reshape(fe[0].shape)
    torch.testing.assert_close(fe[0], e)
    assert (fe[0] - ff[0]).abs().max() > 1e-3


def test_cross_attention_fusion_alternative():
    model = _model(fusion="cross_attention")
    from lavt.models.fusion import CrossAttentionFusion

    assert all(isinstance(layer.fusion, CrossAttentionFusion) for layer in model.backbone.layers)
    image, l, mask = random_inputs()
    l2 = l.clone()
    l2[0, 4:] += 5.0
    with torch.no_grad():
        a = model(image, text_features=l, text_mask=mask)
        b = model(image, text_features=l2, text_mask=mask)
        c = model(image, text_features=torch.randn_like(l), text_mask=mask)
    assert a.shape == (2, 2, 40, 56)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # padding ignored
    assert (a - c).abs().max() > 1e-4


def test_pwam_heads_change_the_attention():
    image, l, mask = random_inputs()
    one = _model(pwam_heads=(1, 1, 1, 1))
    many = _model(pwam_heads=(2, 2, 4, 4))
    many.load_state_dict(one.state_dict())  # same weights, only the head split differs
    with torch.no_grad():
        a = one(image, text_features=l, text_mask=mask)
        b = many(image, text_features=l, text_mask=mask)
    assert (a - b).abs().max() > 1e-4


def test_invalid_switch_values_are_explained():
    from lavt.errors import LAVTUserError

    with pytest.raises(LAVTUserError, match="gate_activation"):
        tiny_config(gate_activation="relu")
    with pytest.raises(LAVTUserError, match="pwam_norm"):
        tiny_config(pwam_norm="batch")
    with pytest.raises(LAVTUserError, match="pwam_heads"):
        tiny_config(pwam_heads=(3, 1, 1, 1))

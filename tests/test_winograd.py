"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions: the values and gradients of F.conv2d,
every map shape; the decoder with Winograd against its plain path (fast paths off)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lavt import ops
from lavt.models.decoder import SimpleDecoding
from lavt.ops import winograd


def _grads(fn, x, w, g):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = fn(x, w)
    dx, dw = torch.autograd.grad(y, (x, w), g)
    return y.detach(), dx, dw


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 2e-6) -> None:
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= rel * scale + 1e-7, ((a - b).abs().max().item(), scale)


@pytest.mark.parametrize(
    "shape",
    [(2, 5, 7, 6, 8), (1, 3, 4, 7, 5), (2, 16, 8, 9, 2), (3, 8, 6, 2, 3), (1, 4, 3, 11, 13), (2, 3, 4, 41, 37)],
    ids=lambda s: "x".join(map(str, s)),
)
@pytest.mark.parametrize("band_bytes", [1, 16 << 20], ids=["smallest-bands", "one-band"])
@pytest.mark.parametrize("m", [2, 4], ids=["F2", "F4"])
def test_matches_conv2d_values_and_gradients(shape, band_bytes, m):
    b, c, o, h, w = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(b, c, h, w, generator=gen)
    wt = torch.randn(o, c, 3, 3, generator=gen)
    g = torch.randn(b, o, h, w, generator=gen)
    ref = _grads(lambda a, k: F.conv2d(a, k, padding=1), x, wt, g)
    for inp, grad in ((x, g), (x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last))):
        got = _grads(lambda a, k: winograd.winograd_conv3x3(a, k, m, band_bytes), inp, wt, grad)
        assert got[0].shape == ref[0].shape
        for a, r in zip(got, ref):
            _close(a, r, rel=2e-6 if m == 2 else 2e-5)  # F(4x4)'s transforms scale by up to 8 and 1/6


def test_small_bands_really_split_the_map():
    """The smallest bands cut the 41x37 map of the test above into several bands, so the
    band seams (the backward's carried rows) are what that test checks."""
    x, w = torch.empty(2, 3, 41, 37), torch.empty(4, 3, 3, 3)
    for m in (2, 4):
        _, th, _, band = winograd._geometry(x, w, m, 1)
        assert band < th


def test_dispatch_rule():
    """Winograd for float32 convolutions of >= MIN_CHANNELS channels; F.conv2d (bitwise) else,
    and everywhere with the fast paths off."""
    n = winograd.MIN_CHANNELS
    x = torch.randn(1, n, 4, 4)
    w = torch.randn(n, n, 3, 3) * 0.05
    assert ops.conv3x3_applies(x, w)
    assert ops.conv3x3(x, w).is_contiguous(memory_format=torch.channels_last)
    small = torch.randn(1, n - 1, 4, 4), torch.randn(n, n - 1, 3, 3)
    assert not ops.conv3x3_applies(*small)
    assert torch.equal(ops.conv3x3(*small), F.conv2d(*small, padding=1))
    assert not ops.conv3x3_applies(x[..., :1, :], w)  # a single row: no 2x2 tile
    xd, wd = x.double(), w.double()
    assert not ops.conv3x3_applies(xd, wd)
    assert torch.equal(ops.conv3x3(xd, wd), F.conv2d(xd, wd, padding=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ops.conv3x3_applies(x, w)
        assert torch.equal(ops.conv3x3(x, w), F.conv2d(x, w, padding=1))
    with ops.fast_paths(False):
        assert not ops.conv3x3_applies(x, w)
        assert torch.equal(ops.conv3x3(x, w), F.conv2d(x, w, padding=1))


@pytest.mark.parametrize("m", [2, 4])
def test_filter_transform_adjoint_is_its_gradient(m):
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    du = torch.randn((m + 2) ** 2, 2, 3, dtype=torch.float64)
    (auto,) = torch.autograd.grad(winograd.filter_transform(w, m), w, du)
    assert torch.allclose(winograd.filter_transform_adjoint(du.transpose(1, 2), m), auto)


def test_float64_agrees_to_float64_rounding():
    """The transform matrices are right (not merely close): in float64 both tile sizes match
    F.conv2d to ~1e-13, so the float32 tolerance above is rounding, not a wrong coefficient."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 6, 9, 10, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 6, 3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(1, 5, 9, 10, generator=gen, dtype=torch.float64)
    ref = _grads(lambda a, k: F.conv2d(a, k, padding=1), x, w, g)
    for m in (2, 4):
        for a, r in zip(_grads(lambda a, k: winograd.winograd_conv3x3(a, k, m), x, w, g), ref):  # noqa: B023
            assert (a - r).abs().max().item() <= 1e-12 * r.abs().max().item()


def test_unknown_tile_size_is_refused():
    with pytest.raises(ValueError, match="tile size"):
        winograd.winograd_conv3x3(torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3), 3)


TILES = pytest.mark.parametrize("f4_min_side", [2, 10**6], ids=["F4", "F2"])


def test_tile_size_rule(monkeypatch):
    """F(4x4) on the paper's 1/4 and 1/8 maps (120, 60 at 480x480), F(2x2) on its 1/16 (30)."""
    assert [winograd.tile_size(torch.empty(1, 1, s, s)) for s in (120, 60, 30)] == [4, 4, 2]
    assert winograd.tile_size(torch.empty(1, 1, 120, 40)) == 2  # the shorter side decides


def _winograd_tiles_run(fn):
    """fn()'s result and the tile sizes of the Winograd convolutions it ran, in order of size."""
    before = ops.winograd_calls()
    out = fn()
    after = ops.winograd_calls()
    return out, sorted(m for m in after for _ in range(after[m] - before[m]))


@TILES
def test_decoder_training_step_matches_direct_convolutions(f4_min_side, monkeypatch):
    """Train mode, autograd: Winograd convolutions (fast paths) = the plain decoder (F.conv2d
    modules, BatchNorm, ReLU), values and the gradients of the inputs and every parameter."""
    monkeypatch.setattr(winograd, "F4_MIN_SIDE", f4_min_side)
    torch.manual_seed(0)
    hidden = winograd.MIN_CHANNELS
    dec = SimpleDecoding((8, 16, 32, 32), hidden=hidden).train()
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2), (32, 2))]
    g = torch.randn(2, 2, 8, 8)

    def run():
        dec.zero_grad()
        inputs = [f.clone().requires_grad_() for f in feats]
        out = dec(inputs)
        out.backward(g)
        return [out.detach()] + [i.grad for i in inputs] + [p.grad.clone() for p in dec.parameters()]

    fast, calls = _winograd_tiles_run(run)
    # all but conv1_4, whose 64 input channels are too few, with the tile size the test asks for
    assert calls == [4 if f4_min_side == 2 else 2] * 5
    with ops.fast_paths(False):
        slow, calls = _winograd_tiles_run(run)
    assert calls == []
    for a, r in zip(fast, slow):
        _close(a, r, rel=1e-5)


@TILES
def test_decoder_inference_matches_direct_convolutions(f4_min_side, monkeypatch):
    """Eval mode under inference_mode: folded BatchNorm + Winograd (fast paths) = the plain
    decoder's F.conv2d, BatchNorm with running statistics and ReLU."""
    monkeypatch.setattr(winograd, "F4_MIN_SIDE", f4_min_side)
    torch.manual_seed(1)
    hidden = winograd.MIN_CHANNELS
    dec = SimpleDecoding((8, 16, 32, 32), hidden=hidden)
    for m in dec.modules():  # non-trivial running statistics, so the folding matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    dec.eval()
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 10), (16, 5), (32, 3), (32, 2))]
    with torch.inference_mode():
        fast, calls = _winograd_tiles_run(lambda: dec(feats))
        assert calls == [4 if f4_min_side == 2 else 2] * 5
        with ops.fast_paths(False):
            slow, calls = _winograd_tiles_run(lambda: dec(feats))
        assert calls == []
    _close(fast, slow, rel=1e-5)

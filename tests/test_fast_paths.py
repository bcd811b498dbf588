"""The fast paths compute what the plain ones do.

Guards the speed and memory kernels in `lavt.ops` (shifted_windows.py, lean.py,
cache.py): inference caches are rebuilt when weights change and never used in training, the
memory-lean autograd functions give the exact gradients, batched and shared-stem forwards
equal separate ones, and bfloat16 autocast stays close to float32. The switch itself and
whole-model fast vs plain comparisons are in test_ops_switch.py.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

import lavt
from helpers import count_caches, grad_fn_names, random_inputs, randomise, tiny_config
from lavt import ops
from lavt.models import LAVT
from lavt.models.fusion import PixelWordAttention
from lavt.models.swin import SwinBlock, shift_mask, window_partition, window_reverse
from lavt.ops import LayerNormLinear, LayerNormMlp, WindowAttentionFunction, shifted_windows, window_layout


def _model(**kw) -> LAVT:
    return randomise(LAVT(tiny_config(text_encoder=None, **kw))).eval()


def _fresh_copy(model: LAVT) -> LAVT:
    """A new model with the same weights and no caches."""
    other = LAVT(model.config).eval()
    other.load_state_dict(model.state_dict())
    return other


# ------------------------------------------------------------------ inference caches
@pytest.mark.parametrize("autocast", [False, True])
def test_caches_follow_weight_updates(autocast):
    """Cached masks (relative position bias), folded BatchNorms and bf16 weight copies are
    rebuilt after in-place weight changes: the result equals a fresh model's."""
    model = _model()
    image, l, mask = random_inputs()
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    def run(m):
        with torch.inference_mode(), ctx():
            return m(image, text_features=l, text_mask=mask).float()

    first = run(model)
    assert count_caches(model) > 0
    torch.testing.assert_close(run(model), first, atol=0, rtol=0)  # cache hit: identical
    with torch.no_grad():
        model.backbone.layers[1].blocks[1].attn.relative_position_bias_table.mul_(-1.5)
        model.classifier.bn1_2.running_var.mul_(3.0)
        model.classifier.conv2_3.weight.add_(0.05)
        model.backbone.layers[3].blocks[0].mlp.fc1.weight.mul_(0.5)
    updated = run(model)
    assert (updated - first).abs().max() > 1e-2
    torch.testing.assert_close(updated, run(_fresh_copy(model)), atol=0, rtol=0)


def test_load_state_dict_invalidates_caches():
    model, other = _model(), randomise(LAVT(tiny_config(text_encoder=None)), seed=1).eval()
    image, l, mask = random_inputs()
    with torch.inference_mode():
        model(image, text_features=l, text_mask=mask)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(
            model(image, text_features=l, text_mask=mask), other(image, text_features=l, text_mask=mask), atol=0, rtol=0
        )


def test_no_caches_in_training_or_with_autograd():
    model = _model()
    image, l, mask = random_inputs()
    with torch.inference_mode():
        model(image, text_features=l, text_mask=mask)
    assert count_caches(model) > 0
    model.train()
    assert count_caches(model) == 0  # train() drops them
    model(image, text_features=l, text_mask=mask).sum().backward()
    assert count_caches(model) == 0
    model.eval()
    model(image, text_features=l, text_mask=mask)  # eval, autograd on: nothing cached either
    assert count_caches(model) == 0


def test_eval_fast_path_equals_train_path_without_randomness():
    """Eval (folded BatchNorm, cached masks) and the autograd path agree when BatchNorm uses its
    running statistics and no dropout/drop-path is drawn."""
    model = _model(drop_path_rate=0.0)
    image, l, mask = random_inputs()
    with torch.inference_mode():
        fast = model(image, text_features=l, text_mask=mask)
    slow = model(image, text_features=l, text_mask=mask)  # eval mode, autograd recording
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=2e-5, rtol=0)


# ------------------------------------------------------------------ batching and stem sharing
def test_batched_forward_equals_separate_forwards():
    """Shifted windows run one fused-attention call per image when batched: same results."""
    model = _model()
    image, l, mask = random_inputs(b=3)
    with torch.inference_mode():
        together = model(image, text_features=l, text_mask=mask)
        apart = torch.cat([model(image[i : i + 1], text_features=l[i : i + 1], text_mask=mask[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, apart, atol=2e-5, rtol=0)


@pytest.mark.parametrize("autocast", [False, True])
def test_segment_expressions_equals_separate_forwards(autocast):
    model = _model()
    image, l, mask = random_inputs(b=3)
    image = image[:1]
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    with torch.inference_mode(), ctx():
        shared = model.segment_expressions(image, text_features=l, text_mask=mask)
        apart = torch.cat([model(image, text_features=l[i : i + 1], text_mask=mask[i : i + 1]) for i in range(3)])
    # bf16: same operations per expression, but GEMM blocking may differ with the batch size
    torch.testing.assert_close(shared, apart, atol=5e-2 if autocast else 2e-5, rtol=0)


# ------------------------------------------------------------------ exact gradients
@pytest.mark.parametrize("chunk_bytes", [shifted_windows.BACKWARD_CHUNK_BYTES, 1])
@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_function_gradients(shift, chunk_bytes):
    """The fused-forward / recomputing-backward window attention (tokens -> windows ->
    attention -> tokens), in float64, against numerical derivatives: padded map, two images,
    gradients of the tokens, the qkv bias (padding tokens) and the position bias; the backward
    in one piece and one window at a time."""
    g = torch.Generator().manual_seed(0)
    heads, d, h, w = 2, 3, 5, 6
    layout = window_layout(h, w, 4, shift, torch.device("cpu"))
    qkv = torch.randn(2, h * w, 3 * heads * d, generator=g, dtype=torch.float64, requires_grad=True)
    qkv_bias = torch.randn(3 * heads * d, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(heads, 16, 16, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda a, qb, b: WindowAttentionFunction.apply(a, qb, b, layout, heads, 0.5, chunk_bytes)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (qkv, qkv_bias, bias))


def test_lean_layer_norm_functions_gradients():
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    x, lw, lb, w1, b1, w2, b2 = t(2, 5, 4), t(4), t(4), t(8, 4), t(8), t(4, 8), t(4)
    assert torch.autograd.gradcheck(lambda *a: LayerNormMlp.apply(a[0], a[1], a[2], 1e-5, *a[3:]), (x, lw, lb, w1, b1, w2, b2))
    assert torch.autograd.gradcheck(lambda *a: LayerNormLinear.apply(a[0], a[1], a[2], 1e-5, *a[3:]), (x, lw, lb, w1, b1))


def _reference_block(blk: SwinBlock, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The official Swin-seg block, written out with plain autograd ops (projection inside
    the windows, matmul-softmax attention, as in the official code)."""
    b, _, c = x.shape
    ws, shift, attn = blk.window, blk.shift, blk.attn
    y = blk.norm1(x).view(b, h, w, c)
    pad_b, pad_r = (-h) % ws, (-w) % ws
    y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = h + pad_b, w + pad_r
    if shift:
        y = torch.roll(y, (-shift, -shift), (1, 2))
    win = window_partition(y, ws)  # b, nW, N, C
    nw, n = win.shape[1], win.shape[2]
    qkv = attn.qkv(win).view(b, nw, n, 3, attn.num_heads, c // attn.num_heads).permute(3, 0, 1, 4, 2, 5)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1) + attn.position_bias()
    if shift:
        scores = scores + shift_mask(hp, wp, ws, shift, x.device)[None, :, None]
    out = (scores.softmax(-1) @ v).transpose(2, 3).reshape(b, nw, n, c)
    y = window_reverse(attn.proj(out), ws, hp, wp)
    if shift:
        y = torch.roll(y, (shift, shift), (1, 2))
    x = x + y[:, :h, :w].reshape(b, h * w, c)
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_gradients_match_plain_autograd(shift):
    """The training path (lean LayerNorm/MLP functions, gathered windows, fused attention with
    recomputing backward) against the official computation with plain autograd: values and
    the gradients of the input and of every parameter, on a padded map, batch 2; the block's
    plain path (the switch off) against the same written-out reference."""
    torch.manual_seed(0)
    blk = randomise(SwinBlock(16, 2, 4, shift)).train()
    h, w = 6, 7
    x = torch.randn(2, h * w, 16, requires_grad=True)
    ref = _reference_block(blk, x, h, w)
    gout = torch.randn_like(ref)
    params = [x] + list(blk.parameters())
    names = ["x"] + [n for n, _ in blk.named_parameters()]
    refs = torch.autograd.grad(ref, params, gout)
    for fast in (True, False):
        with ops.fast_paths(fast):
            out = blk(x, (h, w))
        grad_fns = grad_fn_names(out)
        assert any("WindowAttentionFunction" in n for n in grad_fns) == fast
        assert any("LayerNormMlp" in n for n in grad_fns) == fast
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        grads = torch.autograd.grad(out, params, gout)
        for name, a, r in zip(names, grads, refs):
            torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-4, msg=lambda m: f"fast={fast} {name}: {m}")  # noqa: B023 (called at once)


def test_fallback_without_the_private_cpu_kernel(monkeypatch):
    """A torch without `_scaled_dot_product_flash_attention_for_cpu`: the fast block falls back
    to the public SDPA (training and inference) and still computes the plain block's values
    and gradients."""
    monkeypatch.setattr(shifted_windows, "_CPU_FLASH", None)
    torch.manual_seed(0)
    blk = randomise(SwinBlock(16, 2, 4, 2)).train()
    h, w = 6, 7
    x = torch.randn(2, h * w, 16, requires_grad=True)
    params = [x] + list(blk.parameters())
    results = []
    for fast in (True, False):
        with ops.fast_paths(fast):
            out = blk(x, (h, w))
            with torch.no_grad():
                inference = blk.eval()(x, (h, w))
            blk.train()
        assert "WindowAttentionFunctionBackward" not in grad_fn_names(out)
        results.append([out, inference, *torch.autograd.grad(out.square().sum(), params)])
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-4)


def test_activation_checkpointing_same_gradients():
    image, l, mask = random_inputs()
    grads = []
    for ckpt in (False, True):
        model = _model(use_checkpoint=ckpt, drop_path_rate=0.0)
        model.eval()  # BatchNorm running statistics: deterministic
        model(image, text_features=l, text_mask=mask).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")  # noqa: B023 (called at once)


def test_bf16_autocast_training_step():
    """A bf16 autocast step gives float32 gradients close to the float32 step's."""
    image, l, mask = random_inputs()
    grads = {}
    for prec in ("fp32", "bf16"):
        model = _model(drop_path_rate=0.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            out = model(image, text_features=l, text_mask=mask)
        assert out.dtype == torch.float32
        out.square().mean().backward()
        grads[prec] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert grads["bf16"].dtype == torch.float32 and torch.isfinite(grads["bf16"]).all()
    cos = F.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cos > 0.99


# ------------------------------------------------------------------ bf16 accuracy on the golden model
@pytest.mark.parametrize("name", ["lavt_tiny", "lavt_one_tiny"])
def test_bf16_autocast_close_to_official(golden_dir, name):
    """Issue 6's criterion: mean |bf16 - fp32| at most 5% of the logits' standard deviation."""
    d = torch.load(golden_dir / f"{name}.pt", weights_only=True)
    cfg = d["config"]
    if cfg["model"] == "lavt":
        model = lavt.load_official(d["state_dict"], pwam_heads=cfg["num_heads_fusion"])
        args, kw = (d["image"],), dict(text_features=d["l_feats"].transpose(1, 2), text_mask=d["l_mask"])
    else:
        model = lavt.load_official({"model": d["state_dict"]}, pwam_heads=cfg["num_heads_fusion"])
        args, kw = (d["image"], d["input_ids"], d["attention_mask"]), {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(*args, **kw)
    assert logits.dtype == torch.float32
    ref = d["logits"]
    assert (logits - ref).abs().mean() <= 0.05 * ref.std()
    assert (logits.argmax(1) != ref.argmax(1)).float().mean() < 0.05


def test_deepcopy_keeps_working():
    model = _model()
    image, l, mask = random_inputs()
    with torch.inference_mode():
        a = model(image, text_features=l, text_mask=mask)
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin.backbone.layers[1].blocks[1].attn.relative_position_bias_table.zero_()
        b = twin(image, text_features=l, text_mask=mask)
        torch.testing.assert_close(model(image, text_features=l, text_mask=mask), a, atol=0, rtol=0)
        torch.testing.assert_close(b, _fresh_copy(twin)(image, text_features=l, text_mask=mask), atol=0, rtol=0)


def test_pwam_reduced_precision_path_is_the_same_function():
    """The bf16 path of PixelWordAttention (float32 attention, W on the pixel-centred output)
    computes the same function: run in float32 it equals the plain path."""
    torch.manual_seed(0)
    att = randomise(PixelWordAttention(16, 12, 16, 16, heads=2, norm="instance"))
    x, l = torch.randn(2, 30, 16) * 2 + 1, torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(att._forward_reduced_precision(x, l, mask), att(x, l, mask), atol=2e-5, rtol=0)

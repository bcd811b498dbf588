"""The fast-path switch (`lavt.ops`): its state, the environment variable, and that the whole
model computes the same on both paths (float32 and float64 values and gradients, bf16 autocast),
with the fast kernels really running on one path and never on the other."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from helpers import REPO, count_caches, grad_fn_names, random_inputs, randomise, tiny_config
from lavt import ops
from lavt.errors import LAVTUserError
from lavt.models import LAVT

# Autograd nodes of the custom Functions of lavt.ops: present on the fast path only.
FAST_NODES = ("WindowAttentionFunctionBackward", "LayerNormLinearBackward", "LayerNormMlpBackward", "_Winograd3x3Backward")


def _model(dtype: torch.dtype = torch.float32, seed: int = 0) -> LAVT:
    """The tiny LAVT (every stage padded and shifted at 40x56) with a 256-channel decoder, so
    that the decoder's Winograd path applies."""
    cfg = tiny_config(text_encoder=None, decoder_hidden=ops.winograd.MIN_CHANNELS, drop_path_rate=0.0)
    return randomise(LAVT(cfg), seed=seed).to(dtype).eval()


def _cast_inputs(dtype: torch.dtype):
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in random_inputs())


def _winograd_count() -> int:
    return sum(ops.winograd_calls().values())


# ------------------------------------------------------------------ the switch
def test_context_manager_restores_the_state():
    start = ops.fast_paths_enabled()
    with ops.fast_paths(False):
        assert ops.fast_paths_enabled() is False
        with ops.fast_paths(True):
            assert ops.fast_paths_enabled() is True
        assert ops.fast_paths_enabled() is False
    assert ops.fast_paths_enabled() is start
    with pytest.raises(RuntimeError, match="inside"):
        with ops.fast_paths(not start):
            assert ops.fast_paths_enabled() is (not start)
            raise RuntimeError("inside")
    assert ops.fast_paths_enabled() is start

    @ops.fast_paths(False)
    def plain() -> bool:
        return ops.fast_paths_enabled()

    assert plain() is False and ops.fast_paths_enabled() is start


def test_set_fast_paths():
    start = ops.fast_paths_enabled()
    try:
        ops.set_fast_paths(False)
        assert ops.fast_paths_enabled() is False
        ops.set_fast_paths(True)
        assert ops.fast_paths_enabled() is True
    finally:
        ops.set_fast_paths(start)
    for bad in ("0", 0, None):
        with pytest.raises(LAVTUserError, match="True or False"):
            ops.set_fast_paths(bad)  # type: ignore[arg-type]
    assert ops.fast_paths_enabled() is start


def _run_python(code: str, value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ops.ENV_VAR}
    if value is not None:
        env[ops.ENV_VAR] = value
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), str(REPO / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("value, expected", [(None, True), ("1", True), ("", True)])  # "0": below
def test_environment_variable_sets_the_start_state(value, expected):
    result = _run_python("from lavt import ops; print(ops.fast_paths_enabled())", value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(expected)


def test_environment_variable_zero_runs_the_plain_path(tmp_path):
    """LAVT_FAST_PATHS=0: no cache, no Winograd convolution, no custom autograd node; the
    logits are the plain path's of this process."""
    out = tmp_path / "logits.pt"
    code = f"""
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        from lavt import ops
        from tests.test_ops_switch import FAST_NODES, _cast_inputs, count_caches, _model, _winograd_count
        from tests.test_fast_paths import grad_fn_names
        assert ops.fast_paths_enabled() is False
        model = _model()
        image, l, mask = _cast_inputs(torch.float32)
        with torch.inference_mode():
            logits = model(image, text_features=l, text_mask=mask)
        assert count_caches(model) == 0 and _winograd_count() == 0
        model.train()
        names = grad_fn_names(model(image, text_features=l, text_mask=mask))
        assert not names & set(FAST_NODES), names & set(FAST_NODES)
        assert _winograd_count() == 0
        torch.save(logits, {str(out)!r})
        """
    result = _run_python(code, "0")
    assert result.returncode == 0, result.stderr
    model = _model()
    image, l, mask = _cast_inputs(torch.float32)
    with torch.inference_mode(), ops.fast_paths(False):
        plain = model(image, text_features=l, text_mask=mask)
    torch.testing.assert_close(torch.load(out, weights_only=True), plain, atol=1e-6, rtol=0)


def test_bad_environment_value_is_a_clear_error():
    """Importing works (so the CLI can report it in one line); the first use says what is wrong."""
    code = """
        import torch
        from lavt import ops
        from lavt.errors import LAVTUserError
        from tests.test_ops_switch import _cast_inputs, _model
        try:
            ops.fast_paths_enabled()
        except LAVTUserError as exc:
            print(exc)
        model = _model()
        image, l, mask = _cast_inputs(torch.float32)
        try:
            model(image, text_features=l, text_mask=mask)
        except LAVTUserError:
            print("forward refused")
        ops.set_fast_paths(True)  # an explicit setting replaces the bad value
        model(image, text_features=l, text_mask=mask)
        print("explicit", ops.fast_paths_enabled())
        """
    result = _run_python(code, "yes")
    assert result.returncode == 0, result.stderr
    message, refused, explicit = result.stdout.strip().splitlines()
    assert "LAVT_FAST_PATHS='yes'" in message
    assert "LAVT_FAST_PATHS=1" in message and "LAVT_FAST_PATHS=0" in message
    assert refused == "forward refused"
    assert explicit == "explicit True"


# ------------------------------------------------------------------ fast = plain, whole model
def _run(model: LAVT, fast: bool, inputs, train: bool, bf16: bool = False):
    """Logits and, when train, the gradients of every parameter and the autograd node names;
    the number of Winograd convolutions that ran. `bf16`: the forward under bf16 autocast."""
    image, l, mask = inputs
    model.zero_grad()
    before = _winograd_count()
    with ops.fast_paths(fast):
        if not train:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(image, text_features=l, text_mask=mask), None, None, _winograd_count() - before
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(image, text_features=l, text_mask=mask)
        names = grad_fn_names(out)
        out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, names, _winograd_count() - before


def _close_to_scale(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= rel * scale, ((a - b).abs().max().item(), scale)


def test_fast_equals_plain_inference_float32():
    model = _model()
    inputs = _cast_inputs(torch.float32)
    fast, _, _, wino_fast = _run(model, True, inputs, train=False)
    assert count_caches(model) > 0
    assert wino_fast == 5  # every decoder 3x3 convolution but conv1_4 (96 input channels)
    fresh = _model()
    plain, _, _, wino_plain = _run(fresh, False, inputs, train=False)
    assert count_caches(fresh) == 0 and wino_plain == 0
    _close_to_scale(fast, plain, 1e-5)
    # eval mode with autograd recording: the fast kernels of training, BatchNorm's running stats
    image, l, mask = inputs
    with ops.fast_paths(True):
        recorded = model(image, text_features=l, text_mask=mask)
    assert "WindowAttentionFunctionBackward" in grad_fn_names(recorded)
    _close_to_scale(recorded.detach(), plain, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_fast_equals_plain_training(dtype):
    """Train mode (batch statistics; drop path off): logits and the gradients of every
    parameter. Float64 shows the two paths are the same function (to ~1e-14; no Winograd
    there); float32 that the fast kernels' rounding stays at float32 level."""
    model = _model(dtype).train()
    inputs = _cast_inputs(dtype)
    fast, g_fast, names_fast, wino_fast = _run(model, True, inputs, train=True)
    plain, g_plain, names_plain, wino_plain = _run(model, False, inputs, train=True)
    assert set(FAST_NODES[:3]) <= names_fast and not names_plain & set(FAST_NODES)
    assert wino_plain == 0 and wino_fast == (5 if dtype == torch.float32 else 0)
    unused = {n for n, _ in model.named_parameters()} - g_plain.keys()
    assert g_fast.keys() == g_plain.keys() and all(".layers.3.res_gate." in n for n in unused)  # gate nobody reads
    exact = dtype == torch.float64
    _close_to_scale(fast, plain, 1e-12 if exact else 1e-5)
    # Relative to each gradient's scale, and to the largest gradient for parameters whose
    # gradient is analytically zero (biases before an instance norm: rounding noise only).
    top = max(g.abs().max().item() for g in g_plain.values())
    rel, floor = (1e-10, 1e-12) if exact else (1e-4, 1e-5)
    for name, a in g_fast.items():
        err, own = (a - g_plain[name]).abs().max().item(), g_plain[name].abs().max().item()
        assert err <= rel * own + floor * top, (name, err, own, top)


def test_fast_close_to_plain_bf16_autocast():
    """bf16 autocast: fast and plain within the bf16 criterion of each other and of float32
    (mean |difference| at most 5% of the logits' standard deviation, argmax almost equal);
    the gradients point the same way."""
    model = _model()
    inputs = _cast_inputs(torch.float32)
    ref, _, _, _ = _run(model, True, inputs, train=False)
    fast, _, _, _ = _run(model, True, inputs, train=False, bf16=True)
    plain, _, _, _ = _run(model, False, inputs, train=False, bf16=True)
    std = ref.std()
    for a, b in ((fast, plain), (fast, ref), (plain, ref)):
        assert a.dtype == torch.float32
        assert (a - b).abs().mean() <= 0.05 * std
        assert (a.argmax(1) != b.argmax(1)).float().mean() < 0.05
    # gradients with BatchNorm's running statistics (batch statistics of a batch of 2 make
    # bf16 gradients noisy on either path)
    _, g32, _, _ = _run(model, True, inputs, train=True)
    grads = [torch.cat([t.flatten() for t in g32.values()])]
    for fast_path in (True, False):
        _, g, _, _ = _run(model, fast_path, inputs, train=True, bf16=True)
        grads.append(torch.cat([t.flatten() for t in g.values()]))
    assert torch.isfinite(grads[1]).all()
    for a, b in ((1, 2), (1, 0), (2, 0)):
        assert F.cosine_similarity(grads[a], grads[b], dim=0) > 0.99

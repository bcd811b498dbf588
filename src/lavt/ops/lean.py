"""Memory-lean autograd for the Swin block's LayerNorm -> Linear (-> GELU -> Linear) chains.

Plain autograd keeps, per block, the LayerNorm input *and* output, the first linear's output
*and* the GELU output. `LayerNormLinear` and `LayerNormMlp` keep only the LayerNorm input
(with its two statistics) and the first linear's output, and recompute the LayerNorm output
and the GELU in the backward pass: elementwise work only, no matmul is repeated. Gradients
are those of the plain chain.

`norm_linear` / `norm_mlp` take them while autograd records (training); otherwise the plain
modules. Under autocast the matmuls run in the autocast dtype exactly as autocast would run
them (inputs and weights cast, float32 LayerNorm on the float32 residual stream).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavt.ops.cache import autocast_dtype

_ln = torch.ops.aten.native_layer_norm
_ln_backward = torch.ops.aten.native_layer_norm_backward


def _cast(t: torch.Tensor | None, dt: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dt)


def _linear_grads(ctx, dout2: torch.Tensor, inp2: torch.Tensor, w: torch.Tensor, iw: int, ib: int):
    """(grad weight, grad bias) of F.linear for flattened (T, out) / (T, in), in the
    parameters' dtype; None where the parameter needs none. The bias sums over all tokens in
    at least float32 (bf16 gradients would lose it)."""
    gw = (dout2.t() @ inp2).to(w.dtype) if ctx.needs_input_grad[iw] else None
    acc = torch.promote_types(dout2.dtype, torch.float32)
    gb = dout2.sum(0, dtype=acc).to(w.dtype) if ctx.needs_input_grad[ib] else None
    return gw, gb


class LayerNormLinear(torch.autograd.Function):
    """linear(layer_norm(x)), keeping x and the norm statistics instead of the norm output."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, eps, w, b):  # type: ignore[override]
        c = x.shape[-1]
        dt = autocast_dtype(x.device.type) or x.dtype
        y, mean, rstd = _ln(x, [c], ln_w, ln_b, eps)
        with torch.autocast(x.device.type, enabled=False):
            out = F.linear(y.to(dt), w.to(dt), _cast(b, dt))
        ctx.save_for_backward(x, mean, rstd, ln_w, ln_b, w, b)
        ctx.eps, ctx.dt = eps, dt
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        x, mean, rstd, ln_w, ln_b, w, b = ctx.saved_tensors
        dt, c = ctx.dt, x.shape[-1]
        dout2 = dout.to(dt).reshape(-1, dout.shape[-1])
        y = _ln(x, [c], ln_w, ln_b, ctx.eps)[0].to(dt).reshape(-1, c)
        gw, gb = _linear_grads(ctx, dout2, y, w, 4, 5)
        del y
        dy = (dout2 @ w.to(dt)).to(x.dtype).view(x.shape)
        dx, dlnw, dlnb = _ln_backward(dy, x, [c], mean, rstd, ln_w, ln_b, [True, ln_w is not None, ln_b is not None])
        return dx, dlnw, dlnb, None, gw, gb


class LayerNormMlp(torch.autograd.Function):
    """fc2(gelu(fc1(layer_norm(x)))), keeping x, the norm statistics and fc1's output."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, eps, w1, b1, w2, b2):  # type: ignore[override]
        c = x.shape[-1]
        dt = autocast_dtype(x.device.type) or x.dtype
        y, mean, rstd = _ln(x, [c], ln_w, ln_b, eps)
        with torch.autocast(x.device.type, enabled=False):
            h = F.linear(y.to(dt), w1.to(dt), _cast(b1, dt))
            del y
            out = F.linear(F.gelu(h), w2.to(dt), _cast(b2, dt))
        ctx.save_for_backward(x, mean, rstd, ln_w, ln_b, h, w1, b1, w2, b2)
        ctx.eps, ctx.dt = eps, dt
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        x, mean, rstd, ln_w, ln_b, h, w1, b1, w2, b2 = ctx.saved_tensors
        dt, c = ctx.dt, x.shape[-1]
        hidden = h.shape[-1]
        h2 = h.reshape(-1, hidden)
        dout2 = dout.to(dt).reshape(-1, c)
        gw2, gb2 = _linear_grads(ctx, dout2, F.gelu(h2), w2, 6, 7)
        dh = torch.ops.aten.gelu_backward(dout2 @ w2.to(dt), h2)
        del dout2
        y = _ln(x, [c], ln_w, ln_b, ctx.eps)[0].to(dt).reshape(-1, c)
        gw1, gb1 = _linear_grads(ctx, dh, y, w1, 4, 5)
        del y
        dy = (dh @ w1.to(dt)).to(x.dtype).view(x.shape)
        del dh
        dx, dlnw, dlnb = _ln_backward(dy, x, [c], mean, rstd, ln_w, ln_b, [True, ln_w is not None, ln_b is not None])
        return dx, dlnw, dlnb, None, gw1, gb1, gw2, gb2


def _recording(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def norm_linear(x: torch.Tensor, norm: nn.LayerNorm, fc: nn.Linear) -> torch.Tensor:
    """`fc(norm(x))`; by `LayerNormLinear` while autograd records through x."""
    if _recording(x):
        return LayerNormLinear.apply(x, norm.weight, norm.bias, norm.eps, fc.weight, fc.bias)
    return fc(norm(x))


def norm_mlp(x: torch.Tensor, norm: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """`fc2(gelu(fc1(norm(x))))` (exact GELU); by `LayerNormMlp` while autograd records through x."""
    if _recording(x):
        return LayerNormMlp.apply(x, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    return fc2(F.gelu(fc1(norm(x))))

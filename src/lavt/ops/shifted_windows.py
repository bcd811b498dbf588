"""Shifted-window attention straight from the map's tokens: index gathers instead of
pad + roll + partition, the fused CPU attention kernel, and a memory-lean backward.

The plain computation (`lavt.models.swin.SwinBlock`) pads the normalised map, rolls it,
partitions it into windows, runs qkv and attention per window, and undoes all three. Here
`qkv` runs on the map's own h*w tokens (a padding token is a zero after norm1, so its q, k, v
are exactly the qkv bias), one gather forms the windows (`WindowLayout.gather`, padding
positions set to the bias), one gather takes the output back (`WindowLayout.scatter`). The
layouts are built once per map size and shift and kept (`window_layout`).

The relative position bias and the shift mask go into the attention as one additive float32
mask; in eval mode without autograd it is cached on the attention module (`cache.py`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lavt.ops.cache import cache_allowed, cached

# The fused CPU kernel behind F.scaled_dot_product_attention, called directly because the
# public function does not return the row log-sum-exp that the memory-lean backward below
# needs. Private aten op: where a torch build lacks it, attention runs through the public
# F.scaled_dot_product_attention and training through plain autograd of it.
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
BACKWARD_CHUNK_BYTES = 16 << 20  # attention-map bytes per step of the window-attention backward
_LAYOUTS_KEPT = 32  # four image sizes of a four-stage model; bounded: a predictor may see many


class WindowLayout(NamedTuple):
    """Where every token of an (h, w) map goes in the official pad -> roll -> partition order.

    One gather (`gather`, then padding positions set) replaces pad + roll + partition, and one
    gather (`scatter`) replaces reverse + roll back + crop.
    """

    key: tuple
    num_windows: int
    gather: torch.Tensor  # (nW*N,) source token of each window token; padding points at 0
    pad: torch.Tensor | None  # (P,) window-token positions that are padding, or None
    scatter: torch.Tensor  # (h*w,) window-token position of each source token
    mask: torch.Tensor | None  # (nW, N, N) float32 shift mask, or None for unshifted blocks


def _windows_of(canvas: torch.Tensor, window: int) -> torch.Tensor:
    """(Hp, Wp) -> (nW, w*w): the canvas's windows in row-major order."""
    hp, wp = canvas.shape
    return canvas.view(hp // window, window, wp // window, window).transpose(1, 2).reshape(-1, window * window)


def _shift_mask(hp: int, wp: int, window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) float32: -100 between tokens of different regions of the shifted canvas (the
    regions split off by the last `window` and the last `shift` rows and columns)."""

    def region(n: int) -> torch.Tensor:
        i = torch.arange(n)
        return (i >= n - window).long() + (i >= n - shift).long()

    win = _windows_of(region(hp)[:, None] * 3 + region(wp)[None, :], window)
    return torch.where(win[:, :, None] != win[:, None, :], -100.0, 0.0)


def _build_layout(h: int, w: int, window: int, shift: int, device: torch.device) -> WindowLayout:
    hp, wp = -(-h // window) * window, -(-w // window) * window
    canvas = torch.full((hp, wp), -1, dtype=torch.long)
    canvas[:h, :w] = torch.arange(h * w).view(h, w)
    if shift:
        canvas = torch.roll(canvas, shifts=(-shift, -shift), dims=(0, 1))
    src = _windows_of(canvas, window).reshape(-1)  # nW*N
    real = src >= 0
    scatter = torch.empty(h * w, dtype=torch.long)
    scatter[src[real]] = torch.arange(src.numel())[real]
    pad = (~real).nonzero().flatten()
    return WindowLayout(
        key=(h, w, window, shift, str(device)),
        num_windows=(hp // window) * (wp // window),
        gather=src.clamp(min=0).to(device),
        pad=pad.to(device) if pad.numel() else None,
        scatter=scatter.to(device),
        mask=_shift_mask(hp, wp, window, shift).to(device) if shift else None,
    )


_layouts: dict[tuple, WindowLayout] = {}


def window_layout(h: int, w: int, window: int, shift: int, device: torch.device) -> WindowLayout:
    """The layout of an (h, w) map for windows of `window` shifted by `shift`, built once."""
    key = (h, w, window, shift, str(device))
    layout = _layouts.get(key)
    if layout is None:
        if len(_layouts) >= _LAYOUTS_KEPT:
            _layouts.clear()
        # Normal tensors even when first built under torch.inference_mode(): the same layout
        # later serves training, where autograd saves its indices.
        with torch.inference_mode(False):
            layout = _build_layout(h, w, window, shift, device)
        _layouts[key] = layout
    return layout


def _windows_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, batch: int, scale: float, lse: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention in B*nW windows: q, k, v (B*nW, heads, N, d) (any strides, last one 1); mask
    (1 or nW, heads, N, N) additive, float32 (also for reduced-precision q). The fused kernel
    takes a mask that broadcasts over the batch, not one that repeats every nW windows, so a
    per-window mask runs one call per image. Returns (out (B*nW, heads, N, d), logsumexp)."""
    if mask.shape[0] == 1 or batch == 1:
        chunks = [(q, k, v)]
    else:
        nw = q.shape[0] // batch
        chunks = [(q[i * nw : (i + 1) * nw], k[i * nw : (i + 1) * nw], v[i * nw : (i + 1) * nw]) for i in range(batch)]
    outs, lses = [], []
    for qi, ki, vi in chunks:
        if _CPU_FLASH is not None and qi.device.type == "cpu":
            o, l = _CPU_FLASH(qi, ki, vi, 0.0, False, attn_mask=mask, scale=scale)
            lses.append(l)
        else:
            o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask.to(qi.dtype), scale=scale)
        outs.append(o)
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    if not lse:
        return out, None
    return out, lses[0] if len(lses) == 1 else torch.cat(lses)


def _to_windows(qkv: torch.Tensor, layout: WindowLayout, qkv_bias: torch.Tensor | None) -> torch.Tensor:
    """(B, H*W, 3C) tokens -> (B, nW*N, 3C) window tokens in the official pad/roll/partition
    order. A padding token is a zero after norm1, so its q, k, v are exactly the qkv bias."""
    win = qkv.index_select(1, layout.gather)
    if layout.pad is not None:
        if qkv_bias is None:
            win.index_fill_(1, layout.pad, 0.0)
        else:
            win.index_copy_(1, layout.pad, qkv_bias.to(win.dtype).expand(win.shape[0], layout.pad.numel(), win.shape[2]))
    return win


def _from_windows(out: torch.Tensor, layout: WindowLayout, batch: int) -> torch.Tensor:
    """(B*nW, heads, N, d) attention output -> (B, H*W, C) tokens (reverse, roll back, crop)."""
    bw, h, n, d = out.shape
    return out.transpose(1, 2).reshape(batch, bw // batch * n, h * d).index_select(1, layout.scatter)


class WindowAttentionFunction(torch.autograd.Function):
    """Shifted-window attention from (B, H*W, 3C) tokens to (B, H*W, C) tokens (before proj),
    with the relative position bias and the shift mask as additive mask; differentiable in the
    tokens, the qkv bias (through the padding tokens) and the position bias.

    `apply(qkv, qkv_bias, bias, layout, heads, scale, chunk_bytes)`. The fused CPU kernel does
    not differentiate its mask, and the unfused path keeps every attention map alive until the
    backward pass. Here the forward runs the fused kernel and keeps only the unpadded qkv
    tokens and the row log-sum-exp; the backward re-forms the windows and recomputes the
    attention maps a few windows at a time (about `chunk_bytes` of maps; softmax from the
    saved log-sum-exp). The window gathers are permutations of the real tokens, so their
    gradients are gathers with the inverse permutation (no zero fill, no scatter-add).
    """

    @staticmethod
    def forward(ctx, qkv, qkv_bias, bias, layout, heads, scale, chunk_bytes):  # type: ignore[override]
        b, _, c3 = qkv.shape
        c, nw = c3 // 3, layout.num_windows
        n = layout.gather.numel() // nw
        win = _to_windows(qkv, layout, qkv_bias)
        q, k, v = (t.transpose(1, 2) for t in win.view(b * nw, n, 3, heads, c // heads).unbind(2))
        mask = bias.unsqueeze(0) if layout.mask is None else bias.unsqueeze(0) + layout.mask.unsqueeze(1)
        out, lse = _windows_sdpa(q, k, v, mask, b, scale, lse=True)
        y = _from_windows(out, layout, b)
        # y is kept anyway (the projection after it saves its input): saving it costs no memory
        # and spares the backward recomputing O = P V for rowsum(dO * O)
        ctx.save_for_backward(qkv, qkv_bias, lse, bias, y)
        ctx.layout, ctx.heads, ctx.scale, ctx.chunk_bytes = layout, heads, scale, chunk_bytes
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        qkv, qkv_bias, lse, bias, y = ctx.saved_tensors
        layout, h, scale = ctx.layout, ctx.heads, ctx.scale
        shift = layout.mask
        b, _, c3 = qkv.shape
        c, nw = c3 // 3, layout.num_windows
        n = layout.gather.numel() // nw
        bw, d = b * nw, c // h
        # Float32 throughout for bf16/fp16 tokens: the (N, d) operands are cast once, cheaply,
        # instead of casting (N, N) maps back and forth.
        acc = torch.float32 if qkv.dtype in (torch.bfloat16, torch.float16) else qkv.dtype
        f32 = dict(dtype=acc, memory_format=torch.contiguous_format)
        win = _to_windows(qkv, layout, qkv_bias).view(bw, n, 3, h, d)
        q, k, v = win.permute(2, 0, 3, 1, 4).to(**f32).unbind(0)  # each (B*nW, heads, N, d)
        kt, vt = k.transpose(-2, -1).contiguous(), v.transpose(-2, -1).contiguous()
        dwin_out = dy.index_select(1, layout.gather)  # padding positions were cropped: no grad
        if layout.pad is not None:
            dwin_out.index_fill_(1, layout.pad, 0.0)
        dout = dwin_out.view(bw, n, h, d).transpose(1, 2).to(**f32)
        # rowsum(dO * O) per window token and head; padding rows have dO = 0, so the token
        # their gather index points at does not matter
        delta_all = (dwin_out.to(acc) * y.index_select(1, layout.gather).to(acc)).view(bw, n, h, d).sum(-1)
        delta_all = delta_all.transpose(1, 2).unsqueeze(-1)  # (B*nW, heads, N, 1)
        del dwin_out, win
        grads = torch.empty((bw, n, 3, h, d), dtype=acc, device=qkv.device)
        dq, dk, dv = (g.transpose(1, 2) for g in grads.unbind(2))  # (B*nW, heads, N, d) views
        gq, gk, gv = (torch.empty_like(q) for _ in range(3))
        dbias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if ctx.needs_input_grad[2] else None
        bias_dtype, bias = bias.dtype, bias.to(acc)
        # Some windows at a time (~16 MB of maps): below glibc's mmap threshold the memory is
        # recycled by the allocator, where whole-block maps (up to ~70 MB at batch 2) would be
        # fresh pages on every call; chunks stay large enough for the matmuls to use all threads.
        step = max(1, ctx.chunk_bytes // (h * n * n * 4))
        for i in range(b):
            for w0 in range(0, nw, step):
                w1 = min(nw, w0 + step)
                sl = slice(i * nw + w0, i * nw + w1)
                qc, doc = q[sl], dout[sl]
                s = torch.matmul(qc, kt[sl]).mul_(scale).add_(bias)
                if shift is not None:
                    s.add_(shift[w0:w1, None])
                # The softmax, from the saved log-sum-exp. Probabilities below e^-60 (the -100
                # shift mask gives ~e^-100) become exact zeros: as float32 denormals, they and
                # their products would slow exp and the multiplications ~10x on x86, and they
                # change nothing.
                p = F.threshold_(s.sub_(lse[sl].unsqueeze(-1)), -60.0, float("-inf")).exp_()
                torch.matmul(p.transpose(-2, -1), doc, out=gv[sl])
                ds = torch.matmul(doc, vt[sl]).sub_(delta_all[sl]).mul_(p)  # d(scores)
                if dbias is not None:
                    dbias += ds.sum(0)
                torch.matmul(ds, k[sl], out=gq[sl])
                torch.matmul(ds.transpose(-2, -1), qc, out=gk[sl])
        dq.copy_(gq.mul_(scale))
        dk.copy_(gk.mul_(scale))
        dv.copy_(gv)
        del gq, gk, gv
        dwin = grads.view(b, nw * n, c3)
        dqkv = dwin.index_select(1, layout.scatter).to(qkv.dtype)
        dqkv_bias = None
        if qkv_bias is not None and ctx.needs_input_grad[1] and layout.pad is not None:
            dqkv_bias = dwin.index_select(1, layout.pad).sum((0, 1)).to(qkv_bias.dtype)
        elif qkv_bias is not None and ctx.needs_input_grad[1]:
            dqkv_bias = torch.zeros_like(qkv_bias)
        if dbias is not None:
            dbias = dbias.to(bias_dtype)
        return dqkv, dqkv_bias, dbias, None, None, None, None


def _attention_mask(attn: nn.Module, layout: WindowLayout) -> torch.Tensor:
    """(1 or nW, heads, N, N) float32: position bias plus shift mask; cached on `attn` in eval
    mode without autograd and rebuilt when the bias table changes."""

    def build() -> torch.Tensor:
        bias = attn.position_bias().float().unsqueeze(0)
        return bias if layout.mask is None else bias + layout.mask.unsqueeze(1)

    if cache_allowed(attn):
        return cached(attn, "mask", (attn.relative_position_bias_table,), build, extra=layout.key)
    return build()


def window_attention(attn: nn.Module, qkv: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """qkv: (B, H*W, 3C) tokens -> (B, H*W, C) attention output (before proj), for `attn` a
    `lavt.models.swin.WindowAttention` (read: `qkv.bias`, `relative_position_bias_table`,
    `position_bias()`, `num_heads`, `scale`, `window`, `dim`).

    Training on the CPU: `WindowAttentionFunction` (fused forward, recomputing backward);
    training elsewhere: the public SDPA, whose memory-efficient kernel differentiates the
    mask itself; no autograd: the fused kernel with the (cached) mask."""
    b = qkv.shape[0]
    c, h = attn.dim, attn.num_heads
    n = attn.window * attn.window
    nw = layout.num_windows
    table = attn.relative_position_bias_table
    if torch.is_grad_enabled() and (qkv.requires_grad or table.requires_grad):
        if qkv.device.type == "cpu" and _CPU_FLASH is not None:
            return WindowAttentionFunction.apply(
                qkv, attn.qkv.bias, attn.position_bias(), layout, h, attn.scale, BACKWARD_CHUNK_BYTES
            )
        bias = attn.position_bias().unsqueeze(0)
        mask = bias if layout.mask is None else bias + layout.mask.unsqueeze(1)
    else:
        mask = _attention_mask(attn, layout)
    win = _to_windows(qkv, layout, attn.qkv.bias)
    q, k, v = (t.transpose(1, 2) for t in win.view(b * nw, n, 3, h, c // h).unbind(2))
    out, _ = _windows_sdpa(q, k, v, mask, b, attn.scale)
    return _from_windows(out, layout, b)

"""Swin Transformer pieces, segmentation flavour, exact to the official LAVT backbone.

What makes this the *segmentation* Swin (and why timm's cannot be used):
- every block pads the normalised features (after norm1) with zeros on the bottom/right to a
  multiple of the window, *then* cyclically shifts; padded tokens are not masked out;
- odd blocks always shift by window // 2, even when the map is no larger than the window;
- the shift mask (-100 between regions) is built on the padded canvas of each stage;
- PatchEmbed pads the image to a multiple of the patch size, PatchMerging pads odd maps.

Speed: window attention runs through `F.scaled_dot_product_attention` with the relative
position bias and the shift mask folded into one additive mask; the relative position
index is a buffer built once, and the shift masks are cached per padded size.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lavt.models.fast import Linear, cache_allowed, cached
from lavt.models.lean import LayerNormLinear, LayerNormMlp


class DropPath(nn.Module):
    """Stochastic depth per sample (drops the whole residual branch, rescales the kept ones)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table, row-major as in the Swin paper."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)  # 2, w*w
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # w*w, w*w, 2
    rel = rel + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, w*w, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B, nW, w*w, C) -> (B, H, W, C)."""
    b, _, _, c = windows.shape
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask: -100 between tokens from different shifted regions."""
    img = torch.zeros(hp, wp, device=device)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = window_partition(img[None, :, :, None], window)[0, :, :, 0]  # nW, w*w
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill_(diff != 0, -100.0)


class WindowLayout(NamedTuple):
    """Where every token of an (h, w) map goes in the official pad -> roll -> partition order.

    One gather (`gather`, then padding positions set) replaces pad + roll + partition, and one
    gather (`scatter`) replaces reverse + roll back + crop. Built once per map size and stage.
    """

    key: tuple
    num_windows: int
    gather: torch.Tensor  # (nW*N,) source token of each window token; padding points at 0
    pad: torch.Tensor | None  # (P,) window-token positions that are padding, or None
    scatter: torch.Tensor  # (h*w,) window-token position of each source token
    mask: torch.Tensor | None  # (nW, N, N) float32 shift mask, or None for unshifted blocks


def window_layout(h: int, w: int, window: int, shift: int, device: torch.device) -> WindowLayout:
    hp, wp = -(-h // window) * window, -(-w // window) * window
    canvas = torch.full((hp, wp), -1, dtype=torch.long)
    canvas[:h, :w] = torch.arange(h * w).view(h, w)
    if shift:
        canvas = torch.roll(canvas, shifts=(-shift, -shift), dims=(0, 1))
    src = window_partition(canvas[None, :, :, None], window).reshape(-1)  # nW*N
    real = src >= 0
    scatter = torch.empty(h * w, dtype=torch.long)
    scatter[src[real]] = torch.arange(src.numel())[real]
    pad = (~real).nonzero().flatten()
    mask = shift_mask(hp, wp, window, shift, device) if shift else None
    return WindowLayout(
        key=(h, w, window, shift, str(device)),
        num_windows=(hp // window) * (wp // window),
        gather=src.clamp(min=0).to(device),
        pad=pad.to(device) if pad.numel() else None,
        scatter=scatter.to(device),
        mask=mask,
    )


_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_BACKWARD_CHUNK_BYTES = 16 << 20  # attention-map bytes per step of the window-attention backward


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


class _WindowAttentionFunction(torch.autograd.Function):
    """Shifted-window attention from (B, H*W, 3C) tokens to (B, H*W, C) tokens (before proj),
    with the relative position bias and the shift mask as additive mask; differentiable in the
    tokens, the qkv bias (through the padding tokens) and the position bias.

    The fused CPU kernel does not differentiate its mask, and the unfused path keeps every
    attention map alive until the backward pass. Here the forward runs the fused kernel and
    keeps only the unpadded qkv tokens and the row log-sum-exp; the backward re-forms the
    windows and recomputes the attention maps a few windows at a time (softmax from the saved
    log-sum-exp). The window gathers are permutations of the real tokens, so their gradients
    are gathers with the inverse permutation (no zero fill, no scatter-add).
    """

    @staticmethod
    def forward(ctx, qkv, qkv_bias, bias, layout, heads, scale):  # type: ignore[override]
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
        ctx.layout, ctx.heads, ctx.scale = layout, heads, scale
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
        step = max(1, _BACKWARD_CHUNK_BYTES // (h * n * n * 4))
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
        return dqkv, dqkv_bias, dbias, None, None, None


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    The block computes `qkv` on the map's own tokens, gathers them into windows, calls
    `attend`, gathers the result back and applies `proj` (see `SwinBlock`).
    """

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Persistent so the state_dict matches the official layout key for key.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, w*w, w*w) relative position bias."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def attention_mask(self, layout: WindowLayout) -> torch.Tensor:
        """(1 or nW, heads, N, N) float32: position bias plus shift mask. In eval mode without
        autograd it is cached (see `fast.py`) and rebuilt when the bias table changes."""

        def build() -> torch.Tensor:
            bias = self.position_bias().float().unsqueeze(0)
            return bias if layout.mask is None else bias + layout.mask.unsqueeze(1)

        if cache_allowed(self):
            return cached(self, "mask", (self.relative_position_bias_table,), build, extra=layout.key)
        return build()

    def attend(self, qkv: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """qkv: (B, H*W, 3C) tokens -> (B, H*W, C) attention output (before proj)."""
        b = qkv.shape[0]
        c, h = self.dim, self.num_heads
        n = self.window * self.window
        nw = layout.num_windows
        table = self.relative_position_bias_table
        if torch.is_grad_enabled() and (qkv.requires_grad or table.requires_grad):
            if qkv.device.type == "cpu" and _CPU_FLASH is not None:
                return _WindowAttentionFunction.apply(qkv, self.qkv.bias, self.position_bias(), layout, h, self.scale)
            # CUDA: the memory-efficient kernel differentiates the mask itself
            bias = self.position_bias().unsqueeze(0)
            mask = bias if layout.mask is None else bias + layout.mask.unsqueeze(1)
        else:
            mask = self.attention_mask(layout)
        win = _to_windows(qkv, layout, self.qkv.bias)
        q, k, v = (t.transpose(1, 2) for t in win.view(b * nw, n, 3, h, c // h).unbind(2))
        out, _ = _windows_sdpa(q, k, v, mask, b, self.scale)
        return _from_windows(out, layout, b)


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block, official padding and shift order.

    Equivalent to the official norm1 -> pad -> roll -> partition -> attention -> reverse ->
    roll back -> crop, computed with less data movement: `qkv` runs on the map's own h*w tokens
    (a padded token is a zero after norm1, so its q, k, v are exactly the qkv bias), one gather
    forms the windows (padding positions get the bias), one gather takes the attention output
    back to the map, and `proj` runs on the h*w tokens again.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """x: (B, H*W, C); layout: this block's window layout (shifted or not) for the map."""
        b = x.shape[0]
        lean = torch.is_grad_enabled() and x.requires_grad
        norm1, norm2, qkv_layer = self.norm1, self.norm2, self.attn.qkv
        if lean:
            args = (x, norm1.weight, norm1.bias, norm1.eps, qkv_layer.weight, qkv_layer.bias)
            qkv = LayerNormLinear.apply(*args)  # (B, HW, 3C)
        else:
            qkv = qkv_layer(norm1(x))
        y = self.attn.proj(self.attn.attend(qkv, layout))
        x = x + self.drop_path(y)
        if lean:
            mlp = self.mlp
            args = (x, norm2.weight, norm2.bias, norm2.eps, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
            return x + self.drop_path(LayerNormMlp.apply(*args))
        return x + self.drop_path(self.mlp(norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (order x00, x10, x01, x11) -> LayerNorm -> linear 4C->2C."""

    def __init__(self, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=norm_eps)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        h, w = hw
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; pads the image bottom/right to a multiple of the patch."""

    def __init__(self, patch: int, in_chans: int, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, h*w, C) and (h, w)."""
        p = self.patch
        pad_r, pad_b = (-x.shape[-1]) % p, (-x.shape[-2]) % p
        if pad_r or pad_b:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw

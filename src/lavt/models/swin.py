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

import torch
import torch.nn.functional as F
from torch import nn


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
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

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


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Persistent so the state_dict matches the official layout key for key.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, w*w, w*w) relative position bias."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, nW, N, C) windows; mask: (nW, N, N) additive shift mask or None."""
        b, nw, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).view(b, nw, n, 3, h, c // h).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)  # each (B, nW, heads, N, d)
        bias = self.position_bias().to(q.dtype)
        attn_mask = bias if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block, official padding and shift order."""

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

    def forward(self, x: torch.Tensor, hw: tuple[int, int], mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H*W, C); mask: the stage's shift mask (used by shifted blocks only)."""
        b, _, c = x.shape
        h, w = hw
        ws = self.window
        y = self.norm1(x).view(b, h, w, c)
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, ws), mask if self.shift else None)
        y = window_reverse(y, ws, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_b or pad_r:
            y = y[:, :h, :w, :]
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (order x00, x10, x01, x11) -> LayerNorm -> linear 4C->2C."""

    def __init__(self, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
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

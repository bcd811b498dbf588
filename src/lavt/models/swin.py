"""Swin Transformer pieces, segmentation flavour, exact to the official LAVT backbone.

What makes this the *segmentation* Swin (and why timm's cannot be used):
- every block pads the normalised features (after norm1) with zeros on the bottom/right to a
  multiple of the window, *then* cyclically shifts; padded tokens are not masked out;
- odd blocks always shift by window // 2, even when the map is no larger than the window;
- the shift mask (-100 between regions) is built on the padded canvas of each stage;
- PatchEmbed pads the image to a multiple of the patch size, PatchMerging pads odd maps.

The code below is that computation in plain PyTorch. With the fast paths on (`lavt.ops`),
`SwinBlock` computes the same by index gathers and fused kernels instead (marked below).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavt import ops


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
    """Linear -> GELU -> Linear (`ops.Linear` is `nn.Linear` with an inference cache)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = ops.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = ops.Linear(hidden, dim)

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
    """Multi-head self-attention inside windows with a learned relative position bias.

    `forward` is the attention itself (qkv, scaled dot product with bias and mask); the
    output projection `proj` is applied by the block after the windows are undone (a
    per-token map: the same as the official projection inside the windows).
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
        self.qkv = ops.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = ops.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, w*w, w*w) relative position bias."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """windows (B, nW, N, C), mask (nW, N, N) additive or None -> (B, nW, N, C) before proj."""
        b, nw, n, c = windows.shape
        h = self.num_heads
        q, k, v = self.qkv(windows).view(b, nw, n, 3, h, c // h).permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, h, N, d)
        bias = self.position_bias()  # (h, N, N)
        bias = bias if mask is None else bias + mask.unsqueeze(1)  # (nW, h, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return out.transpose(2, 3).reshape(b, nw, n, c)


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block, official padding and shift order:
    x + attention(norm1(x)), then x + mlp(norm2(x)), with the attention as
    pad -> roll -> partition -> window attention -> reverse -> roll back -> crop -> proj.
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

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """x: (B, H*W, C) tokens of an (H, W) map."""
        if ops.fast_paths_enabled():
            # Fast path (lavt.ops): qkv on the map's own tokens, windows by index gathers,
            # fused attention; memory-lean norm + linear autograd while training.
            attn = self.attn
            layout = ops.window_layout(hw[0], hw[1], self.window, self.shift, x.device)
            qkv = ops.norm_linear(x, self.norm1, attn.qkv)
            x = x + self.drop_path(attn.proj(ops.window_attention(attn, qkv, layout)))
            return x + self.drop_path(ops.norm_mlp(x, self.norm2, self.mlp.fc1, self.mlp.fc2))
        x = x + self.drop_path(self.shifted_window_attention(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def shifted_window_attention(self, y: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, H*W, C) normalised tokens -> (B, H*W, C) attention output after proj."""
        b, _, c = y.shape
        h, w = hw
        ws, shift = self.window, self.shift
        pad_b, pad_r = (-h) % ws, (-w) % ws
        y = F.pad(y.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))  # padded tokens are zeros
        hp, wp = h + pad_b, w + pad_r
        mask = None
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
            mask = shift_mask(hp, wp, ws, shift, y.device)
        out = window_reverse(self.attn(window_partition(y, ws), mask), ws, hp, wp)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return self.attn.proj(out[:, :h, :w].reshape(b, h * w, c))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (order x00, x10, x01, x11) -> LayerNorm -> linear 4C->2C."""

    def __init__(self, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.reduction = ops.Linear(4 * dim, 2 * dim, bias=False)
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

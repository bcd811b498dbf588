"""Language fusion after each Swin stage: PWAM (paper section 3.2), the language gate and the
language pathway (section 3.3), and a standard cross-attention alternative for the ablation.

Layout: everything works on channels-last tokens (B, HW, C). The official code stores its
1x1 projections as `nn.Conv1d` on channels-first tensors; we keep `Conv1d` parameters (so the
state_dict is the official one, key for key and shape for shape) but apply them as linear maps
on channels-last tensors, which saves four permute copies per stage.

Accuracy, not speed: under bf16/fp16 autocast PWAM's attention runs in float32
(`PixelWordAttention._forward_reduced_precision`), on both paths of `lavt.ops`'s switch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavt import ops


class PointwiseConv(nn.Conv1d):
    """A kernel-1 Conv1d applied to channels-last input (..., C_in) -> (..., C_out)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if ops.fast_paths_enabled():  # cached low-precision weight at inference under autocast
            return ops.linear(self, x, self.weight.squeeze(-1), self.bias)
        return F.linear(x, self.weight.squeeze(-1), self.bias)


class SpatialNorm(nn.Module):
    """Instance normalisation over the pixels of each channel (InstanceNorm1d, no affine) on
    channels-last tokens, or LayerNorm over channels, or nothing: the PWAM norm ablation."""

    def __init__(self, kind: str, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.kind = kind
        self.eps = eps
        # The official InstanceNorm1d has no parameters; the LayerNorm variant gets its own.
        self.ln = nn.LayerNorm(dim, eps=eps) if kind == "layer" else None

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Instance norm with float32 statistics and result, whatever the input dtype (a sum
        over thousands of pixels). Two contiguous passes (mean, then mean of squared
        deviations) are ~3x faster than var_mean's strided reduction over the pixel axis."""
        xf = x.float()
        centered = xf - xf.mean(dim=1, keepdim=True)
        rstd = torch.rsqrt(centered.square().mean(dim=1, keepdim=True) + self.eps)
        if ops.fast_paths_enabled() and not torch.is_grad_enabled():
            return centered.mul_(rstd)  # in place: nothing saves `centered` for a backward
        return centered * rstd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "instance":
            return self.normalise(x).to(x.dtype)
        if self.kind == "layer":
            return self.ln(x)
        return x


class PixelWordAttention(nn.Module):
    """Eq. (1)-(3): every pixel attends over the words; gives position-specific language features G.

    query = Norm(W_q V), key/value = W_k L, W_v L with padding words zeroed, attention scaled by
    key_channels^-0.5 (the full width, also with several heads, as in the official code), padding
    words get -1e4, output W_o(.) followed by Norm.
    """

    def __init__(self, v_dim: int, l_dim: int, key_dim: int, value_dim: int, heads: int, norm: str) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.f_key = nn.Sequential(PointwiseConv(l_dim, key_dim))
        self.f_query = nn.Sequential(PointwiseConv(v_dim, key_dim), SpatialNorm(norm, key_dim))
        self.f_value = nn.Sequential(PointwiseConv(l_dim, value_dim))
        self.W = nn.Sequential(PointwiseConv(value_dim, value_dim), SpatialNorm(norm, value_dim))

    def forward(self, x: torch.Tensor, l: torch.Tensor, l_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, HW, Cv); l: (B, N, Cl); l_mask: (B, N) 1 = word, 0 = padding. -> (B, HW, Cv)."""
        b, hw, _ = x.shape
        n = l.shape[1]
        h = self.heads
        if ops.low_precision(x) and isinstance(self.f_query[1], SpatialNorm) and self.f_query[1].kind == "instance":
            return self._forward_reduced_precision(x, l, l_mask)
        m = l_mask.to(l.dtype).unsqueeze(-1)  # B, N, 1
        q = self.f_query(x).view(b, hw, h, -1).transpose(1, 2)  # B, h, HW, d
        k = (self.f_key(l) * m).view(b, n, h, -1).transpose(1, 2)  # B, h, N, d
        v = (self.f_value(l) * m).view(b, n, h, -1).transpose(1, 2)
        bias = (1e4 * l_mask.to(q.dtype) - 1e4).view(b, 1, 1, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.key_dim**-0.5)
        out = out.transpose(1, 2).reshape(b, hw, self.value_dim)
        return self.W(out)

    def _forward_reduced_precision(self, x: torch.Tensor, l: torch.Tensor, l_mask: torch.Tensor) -> torch.Tensor:
        """Under bf16/fp16 autocast, the same function with its sensitive part in float32 (an
        accuracy choice, taken on both paths of the fast-path switch).

        The attended output is a mix of at most N word vectors, so over the pixels it varies
        little around its mean; W and the instance norm then blow that variation up to unit
        variance. Rounding the attention inputs/output to bf16 (3 significant digits of the
        mean) would dominate the whole model's bf16 error. So: query kept in float32 from its
        instance norm, keys and values in float32 (N words: cheap), attention in float32, and
        W applied to the output *centred over the pixels*: InstanceNorm(W o + b) equals
        InstanceNorm(W (o - mean(o))) exactly, and the centred values round well.
        """
        b, hw, _ = x.shape
        n = l.shape[1]
        h = self.heads
        dev = x.device.type
        query_conv, query_norm = self.f_query[0], self.f_query[1]
        q = query_norm.normalise(query_conv(x))  # float32
        with torch.autocast(dev, enabled=False):
            lf = l.float()
            m = l_mask.to(lf.dtype).unsqueeze(-1)
            k = F.linear(lf, self.f_key[0].weight.squeeze(-1).float(), self.f_key[0].bias.float()) * m
            v = F.linear(lf, self.f_value[0].weight.squeeze(-1).float(), self.f_value[0].bias.float()) * m
            q = q.view(b, hw, h, -1).transpose(1, 2)
            k = k.view(b, n, h, -1).transpose(1, 2)
            v = v.view(b, n, h, -1).transpose(1, 2)
            bias = (1e4 * l_mask.to(q.dtype) - 1e4).view(b, 1, 1, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.key_dim**-0.5)
            out = out.transpose(1, 2).reshape(b, hw, self.value_dim)
            out = out - out.mean(dim=1, keepdim=True)
        w_conv, w_norm = self.W[0], self.W[1]
        return w_norm(w_conv(out.to(ops.autocast_dtype(dev) or x.dtype)))


class PWAM(nn.Module):
    """Pixel-word attention module: F = proj_mm(GELU(W_v V) * G), with G from PixelWordAttention."""

    def __init__(self, dim: int, l_dim: int, heads: int = 1, dropout: float = 0.0, norm: str = "instance") -> None:
        super().__init__()
        self.vis_project = nn.Sequential(PointwiseConv(dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.image_lang_att = PixelWordAttention(dim, l_dim, dim, dim, heads, norm)
        self.project_mm = nn.Sequential(PointwiseConv(dim, dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, l: torch.Tensor, l_mask: torch.Tensor) -> torch.Tensor:
        vis = self.vis_project(x)
        lang = self.image_lang_att(x, l, l_mask)
        return self.project_mm(vis * lang)


class CrossAttentionFusion(nn.Module):
    """Ablation: standard multi-head cross-attention of pixels over words (Transformer-decoder
    style, per-head scaling, output projection), then the same GELU projection as PWAM's
    output. Replaces PWAM's element-wise multimodal product by the attended language itself."""

    def __init__(self, dim: int, l_dim: int, heads: int = 1, dropout: float = 0.0, norm: str = "instance") -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q = ops.Linear(dim, dim)
        self.kv = ops.Linear(l_dim, 2 * dim)
        self.out = ops.Linear(dim, dim)
        self.project_mm = nn.Sequential(ops.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, l: torch.Tensor, l_mask: torch.Tensor) -> torch.Tensor:
        b, hw, c = x.shape
        n = l.shape[1]
        h = self.heads
        q = self.q(self.norm(x)).view(b, hw, h, -1).transpose(1, 2)
        k, v = self.kv(l).view(b, n, 2, h, -1).permute(2, 0, 3, 1, 4).unbind(0)
        keep = l_mask.bool().view(b, 1, 1, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        out = self.out(out.transpose(1, 2).reshape(b, hw, c))
        return self.project_mm(x + out)


class LanguageGate(nn.Sequential):
    """Eq. (4): S = act(W2 ReLU(W1 F)), two bias-free linears. Keys `res_gate.0/2.weight`."""

    def __init__(self, dim: int, activation: str = "tanh") -> None:
        act = nn.Tanh() if activation == "tanh" else nn.Sigmoid()
        super().__init__(ops.Linear(dim, dim, bias=False), nn.ReLU(), ops.Linear(dim, dim, bias=False), act)


def build_fusion(kind: str, dim: int, l_dim: int, heads: int, dropout: float, norm: str) -> nn.Module:
    if kind == "pwam":
        return PWAM(dim, l_dim, heads, dropout, norm)
    return CrossAttentionFusion(dim, l_dim, heads, dropout, norm)

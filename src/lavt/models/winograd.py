"""3x3 convolution (stride 1, padding 1) by Winograd's minimal filtering F(2x2, 3x3), for
float32 on the CPU.

Why: the decoder's 3x3 convolutions at 1/4 resolution (512 channels) are about 40% of a
LAVT training step and half of a forward's FLOPs, and where oneDNN has no Winograd kernel (x86 without AVX-512) it runs
them, forward and backward, as direct convolutions at or below the matmul rate. F(2x2, 3x3)
computes each 2x2 output tile from a 4x4 input tile with 16 channel matmuls instead of 36:
2.25x fewer multiply-adds, in batched matmuls that run at the machine's matmul peak. The
transforms only add, subtract and halve (exact in binary), so the result differs from a
direct convolution by float32 rounding only (relative error ~1e-6).

Layout: the transforms run on channels-last data (channels contiguous), the matmuls on
(16, tiles, channels). Work is done per image and band of tile rows, so the transformed
tiles (4x the input's size) never exist for the whole batch at once: the forward keeps only
the input (as `F.conv2d` does) and the backward recomputes the input tiles band by band.

    V = B^T d B  (input tile d, 4x4),  U = G g G^T  (filter g, 3x3),  Y = A^T (U . V) A  (2x2)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# Bytes of the largest per-band buffer (tiles x 16 x channels): small blocks are recycled by
# the allocator, where blocks above glibc's mmap threshold are fresh (faulted-in) pages on every
# call; 400-700 tiles per band still keep the matmuls at full speed.
_BAND_BYTES = 16 << 20


def _kron() -> torch.Tensor:
    """(16, 9): row 4i+j, column 3k+l holds G[i, k] G[j, l]."""
    return torch.kron(_G, _G)


def filter_transform(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (16, C_in, C_out): U = G g G^T per channel pair (a transposed
    view of one (16, 9) x (9, C_out*C_in) matmul)."""
    c_out, c_in = weight.shape[:2]
    u = _kron().to(weight) @ weight.reshape(c_out * c_in, 9).t()
    return u.view(16, c_out, c_in).transpose(1, 2)


def filter_transform_adjoint(du_t: torch.Tensor) -> torch.Tensor:
    """Gradient of `filter_transform`, given as (16, C_out, C_in) -> (C_out, C_in, 3, 3)."""
    _, c_out, c_in = du_t.shape
    dw = _kron().to(du_t).t() @ du_t.reshape(16, c_out * c_in)  # (9, C_out*C_in)
    return dw.t().reshape(c_out, c_in, 3, 3)


def _pair(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, out: torch.Tensor) -> None:
    """B^T along one axis, for the four slices a, b, c, d (tile positions 0..3): writes
    (a - c, b + c, c - b, b - d) into out[0..3]."""
    torch.sub(a, c, out=out[0])
    torch.add(b, c, out=out[1])
    torch.sub(c, b, out=out[2])
    torch.sub(b, d, out=out[3])


def _input_tiles(xb: torch.Tensor, nt: int, mt: int, out: torch.Tensor) -> torch.Tensor:
    """V for the nt tile rows of one padded band xb (2*nt + 2, Wp, C): out (4, 4, nt, mt, C)."""
    r = [xb[k : k + 2 * nt : 2] for k in range(4)]  # (nt, Wp, C) each
    tmp = xb.new_empty((4, nt, xb.shape[1], xb.shape[2]))
    _pair(*r, out=tmp)
    for i in range(4):
        cols = [tmp[i][:, k : k + 2 * mt : 2] for k in range(4)]  # (nt, mt, C) each
        _pair(*cols, out=out[i])
    return out


def _output_tiles(m: torch.Tensor, y: torch.Tensor) -> None:
    """Y = A^T M A: m (4, 4, nt, mt, C) -> y (nt, 2, mt, 2, C) (a view into the output)."""
    s0 = m[0] + m[1]
    s0 += m[2]
    s1 = m[1] - m[2]
    s1 -= m[3]
    for a, s in enumerate((s0, s1)):
        torch.add(s[0], s[1], out=y[:, a, :, 0]).add_(s[2])
        torch.sub(s[1], s[2], out=y[:, a, :, 1]).sub_(s[3])


def _output_tiles_adjoint(dy: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """dM = A dY A^T: dy (nt, 2, mt, 2, C) -> out (4, 4, nt, mt, C)."""
    e = torch.empty((4,) + dy[:, 0].shape, dtype=dy.dtype, device=dy.device)  # (4, nt, mt, 2, C)
    d0, d1 = dy[:, 0], dy[:, 1]
    e[0].copy_(d0)
    torch.add(d0, d1, out=e[1])
    torch.sub(d0, d1, out=e[2])
    torch.neg(d1, out=e[3])
    for i in range(4):
        c0, c1 = e[i][..., 0, :], e[i][..., 1, :]
        out[i, 0].copy_(c0)
        torch.add(c0, c1, out=out[i, 1])
        torch.sub(c0, c1, out=out[i, 2])
        torch.neg(c1, out=out[i, 3])
    return out


def _input_tiles_adjoint_add(dv: torch.Tensor, dxb: torch.Tensor, nt: int, mt: int) -> None:
    """dxb (2*nt + 2, Wp, C) += the overlap-add of B dV B^T for the band's nt tile rows; dv (4, 4, nt, mt, C).

    Adjoint of `_pair` per axis: from (v0..v3) the tile positions get
    (v0, v1 - v2 + v3, v2 + v1 - v0, -v3)."""

    def adjoint(v: torch.Tensor) -> list[torch.Tensor]:
        p1 = v[1] - v[2]
        p1 += v[3]
        p2 = v[1] + v[2]
        p2 -= v[0]
        return [v[0], p1, p2, v[3].neg()]

    g = adjoint(dv)  # over the row index: 4 tensors (4[j], nt, mt, C)
    for k in range(4):
        rows = dxb[k : 2 * nt + k : 2]  # (nt, Wp, C)
        for l, part in enumerate(adjoint(g[k])):
            rows[:, l : l + 2 * mt : 2].add_(part)


class _Winograd3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):  # type: ignore[override]
        y = _forward(x, weight)
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        dx, dw = _backward(x, weight, dy, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return dx, dw


def _geometry(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int, int]:
    """(batch, tile rows, tile columns, tile rows per band)."""
    b, _, h, w = x.shape
    th, tw = -(-h // 2), -(-w // 2)
    tiles = max(64, _BAND_BYTES // (16 * x.element_size() * max(weight.shape[:2])))
    return b, th, tw, max(1, min(th, tiles // tw))


def _band(src: torch.Tensor, r0: int, rows: int, cols: int) -> torch.Tensor:
    """Rows r0 .. r0+rows and columns -1 .. cols-2 of src (H, W, C), zero outside: the band
    of the zero-padded map that one band of tiles reads, built without padding the whole map."""
    h, w, c = src.shape
    buf = src.new_empty((rows, cols, c))
    a, b = max(r0, 0), min(r0 + rows, h)
    if a > r0:
        buf[: a - r0].zero_()
    if r0 + rows > b:
        buf[max(b - r0, 0) :].zero_()
    buf[:, :1].zero_()
    buf[:, w + 1 :].zero_()
    if b > a:
        buf[a - r0 : b - r0, 1 : w + 1].copy_(src[a:b])
    return buf


def _forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    b, th, tw, band = _geometry(x, weight)
    c_in, c_out = weight.shape[1], weight.shape[0]
    h, w = x.shape[-2:]
    u = filter_transform(weight)
    xh = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view for channels-last x
    out = x.new_empty((b, h, w, c_out))
    even = h == 2 * th and w == 2 * tw
    for i in range(b):
        for t0 in range(0, th, band):
            nt = min(band, th - t0)
            xb = _band(xh[i], 2 * t0 - 1, 2 * nt + 2, 2 * tw + 2)
            v = _input_tiles(xb, nt, tw, x.new_empty((4, 4, nt, tw, c_in)))
            del xb
            m = torch.bmm(v.view(16, nt * tw, c_in), u).view(4, 4, nt, tw, c_out)
            del v
            if even:
                _output_tiles(m, out[i, 2 * t0 : 2 * (t0 + nt)].view(nt, 2, tw, 2, c_out))
            else:
                yb = x.new_empty((nt, 2, tw, 2, c_out))
                _output_tiles(m, yb)
                r1 = min(h, 2 * (t0 + nt))
                out[i, 2 * t0 : r1].copy_(yb.view(2 * nt, 2 * tw, c_out)[: r1 - 2 * t0, :w])
    return out.permute(0, 3, 1, 2)  # NCHW view of channels-last memory


def _backward(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, need_dx: bool, need_dw: bool):
    b, th, tw, band = _geometry(x, weight)
    c_in, c_out = weight.shape[1], weight.shape[0]
    h, w = x.shape[-2:]
    u = filter_transform(weight)
    ut = u.transpose(1, 2)  # (16, C_out, C_in), contiguous
    xh = x.permute(0, 2, 3, 1)
    dyh = dy.permute(0, 2, 3, 1)
    direct = h == 2 * th and w == 2 * tw and dyh.is_contiguous()
    dx = x.new_empty((b, h, w, c_in)) if need_dx else None
    du_t = None  # dU, transposed (16, C_out, C_in): the first band's product, then accumulated
    for i in range(b):
        carry = None  # the previous band's share of this band's first two padded rows
        for t0 in range(0, th, band):
            nt = min(band, th - t0)
            if direct:
                dyb = dyh[i, 2 * t0 : 2 * (t0 + nt)].view(nt, 2, tw, 2, c_out)
            else:  # odd map or strided gradient: a zero-extended copy of the band
                dyb = _band(dyh[i], 2 * t0, 2 * nt, 2 * tw + 1)[:, 1:].reshape(nt, 2, tw, 2, c_out)
            dm = _output_tiles_adjoint(dyb, x.new_empty((4, 4, nt, tw, c_out)))
            del dyb
            dm2 = dm.view(16, nt * tw, c_out)
            if need_dw:
                xb = _band(xh[i], 2 * t0 - 1, 2 * nt + 2, 2 * tw + 2)
                v = _input_tiles(xb, nt, tw, x.new_empty((4, 4, nt, tw, c_in)))
                del xb
                dm_t, v2 = dm2.transpose(1, 2), v.view(16, nt * tw, c_in)
                # the first band's product starts dU: no zero-filled buffer to add to
                du_t = torch.bmm(dm_t, v2) if du_t is None else du_t.baddbmm_(dm_t, v2)
                del v, v2, dm_t
            if need_dx:
                dv = torch.bmm(dm2, ut).view(4, 4, nt, tw, c_in)
                gb = x.new_zeros((2 * nt + 2, 2 * tw + 2, c_in))  # padded rows 2*t0 .. 2*(t0+nt)+1
                _input_tiles_adjoint_add(dv, gb, nt, tw)
                del dv
                if carry is not None:
                    gb[:2] += carry
                last = t0 + nt == th
                rows = 2 * nt + 2 if last else 2 * nt
                # padded row p is map row p - 1
                a, z = max(2 * t0 - 1, 0), min(2 * t0 - 1 + rows, h)
                dx[i, a:z].copy_(gb[a - (2 * t0 - 1) : z - (2 * t0 - 1), 1 : w + 1])
                carry = gb[2 * nt :]
    dxn = dx.permute(0, 3, 1, 2) if need_dx else None
    dw = filter_transform_adjoint(du_t) if need_dw else None
    return dxn, dw


# Below this many input or output channels the transforms' per-op overhead outweighs the
# saved multiply-adds (measured, training step of one convolution on 2 threads: 96->64 channels
# at 32x32, batch 16: 81 ms Winograd against 55 direct; 128->128: a tie; 256->256 at 60x60,
# batch 2: 171 against 346; the paper's 512-channel decoder: 1.6-2.3x).
MIN_CHANNELS = 256


def winograd_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `conv3x3` takes the Winograd path: float32 on the CPU, no autocast, a 3x3
    filter, at least `MIN_CHANNELS` input and output channels and maps of at least 2x2."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and tuple(weight.shape[-2:]) == (3, 3)
        and min(weight.shape[:2]) >= MIN_CHANNELS
        and min(x.shape[-2:]) >= 2
    )


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.conv2d(x, weight, padding=1)` by F(2x2, 3x3), whatever the sizes (float32 or float64
    tensors on the CPU); an NCHW result in channels-last memory. Differentiable in both."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return _forward(x, weight)  # inference: no autograd node, nothing saved
    return _Winograd3x3.apply(x, weight)


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.conv2d(x, weight, padding=1)` for a 3x3, stride-1, ungrouped, bias-free convolution;
    Winograd F(2x2, 3x3) where `winograd_applies`, else `F.conv2d`. The result is an NCHW
    tensor in channels-last memory on the Winograd path."""
    if not winograd_applies(x, weight):
        return F.conv2d(x, weight, padding=1)
    return winograd_conv3x3(x, weight)

"""3x3 convolution (stride 1, padding 1) by Winograd's minimal filtering F(mxm, 3x3), for
float32 on the CPU: m = 4 on maps of at least `F4_MIN_SIDE` pixels a side, else m = 2.

Why: the decoder's 3x3 convolutions at 1/4 resolution (512 channels) are about 40% of a
LAVT training step and half of a forward's FLOPs, and oneDNN runs them, forward and
backward, as direct convolutions at or below the matmul rate. F(mxm, 3x3) computes each
m x m output tile from an (m+2) x (m+2) input tile with (m+2)^2 channel matmuls instead of
9 m^2: F(2x2) does 2.25x fewer multiply-adds, F(4x4) 4x fewer, in batched matmuls that run
at the machine's matmul peak. The price is rounding: against a float64 convolution F(2x2)
is as exact as a direct float32 one (its transforms only add, subtract and halve), F(4x4)
about 10x less exact (relative ~2e-6 of the output's scale; its transforms scale by up to 8
and by 1/6), which is still far below what float32 training or the 1e-4 logit tolerance of
inference notices.

Every transform is one small matmul on the tile axis: with the tiles laid out as
(tile position, tiles * channels), V = (B^T kron B^T) D, M_k = V_k U_k (one batched matmul
over the channels), Y = (A^T kron A^T) M. Work is done per image and band of tile rows, so
the transformed tiles ((m+2)^2 / m^2 times the input's size) never exist for the whole batch
at once: the forward keeps only the input (as `F.conv2d` does) and the backward recomputes
the input tiles band by band.

    V = B^T d B  (input tile d),  U = G g G^T  (filter g, 3x3),  Y = A^T (U . V) A  (m x m)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lavt.ops import switch

# (B^T, G, A^T) per output tile size m (Lavin & Gray 2016; points 0, +-1 and, for m = 4, +-2).
MATRICES = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}
# F(4x4) on maps of at least this side, F(2x2) below: on small maps F(4x4)'s filter transform
# ((m+2)^2 / 9 = 4x the weights) and its tile padding outweigh the saved multiply-adds (at the
# paper's 480x480: F(4x4) on the 120x120 and 60x60 maps, F(2x2) on the 30x30; BENCHMARKS.md).
F4_MIN_SIDE = 48
# Bytes of the largest per-band buffer (tiles x (m+2)^2 x channels): small blocks are recycled
# by the allocator, where blocks above glibc's mmap threshold are fresh (faulted-in) pages on
# every call; 180-400 tiles per band still keep the matmuls at full speed.
BAND_BYTES = 16 << 20
_KRON: dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _kron(m: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B^T kron B^T, G kron G, A^T kron A^T) for tile size m, built in float64 and cached."""
    key = (m, dtype)
    if key not in _KRON:
        bt, g, at = (torch.tensor(a, dtype=torch.float64) for a in MATRICES[m])
        _KRON[key] = tuple(torch.kron(a, a).to(dtype) for a in (bt, g, at))  # type: ignore[assignment]
    return _KRON[key]


def tile_size(x: torch.Tensor) -> int:
    """The output tile size m used for an input map x (..., H, W)."""
    return 4 if min(x.shape[-2:]) >= F4_MIN_SIDE else 2


def filter_transform(weight: torch.Tensor, m: int) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> ((m+2)^2, C_in, C_out): U = G g G^T per channel pair (a
    transposed view of one ((m+2)^2, 9) x (9, C_out*C_in) matmul)."""
    c_out, c_in = weight.shape[:2]
    kg = _kron(m, weight.dtype)[1]
    u = kg @ weight.reshape(c_out * c_in, 9).t()
    return u.view(kg.shape[0], c_out, c_in).transpose(1, 2)


def filter_transform_adjoint(du_t: torch.Tensor, m: int) -> torch.Tensor:
    """Gradient of `filter_transform`, given as ((m+2)^2, C_out, C_in) -> (C_out, C_in, 3, 3)."""
    a2, c_out, c_in = du_t.shape
    dw = _kron(m, du_t.dtype)[1].t() @ du_t.reshape(a2, c_out * c_in)  # (9, C_out*C_in)
    return dw.t().reshape(c_out, c_in, 3, 3)


def _tiles(xb: torch.Tensor, m: int, nt: int, mt: int) -> torch.Tensor:
    """The nt x mt overlapping (m+2) x (m+2) tiles (stride m) of a padded band xb (R, Wp, C),
    copied out as ((m+2)^2, nt*mt*C): the layout the transform matmul reads."""
    _, wp, c = xb.shape
    a = m + 2
    return xb.as_strided((a, a, nt, mt, c), (wp * c, c, m * wp * c, m * c, 1)).reshape(a * a, nt * mt * c)


def _tiles_adjoint_add(dd: torch.Tensor, gb: torch.Tensor, m: int, nt: int, mt: int) -> None:
    """gb (R, Wp, C) += the overlap-add of the tiles dd (m+2, m+2, nt, mt, C), the adjoint of
    `_tiles`: four strided adds, each of tile positions that no two tiles share."""
    _, wp, c = gb.shape
    for k0, kn in ((0, m), (m, 2)):
        for l0, ln in ((0, m), (m, 2)):
            offset = gb.storage_offset() + k0 * wp * c + l0 * c
            dst = gb.as_strided((nt, kn, mt, ln, c), (m * wp * c, wp * c, m * c, c, 1), offset)
            dst.add_(dd[k0 : k0 + kn, l0 : l0 + ln].permute(2, 0, 3, 1, 4))


class _Winograd3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, m, band_bytes):  # type: ignore[override]
        y = _forward(x, weight, m, band_bytes)
        ctx.save_for_backward(x, weight)
        ctx.m, ctx.band_bytes = m, band_bytes
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx, dw = _backward(x, weight, dy, need_dx, need_dw, ctx.m, ctx.band_bytes)
        return dx, dw, None, None


def _geometry(x: torch.Tensor, weight: torch.Tensor, m: int, band_bytes: int) -> tuple[int, int, int, int]:
    """(batch, tile rows, tile columns, tile rows per band of about `band_bytes`)."""
    b, _, h, w = x.shape
    th, tw = -(-h // m), -(-w // m)
    tiles = max(64, band_bytes // ((m + 2) ** 2 * x.element_size() * max(weight.shape[:2])))
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


def _forward(x: torch.Tensor, weight: torch.Tensor, m: int, band_bytes: int) -> torch.Tensor:
    b, th, tw, band = _geometry(x, weight, m, band_bytes)
    c_in, c_out = weight.shape[1], weight.shape[0]
    h, w = x.shape[-2:]
    kb, _, ka = _kron(m, x.dtype)
    a2 = kb.shape[0]
    u = filter_transform(weight, m)
    xh = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view for channels-last x
    out = x.new_empty((b, h, w, c_out))
    even = h == m * th and w == m * tw
    for i in range(b):
        for t0 in range(0, th, band):
            nt = min(band, th - t0)
            xb = _band(xh[i], m * t0 - 1, m * nt + 2, m * tw + 2)
            v = torch.mm(kb, _tiles(xb, m, nt, tw)).view(a2, nt * tw, c_in)
            del xb
            prod = torch.bmm(v, u)
            del v
            y = torch.mm(ka, prod.view(a2, -1)).view(m, m, nt, tw, c_out).permute(2, 0, 3, 1, 4)
            del prod
            if even:
                out[i, m * t0 : m * (t0 + nt)].view(nt, m, tw, m, c_out).copy_(y)
            else:  # the last tile row or column reaches past the map: keep what lies on it
                r1 = min(h, m * (t0 + nt))
                out[i, m * t0 : r1].copy_(y.reshape(m * nt, m * tw, c_out)[: r1 - m * t0, :w])
    return out.permute(0, 3, 1, 2)  # NCHW view of channels-last memory


def _backward(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, need_dx: bool, need_dw: bool, m: int, band_bytes: int):
    b, th, tw, band = _geometry(x, weight, m, band_bytes)
    c_in, c_out = weight.shape[1], weight.shape[0]
    h, w = x.shape[-2:]
    kb, _, ka = _kron(m, x.dtype)
    a2 = kb.shape[0]
    ut = filter_transform(weight, m).transpose(1, 2)  # ((m+2)^2, C_out, C_in), contiguous
    xh = x.permute(0, 2, 3, 1)
    dyh = dy.permute(0, 2, 3, 1)
    even = h == m * th and w == m * tw
    dx = x.new_empty((b, h, w, c_in)) if need_dx else None
    du_t = None  # dU, transposed ((m+2)^2, C_out, C_in): the first band's product, then accumulated
    for i in range(b):
        carry = None  # the previous band's share of this band's first two padded rows
        for t0 in range(0, th, band):
            nt = min(band, th - t0)
            if even:
                dyb = dyh[i, m * t0 : m * (t0 + nt)]  # (m*nt, m*tw, C): a view, whatever dy's strides
            else:  # a zero-extended copy of the band
                dyb = _band(dyh[i], m * t0, m * nt, m * tw + 1)[:, 1:]
            # split rows and columns into (tile, position) as views: the permuted reshape is then
            # the band's only copy, for channels-last and channels-first gradients alike
            dyt = dyb.unflatten(1, (tw, m)).unflatten(0, (nt, m)).permute(1, 3, 0, 2, 4).reshape(m * m, nt * tw * c_out)
            del dyb
            dm = torch.mm(ka.t(), dyt).view(a2, nt * tw, c_out)  # dM = A dY A^T
            del dyt
            if need_dw:
                xb = _band(xh[i], m * t0 - 1, m * nt + 2, m * tw + 2)
                v = torch.mm(kb, _tiles(xb, m, nt, tw)).view(a2, nt * tw, c_in)
                del xb
                dm_t = dm.transpose(1, 2)
                # the first band's product starts dU: no zero-filled buffer to add to
                du_t = torch.bmm(dm_t, v) if du_t is None else du_t.baddbmm_(dm_t, v)
                del v, dm_t
            if need_dx:
                dv = torch.bmm(dm, ut)
                dd = torch.mm(kb.t(), dv.view(a2, -1)).view(m + 2, m + 2, nt, tw, c_in)  # B dV B^T
                del dv
                gb = x.new_zeros((m * nt + 2, m * tw + 2, c_in))  # padded rows m*t0 .. m*(t0+nt)+1
                _tiles_adjoint_add(dd, gb, m, nt, tw)
                del dd
                if carry is not None:
                    gb[:2] += carry
                last = t0 + nt == th
                rows = m * nt + 2 if last else m * nt
                # padded row p is map row p - 1
                a, z = max(m * t0 - 1, 0), min(m * t0 - 1 + rows, h)
                dx[i, a:z].copy_(gb[a - (m * t0 - 1) : z - (m * t0 - 1), 1 : w + 1])
                carry = gb[m * nt :]
    dxn = dx.permute(0, 3, 1, 2) if need_dx else None
    dw = filter_transform_adjoint(du_t, m) if need_dw else None
    return dxn, dw


# Below this many input or output channels the transforms' per-op overhead outweighs the
# saved multiply-adds (the demo model's 64-channel decoder is slower by Winograd; BENCHMARKS.md).
MIN_CHANNELS = 256
_calls = {2: 0, 4: 0}


def conv3x3_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The one rule for where `conv3x3` takes the Winograd path: fast paths on, float32 on the
    CPU, no autocast, a 3x3 filter, at least `MIN_CHANNELS` input and output channels and maps
    of at least 2x2."""
    return (
        switch.fast_paths_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and tuple(weight.shape[-2:]) == (3, 3)
        and min(weight.shape[:2]) >= MIN_CHANNELS
        and min(x.shape[-2:]) >= 2
    )


def winograd_calls() -> dict[int, int]:
    """How many Winograd convolutions ran since the process started, per tile size m (a
    diagnostic: shows which kernel a model's forward used)."""
    return dict(_calls)


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, m: int | None = None, band_bytes: int | None = None) -> torch.Tensor:
    """`F.conv2d(x, weight, padding=1)` by F(mxm, 3x3) (m = 2 or 4; default `tile_size(x)`),
    whatever the sizes (float32 or float64 tensors on the CPU); an NCHW result in channels-last
    memory. Differentiable in both. Work is split into bands of about `band_bytes` (default
    `BAND_BYTES`)."""
    m = tile_size(x) if m is None else m
    if m not in MATRICES:
        raise ValueError(f"Winograd tile size must be one of {sorted(MATRICES)}, got {m}")
    band_bytes = BAND_BYTES if band_bytes is None else band_bytes
    _calls[m] += 1
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return _forward(x, weight, m, band_bytes)  # inference: no autograd node, nothing saved
    return _Winograd3x3.apply(x, weight, m, band_bytes)


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.conv2d(x, weight, padding=1)` for a 3x3, stride-1, ungrouped, bias-free convolution;
    Winograd where `conv3x3_applies`, else `F.conv2d`. The result is an NCHW tensor in
    channels-last memory on the Winograd path."""
    if not conv3x3_applies(x, weight):
        return F.conv2d(x, weight, padding=1)
    return winograd_conv3x3(x, weight)

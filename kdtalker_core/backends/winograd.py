"""Winograd convolutions for bf16 3x3 convolutions on the CPU, in plain PyTorch ops.

A 3x3 convolution (stride 1, zero padding 1) over tiles of output pixels becomes independent
matrix products, one per point of the transformed input tile: (tiles, Cin) @ (Cin, Cout). Two
tile forms:

- F(2x2, 3x3) (:data:`F2X2`): 4x4 transformed tiles, 16 multiplies per 4 outputs instead of 36;
- F(2x4, 3x3) (:data:`F2X4`, the default where W is a multiple of 4): F(2,3) along the rows and
  F(4,3) along the columns, 4x6 transformed tiles, 24 multiplies per 8 outputs (3 per output
  instead of 4: a quarter fewer than F(2x2)), and a quarter fewer transformed values per output.

oneDNN's bf16 direct convolution is slower than these on AVX512-BF16 CPUs without AMX for
convolutions with many output channels (see :func:`preferred`); for float32 they lose (oneDNN's
float32 GEMMs are slow on the CPU it was tuned on, and NNPACK is faster), and on CUDA cuDNN is
left alone.

Transforms (weights transformed once, in float32, then cast; rows of B^T may be scaled, with
the matching rows of G scaled inversely):
    F(2,3), points 0, 1, -1, inf:
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
    F(4,3), points 0, 1, -1, 2, -1/2, inf (the set with the smallest rounding error for F(4,3)
    found here: 1.16e-2 relative per bf16 convolution against 1.35e-2 for 0, +-1, +-2):
    G   = [[1, 0, 0], [1/3, 1/3, 1/3], [-1/3, 1/3, -1/3], [-1/15, -2/15, -4/15],
           [16/15, -8/15, 4/15], [0, 0, 1]]
    B^T = [[1, 3/2, -2, -3/2, 1, 0], [0, 1, 5/2, 1/2, -1, 0], [0, -1, -1/2, 5/2, -1, 0],
           [0, 1/2, 1, -1/2, -1, 0], [0, -2, 1, 2, -1, 0], [0, 1, 3/2, -2, -3/2, 1]]
    A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -1/2, 0], [0, 1, 1, 4, 1/4, 0], [0, 1, -1, 8, -1/8, 1]]
    U = G_r g G_c^T,  V = B_r^T d B_c,  Y = A_r^T M A_c,  M = V (.) U summed over Cin

The bias is added at transform point (1,1) (the points at 1, whose columns of A^T are all ones),
which A^T . A spreads evenly to all outputs of a tile. Error (bf16, unit-variance data, full-size
convolutions, relative to float32): direct bf16 convolution 2.9e-3, F(2x2) 6.1e-3, F(2x4)
1.16e-2 (the transformed inputs and weights and the products are rounded to bf16, and the
output transform of F(4,3) amplifies those roundings). A whole 512 px frame of the warping network
and decoder in bf16 against float32 (random weights, ``bench/bench_render.py``): 50.3 dB PSNR with
F(2x2), 46.7 dB with F(2x4), about 54 dB without Winograd. The render in bf16 (two frame threads,
Zen 5): F(2x4) 1.03 s a frame against F(2x2) 1.18 s (medians of six interleaved runs).
Outside the render's heap reuse, the output (tens of MiB on the decoder's large maps, a fresh
``mmap`` there) is hinted to huge pages before it is written, which cuts its first-touch
page-fault cost (see :func:`kdtalker_core.backends.allocator.advise_huge_pages`). Inside it
(:func:`kdtalker_core.backends.allocator.reusing`) the output comes from already-faulted heap
memory and is not hinted: with the hint the bf16 render spent 0.5-2.5 s of kernel time on 8
frames (two frame threads, Zen 5 VM, THP ``madvise`` mode with ``defrag=madvise``) against
0.4-0.7 s without, and took 1.16-1.30 s a frame against 1.11-1.28 s (6 interleaved pairs, all
faster without; median 5.5%).
Whether it pays depends on the CPU as well as the shape: the shape rule (:func:`shape_rule`) was
measured on a Zen 5 CPU (AVX512-BF16, no AMX). On a CPU with AMX-BF16 oneDNN's direct bf16
convolutions run much faster (1100-1200 GFLOP/s for 512->512 at 64x64 on a 2-core Xeon), while
the transforms here stay memory-bound, so the rule may not hold there. :func:`direct_clearly_faster`
times both on one convolution per process (see :func:`probe_says_direct`) and turns this path off
where oneDNN wins clearly.
``KDTALKER_BF16_WINOGRAD=0|1`` turns it off / on whatever the shape rule and the probe say;
``KDTALKER_BF16_WINOGRAD_TILE=2x2`` keeps the more accurate F(2x2) form (see :func:`form_for`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..precision import cpu_has_native_bf16
from . import allocator
from .timing import best_seconds_interleaved

_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))
_G4 = ((1.0, 0.0, 0.0), (1 / 3, 1 / 3, 1 / 3), (-1 / 3, 1 / 3, -1 / 3), (-1 / 15, -2 / 15, -4 / 15),
       (16 / 15, -8 / 15, 4 / 15), (0.0, 0.0, 1.0))
_AT4 = ((1.0, 1.0, 1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, 2.0, -0.5, 0.0), (0.0, 1.0, 1.0, 4.0, 0.25, 0.0),
        (0.0, 1.0, -1.0, 8.0, -0.125, 1.0))

#: The dtypes this path runs in (float32 would lose against oneDNN / NNPACK here).
DTYPES = (torch.bfloat16,)


#: Storage order of the four F(2,3) transform points along an axis: the points whose rows of B^T
#: share a pattern (x[k] - x[k+2] for k = 0, 1) sit next to each other, so that the transform
#: needs 3 ops per axis instead of 4 (see :func:`_row_transform`).
_ORDER = (0, 3, 1, 2)
#: Storage order of the six F(4,3) points along the columns: rows 0 and 5 of B^T have the same
#: pattern one column apart and are made by one op (see :func:`_columns_f4`).
_ORDER4 = (0, 5, 1, 2, 3, 4)


def _pairs(t: torch.Tensor, dim: int, start: int, length: int, step: int = 2) -> torch.Tensor:
    """View (2, ...) of t's slices start + k : start + k + step*length : step along dim, for k = 0, 1 (no copy)."""
    shape, stride = list(t.shape), list(t.stride())
    shape[dim] = length
    stride[dim] *= step
    return t.as_strided([2, *shape], [t.stride(dim), *stride], t.storage_offset() + start * t.stride(dim))


def _f23_pass(t: torch.Tensor, dim: int, length: int, out: torch.Tensor) -> None:
    """F(2,3)'s B^T along ``dim`` of t (zero-padded: 2*length + 2 long there) -> out (4, ...):
    out[p] = (B^T d)[_ORDER[p]] of every one of the ``length`` tiles along ``dim``, the tile index
    in place of ``dim``. Three ops: rows (0, 3) of B^T as one op on pairs of strided views
    (x[k] - x[k+2], k = 0, 1), then x[1] + x[2] and x[2] - x[1]."""
    torch.sub(_pairs(t, dim, 0, length), _pairs(t, dim, 2, length), out=out[0:2])
    x1, x2 = _pairs(t, dim, 1, length)
    torch.add(x1, x2, out=out[2])
    torch.sub(x2, x1, out=out[3])


def _row_transform(xp: torch.Tensor, tile_rows: int, r: torch.Tensor) -> None:
    """F(2,3) along the rows: zero-padded rows xp (B, 2*tile_rows+2, W+2, C) -> r (4, B, tile_rows, W+2, C),
    r[p] = rows (B^T d)[_ORDER[p]] of every tile row (see :func:`_f23_pass`)."""
    _f23_pass(xp, 1, tile_rows, r)


def _columns_f2(r: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> None:
    """F(2,3) along the columns: r (4, B, n, W+2, C) -> v (4, 4, B, n, W/2, C) (see
    :func:`_f23_pass`; ``s`` unused)."""
    _f23_pass(r, 3, (r.shape[3] - 2) // 2, v.transpose(0, 1))


def _columns_f4(r: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> None:
    """F(4,3) along the columns: r (4, B, n, W+2, C) -> v (4, 6, B, n, W/4, C) in storage order
    :data:`_ORDER4`, with scratch s (4, 4, B, n, W/4, C); 12 elementwise ops.

    With d0..d5 the six input columns of a tile (stride 4 between tiles), p = d4 - d2 and
    q = d1 - d3 (B^T rows 1-4 negated, G rows likewise):
    rows 0, 5 = (d0 + d4 - 2 d2, d1 + d5 - 2 d3) + 3/2 (d1 - d3, d2 - d4) (pairs of columns);
    -row 1 = (q - p) + 3/2 (d2 + d3); -row 2 = -(p + q) - 3/2 (d2 - d3);
    -row 3 = 1/2 q - p;  -row 4 = -2 q - p.
    """
    tw = (r.shape[3] - 2) // 4

    def col(k: int) -> torch.Tensor:
        return r[..., k:k + 4 * (tw - 1) + 1:4, :]

    def col_pair(k: int) -> torch.Tensor:
        return _pairs(r, 3, k, tw, step=4)  # (2, 4, B, n, tw, C): columns k, k + 1 of every tile

    outer, diff = s[0:2], s[2:4]
    torch.add(col_pair(0), col_pair(4), out=outer)
    outer.add_(col_pair(2), alpha=-2)
    torch.sub(col_pair(1), col_pair(3), out=diff)  # (q, -p)
    torch.add(outer, diff, alpha=1.5, out=v[:, 0:2].transpose(0, 1))
    q, minus_p = diff[0], diff[1]
    torch.add(minus_p, q, alpha=-2, out=v[:, 5])
    torch.add(minus_p, q, alpha=0.5, out=v[:, 4])
    total, gap = s[0], s[1]  # outer is no longer needed
    torch.add(col(2), col(3), out=total)
    torch.sub(col(2), col(3), out=gap)
    torch.add(minus_p, q, out=v[:, 2]).add_(total, alpha=1.5)
    torch.sub(minus_p, q, out=v[:, 3]).add_(gap, alpha=-1.5)


@dataclass(frozen=True)
class TileForm:
    """One Winograd form F(2 x ``tile_w``, 3x3): F(2,3) along the rows, F(``tile_w``,3) along the
    columns; ``points`` = 4 * (``tile_w`` + 2) transform points per tile."""

    name: str
    tile_w: int
    g_columns: tuple[tuple[float, ...], ...]
    at_columns: tuple[tuple[float, ...], ...]
    order_columns: tuple[int, ...]
    columns: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
    #: Units of (4, B, n, W/tile_w, C) of column scratch the column transform needs.
    column_scratch: int

    @property
    def points(self) -> int:
        return 4 * (self.tile_w + 2)

    @property
    def bias_point(self) -> int:
        """Index of transform point (1,1) in U / V / M storage order (where the bias goes)."""
        return len(self.order_columns) * _ORDER.index(1) + self.order_columns.index(1)

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """weight (Cout,Cin,3,3) -> U (points,Cin,Cout) contiguous in weight's dtype (made in float32).

        U[len(order_columns) * p + q] = (G_r g G_c^T)[_ORDER[p], order_columns[q]] as a (Cin,Cout) matrix.
        Every point is a fixed combination of the 9 taps, so U is one (points, 9) @ (9, Cin*Cout)
        product of the Kronecker matrix G_r (x) G_c with the taps laid out (i, j, Cin, Cout): the
        result is already in U's layout (no transposing copy). Full-size decoder, one thread, Zen 5:
        512->512 F(2x4) 19 ms instead of 57 ms for the former einsum over the (Cout,Cin,3,3) weight
        (0.6 s less for the first frame's transforms); the float32 sums are ordered differently, so
        about 0.4% of the bf16 values of F(2x4) differ from the einsum's by one unit in the last place.
        """
        g_rows = torch.tensor(_G, dtype=torch.float32, device=weight.device)[list(_ORDER)]
        g_cols = torch.tensor(self.g_columns, dtype=torch.float32, device=weight.device)[list(self.order_columns)]
        kron = torch.einsum("ai,bj->abij", g_rows, g_cols).reshape(self.points, 9)
        cout, cin = weight.shape[:2]
        taps = torch.empty((3, 3, cin, cout), dtype=torch.float32, device=weight.device)
        taps.copy_(weight.permute(2, 3, 1, 0))
        return torch.mm(kron, taps.view(9, cin * cout)).view(self.points, cin, cout).to(weight.dtype)

    def output_matrix(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(2*tile_w, points): row tile_w*i + j holds A_r^T[i,a] * A_c^T[j,b] at the storage column
        of point (a, b) (entries 0 or powers of two: exact in bf16)."""
        a_rows = torch.tensor(_AT, dtype=torch.float64)[:, list(_ORDER)]
        a_cols = torch.tensor(self.at_columns, dtype=torch.float64)[:, list(self.order_columns)]
        return torch.einsum("ia,jb->ijab", a_rows, a_cols).reshape(2 * self.tile_w, self.points).to(
            dtype=dtype, device=device)


#: F(2x2, 3x3): the 3D path (:mod:`kdtalker_core.networks.winograd3d`), and maps whose width is
#: not a multiple of 4.
F2X2 = TileForm("2x2", 2, _G, _AT, _ORDER, _columns_f2, 0)
#: F(2x4, 3x3): the 2D default where the width is a multiple of 4.
F2X4 = TileForm("2x4", 4, _G4, _AT4, _ORDER4, _columns_f4, 4)
_FORMS = {form.points: form for form in (F2X2, F2X4)}


def form_for(x: torch.Tensor) -> TileForm:
    """The tile form for a 2D convolution of x (B,C,H,W): :data:`F2X4` where W is a multiple of 4,
    else :data:`F2X2`; ``KDTALKER_BF16_WINOGRAD_TILE=2x2`` always picks F2X2 (frames about 3.5 dB
    closer to float32, the render 8-13% slower on the Zen 5 machine)."""
    if x.shape[-1] % 4 or os.environ.get("KDTALKER_BF16_WINOGRAD_TILE", "").strip() == "2x2":
        return F2X2
    return F2X4


def transform_weight(weight: torch.Tensor, form: TileForm = F2X2) -> torch.Tensor:
    """weight (Cout,Cin,3,3) -> U (form.points,Cin,Cout) (see :meth:`TileForm.transform_weight`)."""
    return form.transform_weight(weight)


def output_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """F(2x2)'s (4,16) output transform (see :meth:`TileForm.output_matrix`)."""
    return F2X2.output_matrix(dtype, device)


_thread_scratch = threading.local()


def scratch_buffer(slot: str, numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat tensor of ``numel`` elements in like's dtype and device, for scratch use; contents undefined.

    While :func:`kdtalker_core.backends.allocator.reusing` (the render on glibc, whose heap keeps
    freed blocks), a plain allocation. Elsewhere (macOS, Windows, musl, or glibc outside the render)
    freed blocks of this size go back to the system and come back as fresh pages, faulted in on
    every call (a 256->256 convolution at 64x64, one thread: 26 ms against 9 ms); there it is
    this thread's buffer for ``slot``, kept and grown as needed, until :func:`release_scratch` or
    the thread's end.
    """
    if allocator.reusing():
        return like.new_empty(numel)
    buffers = getattr(_thread_scratch, "buffers", None)
    if buffers is None:
        buffers = _thread_scratch.buffers = {}
    # Inference-mode tensors cannot be written outside inference mode: one buffer for each mode.
    key = (slot, like.dtype, like.device, torch.is_inference_mode_enabled())
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buffers.pop(key, None)  # the old buffer goes before the larger one comes
        buf = buffers[key] = like.new_empty(numel)
    return buf[:numel]


def release_scratch() -> None:
    """Free the calling thread's kept scratch buffers (see :func:`scratch_buffer`)."""
    _thread_scratch.buffers = {}


class BandScratch:
    """Buffers reused by :func:`transform_band` for bands of up to ``band`` tile rows of ``rows``
    input maps shaped like x (B,C,H,W) (or x's (H,W,C) planes): one zero-padded band of input rows
    (its left and right columns stay zero), the row-transform scratch and the column-transform
    scratch of ``form`` (see :func:`scratch_buffer`)."""

    def __init__(self, x: torch.Tensor, rows: int, band: int, form: TileForm = F2X2) -> None:
        c, w = x.shape[1], x.shape[-1]
        self.xp = scratch_buffer("band", rows * (2 * band + 2) * (w + 2) * c, x).view(rows, 2 * band + 2, w + 2, c)
        self.xp[:, :, 0].zero_()
        self.xp[:, :, w + 1].zero_()
        # Flat: a shorter band gets contiguous views.
        self.r_buf = scratch_buffer("rows", 4 * rows * band * (w + 2) * c, x)
        self.s_buf = scratch_buffer("cols", form.column_scratch * 4 * rows * band * (w // form.tile_w) * c, x)


def transform_band(xl: torch.Tensor, t0: int, n: int, scratch: BandScratch, v: torch.Tensor,
                   form: TileForm = F2X2) -> None:
    """Transformed tiles of tile rows [t0, t0 + n) of xl (B,H,W,C) (channels innermost, any strides)
    into v (4, tile_w + 2, B, n, W/tile_w, C): the band's input rows are copied into ``scratch``'s
    zero-padded buffer (rows -1 and H are the padding), then the row and column transforms run on it."""
    b, h, w, c = xl.shape
    lo, hi = 2 * t0 - 1, 2 * (t0 + n) + 1  # input rows of this band, padding rows outside [0, h)
    xb = scratch.xp[:b, :2 * n + 2]
    if lo < 0:
        xb[:, 0].zero_()
    if hi > h:
        xb[:, 2 * n + 1].zero_()
    k0, k1 = max(lo, 0), min(hi, h)
    xb[:, k0 - lo:k1 - lo, 1:w + 1].copy_(xl[:, k0:k1])
    r = scratch.r_buf[:4 * b * n * (w + 2) * c].view(4, b, n, w + 2, c)
    _row_transform(xb, n, r)
    tw = w // form.tile_w
    s = scratch.s_buf[:form.column_scratch * 4 * b * n * tw * c].view(form.column_scratch, 4, b, n, tw, c)
    form.columns(r, v, s)


#: Bytes of transformed tiles per band (V or M); bands keep them cache-resident.
BAND_BYTES = 8 << 20

#: Index of transform point (1,1) in F(2x2)'s U / V / M storage order (where the bias goes).
BIAS_POINT = F2X2.bias_point


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, band_bytes: int = BAND_BYTES) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` by Winograd; ``u = transform_weight(weight, form)``,
    whose number of transform points picks the form (16: F(2x2), 24: F(2x4)).

    x (B,Cin,H,W) with H even and W a multiple of the form's tile width, any memory format;
    u (points,Cin,Cout) and bias (Cout,) in x's dtype -> (B,Cout,H,W) channels-last in x's dtype.
    The output transform is one matrix product (its sums accumulate in float32 inside the GEMM, so
    only its result is rounded). The map is processed in bands of tile rows so that the
    transformed tiles (about ``band_bytes`` per band) stay in cache: 8 MiB measured up to 1.9x
    faster than one band on 128x128 maps. Each band is zero-padded into a small reused buffer (no
    padded copy of the whole map).
    """
    return conv3x3_parts(x, u, bias, None, band_bytes)[0]


def conv3x3_parts(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, split: int | list[int] | None,
                  band_bytes: int = BAND_BYTES) -> list[torch.Tensor]:
    """:func:`conv3x3` with the output channels cut into parts of ``split`` channels (or of the
    listed sizes, as ``Tensor.split`` takes them), each its own dense channels-last tensor
    (``split`` None: one part).

    Smaller blocks for the same work: glibc serves a block of 64 MiB or more from a thread other
    than the main one with a fresh ``mmap`` every time (a thread's heap holds at most 64 MiB), whose
    pages are faulted in again on every frame; the decoder's largest Winograd output at 512 px,
    (1,512,256,256) bf16 gamma/beta, is exactly 64 MiB, its two halves are not.
    """
    b, c, h, w = x.shape
    form = _FORMS.get(u.shape[0])
    if form is None:
        raise ValueError(f"transformed weight with {u.shape[0]} points: expected one of {sorted(_FORMS)}")
    if h % 2 or w % form.tile_w:
        raise ValueError(f"F({form.name}) Winograd needs an even height and a width that is a multiple of "
                         f"{form.tile_w}, got {h}x{w}")
    cout, pts, cw = u.shape[2], form.points, form.tile_w
    if split is None:
        sizes = [cout]
    elif isinstance(split, int):
        sizes = [min(split, cout - c0) for c0 in range(0, cout, split)]
    else:
        sizes = list(split)
    if sum(sizes) != cout:
        raise ValueError(f"split {split} does not cover the {cout} output channels")
    th, tw = h // 2, w // cw
    xl = x.permute(0, 2, 3, 1)  # (B, H, W, C) view
    a = form.output_matrix(x.dtype, x.device)
    parts = []
    for size in sizes:
        part = torch.empty(b, size, h, w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        if not allocator.reusing():  # a fresh mmap: fewer first-touch faults (see the module docstring)
            allocator.advise_huge_pages(part)
        parts.append(part)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    tiles = [p.permute(0, 2, 3, 1).view(b, th, 2, tw, cw, p.shape[1]) for p in parts]
    band = max(1, min(th, band_bytes // (pts * b * tw * max(c, cout) * x.element_size())))
    scratch = BandScratch(x, b, band, form)
    # Scratch reused by every band (flat, so that a shorter last band still gets contiguous views).
    v_buf = scratch_buffer("v", pts * b * band * tw * c, x)
    m_buf = scratch_buffer("m", pts * b * band * tw * cout, x)
    y_buf = scratch_buffer("y", 2 * cw * b * band * tw * cout, x)
    for t0 in range(0, th, band):
        n = min(band, th - t0)
        v = v_buf[:pts * b * n * tw * c].view(pts, b * n * tw, c)
        transform_band(xl, t0, n, scratch, v.view(4, cw + 2, b, n, tw, c), form)
        m = m_buf[:pts * b * n * tw * cout].view(pts, b * n * tw, cout)
        torch.bmm(v, u, out=m)
        if bias is not None:
            m[form.bias_point].add_(bias)
        y = y_buf[:2 * cw * b * n * tw * cout].view(2 * cw, b * n * tw * cout)
        torch.mm(a, m.view(pts, -1), out=y)
        y6 = y.view(2, cw, b, n, tw, cout).permute(2, 3, 0, 4, 1, 5)
        for c0, t in zip(starts, tiles):
            t[:, t0:t0 + n].copy_(y6[..., c0: c0 + t.shape[-1]])
    return parts


#: The probe turns a Winograd path off only where oneDNN's direct convolution is faster by more
#: than this factor: where the two are close, the measured shape rules decide (a probe of a few
#: milliseconds on a shared machine can swing by more than their difference).
DIRECT_MARGIN = 1.25

_probe_lock = threading.Lock()
_probe_answers: dict[tuple[str, int, bool], bool] = {}


def probe_says_direct(kind: str, make: Callable[[], tuple[Callable[[], object], Callable[[], object]]]) -> bool:
    """True when oneDNN's direct convolution beats a Winograd path by more than :data:`DIRECT_MARGIN`.

    ``make()`` builds the two calls to time, (winograd, direct), on one representative
    convolution of ``kind``. Measured once per process for each ``kind``, intra-op thread count and
    state of :func:`kdtalker_core.backends.allocator.reusing` (which decides where both
    convolutions' buffers come from); timings interleaved, best of three. Threads asking at
    the same time wait for one measurement (taken while the others wait, so it is not slowed by
    them). False without measuring on a CPU without native bf16 (AVX512-BF16 / AMX-BF16), where
    both forms run reference kernels and bf16 is not chosen by default, and under a Python
    dispatch mode such as ``FlopCounterMode`` (which would be timed instead of the kernels).
    """
    if not cpu_has_native_bf16():
        # No native bf16 here: both forms run slow reference kernels (seconds for one probe) and
        # bf16 is never chosen by default; keep the shape rules.
        return False
    key = (kind, torch.get_num_threads(), allocator.reusing())
    answer = _probe_answers.get(key)
    if answer is not None:  # the common case: no lock
        return answer
    if _get_current_dispatch_mode() is not None:
        # Under a dispatch mode (a FLOP counter, tracing) every op pays the mode's overhead, and
        # the Winograd form has many more ops: a timing would measure the mode. Keep the shape
        # rules, unmeasured and uncached.
        return False
    with _probe_lock:
        answer = _probe_answers.get(key)
        if answer is None:
            with torch.inference_mode():
                winograd_call, direct_call = make()
                t_winograd, t_direct = best_seconds_interleaved([winograd_call, direct_call])
            answer = _probe_answers[key] = t_winograd > DIRECT_MARGIN * t_direct
        return answer


def _probe_calls(form: TileForm) -> tuple[Callable[[], object], Callable[[], object]]:
    """A decoder-like bf16 channels-last convolution, 256->256 at 64x64, in ``form`` (Zen 5, one
    thread: F(2x2) 9.4 ms, F(2x4) 8.3 ms, oneDNN 11.7 ms; under heap reuse F(2x2) 8.8, oneDNN 11.3)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 64, 64, generator=gen).to(torch.bfloat16, memory_format=torch.channels_last)
    w = (0.02 * torch.randn(256, 256, 3, 3, generator=gen)).to(torch.bfloat16, memory_format=torch.channels_last)
    b = torch.zeros(256, dtype=torch.bfloat16)
    u = transform_weight(w, form)
    return (lambda: conv3x3(x, u, b)), (lambda: F.conv2d(x, w, b, padding=1))


def direct_clearly_faster(form: TileForm | None = None) -> bool:
    """:func:`probe_says_direct` for the 2D path in ``form`` (default: the form of a 64-wide map,
    see :func:`form_for`) (cached; about 0.1 s the first time)."""
    if form is None:
        form = form_for(torch.empty(0, 0, 0, 64))
    return probe_says_direct(f"conv2d-{form.name}", lambda: _probe_calls(form))


def shape_rule(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The shapes where :func:`conv3x3` beat oneDNN in single-thread measurements on a Zen 5 CPU
    (AVX512-BF16, no AMX), x (B,Cin,H,W), weight (Cout,Cin,3,3) (direct ms -> Winograd ms): at
    least 128 input and 256 output channels (512->512 at 64x64: 36.5 -> 23.2; 512->256 at
    128x128: 75 -> 51; 256->256 at 64x64: 9.0 -> 6.4; 128->1024 at 64x64: 19.1 -> 15.0; 128->512
    at 256x256: 175 -> 149); with few output channels it loses (256->64, 128->128, 64->64 at
    256x256: 1.6x slower)."""
    return x.shape[1] >= 128 and weight.shape[0] >= 256


def preferred(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``conv3x3`` (in the form :func:`form_for` picks) should replace oneDNN for this bf16
    CPU convolution.

    Only CPU tensors of :data:`DTYPES`, 3x3 kernels, even H and W; then :func:`shape_rule`, unless
    the probe finds oneDNN clearly faster on this CPU (:func:`direct_clearly_faster`).
    ``KDTALKER_BF16_WINOGRAD`` = ``0`` / ``1`` overrides the rule and the probe (``1`` keeps the
    dtype / device / size requirements).
    """
    if (x.device.type != "cpu" or x.dtype not in DTYPES or weight.dtype != x.dtype or x.dim() != 4
            or tuple(weight.shape[2:]) != (3, 3) or x.shape[2] % 2 or x.shape[3] % 2):
        return False
    forced = os.environ.get("KDTALKER_BF16_WINOGRAD", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return shape_rule(x, weight) and not direct_clearly_faster(form_for(x))

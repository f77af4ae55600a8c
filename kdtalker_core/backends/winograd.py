"""Winograd F(2x2, 3x3) convolutions for bf16 on the CPU, in plain PyTorch ops.

A 3x3 convolution (stride 1, zero padding 1) over 2x2 output tiles becomes 16 independent
matrix products (one per point of the 4x4 transformed tile): (tiles, Cin) @ (Cin, Cout), i.e.
16 multiplies per 4 outputs instead of 36, at the price of a cheap input and output transform.
oneDNN's bf16 direct convolution is slower than this on AVX512-BF16 CPUs without AMX for
convolutions with many output channels (see :func:`preferred`); for float32 it loses (oneDNN's
float32 GEMMs are slow on the CPU it was tuned on, and NNPACK is faster), and on CUDA cuDNN is
left alone.

Transforms (the standard F(2,3) matrices; weights transformed once, in float32, then cast):
    U = G g G^T     G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    V = B^T d B     B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    Y = A^T M A     A^T = [[1, 1, 1, 0], [0, 1, -1, -1]],   M = V (.) U summed over Cin

The bias is added at transform point (1,1), the only one that A^T . A spreads evenly to all
four outputs of a tile. Error (bf16): about 3.5x the relative error of the direct bf16
convolution (the transformed input and weights are rounded to bf16): 5.7e-3 vs 1.7e-3 relative
on unit-variance data, full-size 512->512 at 64x64.
The output (tens of MiB on the decoder's large maps) is hinted to huge pages before it is
written, which cuts its first-touch page-fault cost (see :func:`kdtalker_core.backends.allocator.advise_huge_pages`).
Whether it pays depends on the CPU as well as the shape: the shape rule (:func:`shape_rule`) was
measured on a Zen 5 CPU (AVX512-BF16, no AMX). On a CPU with AMX-BF16 oneDNN's direct bf16
convolutions run much faster (1100-1200 GFLOP/s for 512->512 at 64x64 on a 2-core Xeon), while
the transforms here stay memory-bound, so the rule may not hold there. :func:`direct_clearly_faster`
times both on one convolution per process (see :func:`probe_says_direct`) and turns this path off
where oneDNN wins clearly.
``KDTALKER_BF16_WINOGRAD=0|1`` turns it off / on whatever the shape rule and the probe say.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..precision import cpu_has_native_bf16
from . import allocator
from .timing import best_seconds_interleaved

_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))

#: The dtypes this path runs in (float32 would lose against oneDNN / NNPACK here).
DTYPES = (torch.bfloat16,)


#: Storage order of the four transform points along each axis: the points whose rows of B^T
#: share a pattern (x[k] - x[k+2] for k = 0, 1) sit next to each other, so that the input
#: transform needs 3 ops per axis instead of 4 (see :func:`_input_transform`).
_ORDER = (0, 3, 1, 2)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight (Cout,Cin,3,3) -> U (16,Cin,Cout) contiguous in weight's dtype (transformed in float32).

    U[4p+q] = (G g G^T)[_ORDER[p], _ORDER[q]] as a (Cin,Cout) matrix.
    """
    g = torch.tensor(_G, dtype=torch.float32, device=weight.device)[list(_ORDER)]
    u = torch.einsum("ai,kcij,bj->abck", g, weight.float(), g)  # (4,4,Cin,Cout)
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _pairs(t: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """View (2, ...) of t's slices start + k : start + k + 2*length : 2 along dim, for k = 0, 1 (no copy)."""
    shape, stride = list(t.shape), list(t.stride())
    shape[dim] = length
    stride[dim] *= 2
    return t.as_strided([2, *shape], [t.stride(dim), *stride], t.storage_offset() + start * t.stride(dim))


def _input_transform(xp: torch.Tensor, tile_rows: int, r: torch.Tensor, v: torch.Tensor) -> None:
    """Zero-padded rows xp (B, 2*tile_rows+2, W+2, C), W even -> v (4, 4, B, tile_rows, W/2, C) in xp's dtype.

    v[p, q] = (B^T d B)[_ORDER[p], _ORDER[q]] for every tile d; r (4, B, tile_rows, W+2, C) is scratch
    for the row pass. Each pass is three elementwise ops: rows (0, 3) of B^T as one op on pairs of
    strided views (x[k] - x[k+2], k = 0, 1), then x[1] + x[2] and x[2] - x[1].
    """
    th = tile_rows
    w = xp.shape[2] - 2
    tw = w // 2

    def rows(i: int) -> torch.Tensor:
        return xp[:, i:i + 2 * th:2]

    torch.sub(_pairs(xp, 1, 0, th), _pairs(xp, 1, 2, th), out=r[0:2])
    torch.add(rows(1), rows(2), out=r[2])
    torch.sub(rows(2), rows(1), out=r[3])
    c1, c2 = r[..., 1:1 + w:2, :], r[..., 2:2 + w:2, :]
    torch.sub(_pairs(r, 3, 0, tw).transpose(0, 1), _pairs(r, 3, 2, tw).transpose(0, 1), out=v[:, 0:2])
    torch.add(c1, c2, out=v[:, 2])
    torch.sub(c2, c1, out=v[:, 3])


def output_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(4,16): row 2i+j holds A^T[i,a] * A^T[j,b] at column 4p+q, (a, b) = _ORDER[p, q] (entries 0, +-1: exact)."""
    at = torch.tensor(_AT, dtype=torch.float32)[:, list(_ORDER)]
    return torch.einsum("ia,jb->ijab", at, at).reshape(4, 16).to(dtype=dtype, device=device)


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
    (its left and right columns stay zero) and the row-transform scratch (see :func:`scratch_buffer`)."""

    def __init__(self, x: torch.Tensor, rows: int, band: int) -> None:
        c, w = x.shape[1], x.shape[-1]
        self.xp = scratch_buffer("band", rows * (2 * band + 2) * (w + 2) * c, x).view(rows, 2 * band + 2, w + 2, c)
        self.xp[:, :, 0].zero_()
        self.xp[:, :, w + 1].zero_()
        # Flat: a shorter band gets contiguous views.
        self.r_buf = scratch_buffer("rows", 4 * rows * band * (w + 2) * c, x)


def transform_band(xl: torch.Tensor, t0: int, n: int, scratch: BandScratch, v: torch.Tensor) -> None:
    """Transformed tiles of tile rows [t0, t0 + n) of xl (B,H,W,C) (channels innermost, any strides)
    into v (4, 4, B, n, W/2, C): the band's input rows are copied into ``scratch``'s zero-padded
    buffer (rows -1 and H are the padding), then :func:`_input_transform` runs on it."""
    b, h, w, c = xl.shape
    lo, hi = 2 * t0 - 1, 2 * (t0 + n) + 1  # input rows of this band, padding rows outside [0, h)
    xb = scratch.xp[:b, :2 * n + 2]
    if lo < 0:
        xb[:, 0].zero_()
    if hi > h:
        xb[:, 2 * n + 1].zero_()
    k0, k1 = max(lo, 0), min(hi, h)
    xb[:, k0 - lo:k1 - lo, 1:w + 1].copy_(xl[:, k0:k1])
    _input_transform(xb, n, scratch.r_buf[:4 * b * n * (w + 2) * c].view(4, b, n, w + 2, c), v)


#: Bytes of transformed tiles per band (V or M); bands keep them cache-resident.
BAND_BYTES = 8 << 20

#: Index of transform point (1,1) in U / V / M storage order (where the bias goes).
BIAS_POINT = 4 * _ORDER.index(1) + _ORDER.index(1)


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, band_bytes: int = BAND_BYTES) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` by Winograd F(2x2,3x3); ``u = transform_weight(weight)``.

    x (B,Cin,H,W) with H, W even, any memory format; u (16,Cin,Cout) and bias (Cout,) in x's
    dtype -> (B,Cout,H,W) channels-last in x's dtype. The output transform is one matrix product
    (its sums accumulate in float32 inside the GEMM, so only its result is rounded). The map is
    processed in bands of tile rows so that the transformed tiles (about ``band_bytes`` per band)
    stay in cache: 8 MiB measured up to 1.9x faster than one band on 128x128 maps. Each band is
    zero-padded into a small reused buffer (no padded copy of the whole map).
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
    cout = u.shape[2]
    if split is None:
        sizes = [cout]
    elif isinstance(split, int):
        sizes = [min(split, cout - c0) for c0 in range(0, cout, split)]
    else:
        sizes = list(split)
    if sum(sizes) != cout:
        raise ValueError(f"split {split} does not cover the {cout} output channels")
    th, tw = h // 2, w // 2
    xl = x.permute(0, 2, 3, 1)  # (B, H, W, C) view
    a = output_matrix(x.dtype, x.device)
    parts = []
    for size in sizes:
        part = torch.empty(b, size, h, w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        allocator.advise_huge_pages(part)
        parts.append(part)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    tiles = [p.permute(0, 2, 3, 1).view(b, th, 2, tw, 2, p.shape[1]) for p in parts]
    band = max(1, min(th, band_bytes // (16 * b * tw * max(c, cout) * x.element_size())))
    scratch = BandScratch(x, b, band)
    # Scratch reused by every band (flat, so that a shorter last band still gets contiguous views).
    v_buf = scratch_buffer("v", 16 * b * band * tw * c, x)
    m_buf = scratch_buffer("m", 16 * b * band * tw * cout, x)
    y_buf = scratch_buffer("y", 4 * b * band * tw * cout, x)
    for t0 in range(0, th, band):
        n = min(band, th - t0)
        v = v_buf[:16 * b * n * tw * c].view(16, b * n * tw, c)
        transform_band(xl, t0, n, scratch, v.view(4, 4, b, n, tw, c))
        m = m_buf[:16 * b * n * tw * cout].view(16, b * n * tw, cout)
        torch.bmm(v, u, out=m)
        if bias is not None:
            m[BIAS_POINT].add_(bias)
        y = y_buf[:4 * b * n * tw * cout].view(4, b * n * tw * cout)
        torch.mm(a, m.view(16, -1), out=y)
        y6 = y.view(2, 2, b, n, tw, cout).permute(2, 3, 0, 4, 1, 5)
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
    both forms run reference kernels and bf16 is not chosen by default.
    """
    if not cpu_has_native_bf16():
        # No native bf16 here: both forms run slow reference kernels (seconds for one probe) and
        # bf16 is never chosen by default; keep the shape rules.
        return False
    key = (kind, torch.get_num_threads(), allocator.reusing())
    answer = _probe_answers.get(key)
    if answer is not None:  # the common case: no lock
        return answer
    with _probe_lock:
        answer = _probe_answers.get(key)
        if answer is None:
            with torch.inference_mode():
                winograd_call, direct_call = make()
                t_winograd, t_direct = best_seconds_interleaved([winograd_call, direct_call])
            answer = _probe_answers[key] = t_winograd > DIRECT_MARGIN * t_direct
        return answer


def _probe_calls() -> tuple[Callable[[], object], Callable[[], object]]:
    """A decoder-like bf16 channels-last convolution, 256->256 at 64x64 (Zen 5, one thread, heap
    reuse on: Winograd 8.8 ms, oneDNN 11.3 ms)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 64, 64, generator=gen).to(torch.bfloat16, memory_format=torch.channels_last)
    w = (0.02 * torch.randn(256, 256, 3, 3, generator=gen)).to(torch.bfloat16, memory_format=torch.channels_last)
    b = torch.zeros(256, dtype=torch.bfloat16)
    u = transform_weight(w)
    return (lambda: conv3x3(x, u, b)), (lambda: F.conv2d(x, w, b, padding=1))


def direct_clearly_faster() -> bool:
    """:func:`probe_says_direct` for the 2D path (cached; about 0.1 s the first time)."""
    return probe_says_direct("conv2d", _probe_calls)


def shape_rule(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The shapes where :func:`conv3x3` beat oneDNN in single-thread measurements on a Zen 5 CPU
    (AVX512-BF16, no AMX), x (B,Cin,H,W), weight (Cout,Cin,3,3) (direct ms -> Winograd ms): at
    least 128 input and 256 output channels (512->512 at 64x64: 36.5 -> 23.2; 512->256 at
    128x128: 75 -> 51; 256->256 at 64x64: 9.0 -> 6.4; 128->1024 at 64x64: 19.1 -> 15.0; 128->512
    at 256x256: 175 -> 149); with few output channels it loses (256->64, 128->128, 64->64 at
    256x256: 1.6x slower)."""
    return x.shape[1] >= 128 and weight.shape[0] >= 256


def preferred(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``conv3x3`` should replace oneDNN for this bf16 CPU convolution.

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
    return shape_rule(x, weight) and not direct_clearly_faster()

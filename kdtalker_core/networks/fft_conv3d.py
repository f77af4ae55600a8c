"""Exact FFT form of a large-kernel 3D convolution (LivePortrait's 7x7x7 dense-motion ``mask`` layer).

``conv3d(x, w, b, padding=k // 2)`` with a k x k x k kernel by overlap-save in all three dimensions:
the volume is cut into overlapping n_d x n x n tiles (t = n - k + 1 output pixels per tile and side,
t_d = n_d - k + 1 output slices), each tile is Fourier transformed, and for every 3D frequency the
sum over input channels is ONE matrix product (2 Cout x Cin) @ (Cin x 2 tiles) with the transformed
kernels (rows: real then imaginary parts of conj(DFT(w)); one real product gives the four partial
products of the complex one). At full size (142 -> 22 channels, 16 x 64 x 64, k = 7, n = n_d = 22:
one depth tile, 4 x 4 tiles) that is 5808 frequencies and 2.3 GFLOP of products, instead of
12 GFLOP when the 7 depth taps were summed directly after 2D transforms (the former form).

The transforms are matrix products too (dense 22-point DFTs; torch's FFTs of these small tiles
measured 3-5 ns per point, slower than the products): along x a real DFT (rows cos, -sin of the
12 non-negative frequencies), along y and depth the real cos/sin basis of the axis. Each pass
multiplies the basis by the transposed data (``mm(basis, data.t())``), so the transformed axis
becomes the outermost one and the next axis is innermost with no copy; after the three passes the
channels are innermost, the layout the per-frequency products read. Two elementwise butterflies
turn the cos/sin parts into complex frequencies (order: :func:`frequency_order`) and write the
spectra frequency-major. The inverse (Cout channels only) is three small real products.

Chunking bounds the work memory: ``x_step`` x-frequencies at a time (the first pass re-reads the
input once per step), input channels in the kernels' chunks (products accumulate in float32),
one row of tiles at a time for the depth pass.

Precision and cached kernels (:func:`fft_kernels`), full size:

* float32: everything in float32; max / RMS error 1.9e-7 / 1.7e-7 of the output's max / RMS
  against a float64 convolution (former form: 1.8e-7 / 1.6e-7). The cache holds the 2D-transformed
  depth taps (44.7 MiB, as before) and the kernels' depth transform runs per call (1 GFLOP, ~20 ms).
  3D kernels cached in float32 (``three_d=True``) take 140 MiB and measured 8% faster on a quiet
  machine, 6% slower on a busy one (they stream from memory every call): not the default.
* bf16: 3D-transformed kernels cached in bf16 (69.5 MiB); the input spectra are rounded to bf16 and
  each frequency's product over all input channels is one bf16 product (oneDNN, float32
  accumulation inside, the sum rounded once); transforms and the inverse stay float32. (Products
  per chunk of 36 channels, summed in float32, were 5% slower for the whole layer: 156 -> 149 ms,
  medians of 9 interleaved runs, same error.) Max / RMS error against float64 on the same bf16 data:
  3.3e-3 / 2.4e-3; oneDNN's direct bf16 conv3d (and the former float32-inside form): 2.3e-3 /
  1.7e-3, one rounding of the output. bf16 transforms as well were ~1.4x faster but 5.0e-3 / 3.9e-3.

Measured on a 2-core Zen 5 EPYC VM (avx512_bf16, no AMX), 1 thread, full size (x (1,142,16,64,64),
weight (22,142,7,7,7)), former and new form interleaved, min / median of 11 runs: float32 NCDHW
input 136 / 146 ms (former 2D-FFT form 288 / 303 ms), bf16 channels-last-3d input 122 / 131 ms
(former 313 / 331 ms; oneDNN's direct bf16 conv3d 413 / 428 ms); on a busier run 159 / 170 vs
347 / 389 and 132 / 158 vs 341 / 424. Peak RSS growth of one call: float32 50 MiB (former 77),
bf16 98 MiB (former 81; 19 MiB of it is the one transposing copy of the channels-last input).
Float32 products run through MKL's AVX2 path here (~50 GFLOP/s), bf16 ones through oneDNN
(150-200 GFLOP/s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

from .layout import channels_first_copy, memory_format

#: FFT tile size along y and x: 22 gives 16 output pixels per tile, so a 64-pixel side is 4 tiles.
TILE_FFT = 22
#: FFT length along depth: 22 covers 16 output slices with a 7-tap kernel, one depth tile.
DEPTH_FFT = 22
#: Input-channel chunks of float32 kernels: the spectra and run-time 3D kernels of one chunk are
#: held at a time and the float32 products accumulate over chunks. Full size, 1 thread, median of 8
#: interleaved runs: 6 chunks (24 channels) 152 ms, 4: 163 ms, 8: 155 ms.
CHANNEL_CHUNKS = 6
#: Input-channel chunks of bf16 3D kernels. 1: one bf16 product over every input channel per
#: frequency (float32 accumulation inside oneDNN, one rounding of the sum), instead of one
#: product per chunk whose bf16 results were converted and summed in float32 (12 conversions
#: and 9 additions of (1936, 44, 32) blocks at full size; the layer 5% slower).
PRODUCT_CHUNKS_BF16 = 1
#: Input channels are Fourier transformed in this many groups (the spectra of one product are
#: written group by group), so the float32 work buffers of a group stay in cache: 4 groups
#: 132 ms, 6: 135 ms, 8: 154 ms; 2 or 1 make them leave the caches (1: the transforms alone
#: 116 ms instead of 75).
CHANNEL_CHUNKS_BF16 = 4
#: x-frequencies (of n/2 + 1 = 12) per step: the first pass re-reads the input once per step, the
#: spectra of one step are held (float32 24-channel chunk: 5.9 MB at 4). 3, 4 and 6 measured
#: within noise of each other; 4 is best or second-best for both dtypes.
X_STEP = 4
#: Channels of a non-float32 input converted to float32 at a time (a 3 MB buffer at full size).
CONVERT_CHANNELS = 12


@dataclass(frozen=True)
class FFTKernels:
    """Cached transformed kernels of a (Cout, Cin, k, k, k) weight (see :func:`fft_kernels`).

    ``spectra``: float32 ``(chunks, n//2+1, n, 2k, Cout*cc)`` (2D-transformed depth taps,
    ``depth_taps``) or ``(chunks, n//2+1, n*n_d, 2*Cout, cc)`` (3D-transformed; bf16, or float32 on
    request), cc = ceil(Cin / chunks); frequencies (x, y[, depth]) in :func:`frequency_order`, rows
    the real then the imaginary parts of conj(DFT(w)).
    """

    spectra: torch.Tensor
    kernel_size: int
    n: int
    depth_n: int
    out_channels: int
    in_channels: int
    depth_taps: bool

    @property
    def chunks(self) -> int:
        return self.spectra.shape[0]

    @property
    def channel_step(self) -> int:
        return -(-self.in_channels // self.chunks)

    @property
    def nbytes(self) -> int:
        return self.spectra.numel() * self.spectra.element_size()


def frequency_order(n: int) -> torch.Tensor:
    """Frequencies (DFT indices) in the order the spectra store them: 0..n/2, then n-1 .. n/2+1.

    Index m <= n/2 is frequency m; index n/2 + j (j = 1 .. n/2 - 1) is frequency -j, the partner
    of index j, which is what the cos/sin butterflies produce side by side.
    """
    h = n // 2
    return torch.tensor(list(range(h + 1)) + [n - j for j in range(1, h)])


@lru_cache(maxsize=8)
def _cos_sin_basis(n: int) -> torch.Tensor:
    """(n, n) float32: rows cos(2 pi q j / n) for q = 0..n/2, then sin(2 pi q j / n) for q = 1..n/2-1."""
    h = n // 2
    j = torch.arange(n, dtype=torch.float64)
    rows = [torch.cos(2 * math.pi * q * j / n) for q in range(h + 1)]
    rows += [torch.sin(2 * math.pi * q * j / n) for q in range(1, h)]
    return torch.stack(rows).float()


@lru_cache(maxsize=8)
def _rfft_basis(n: int) -> torch.Tensor:
    """(2 * (n/2+1), n) float32: rows (q, re/im) = cos, -sin (2 pi q j / n): the real DFT."""
    j = torch.arange(n, dtype=torch.float64)
    rows = []
    for q in range(n // 2 + 1):
        rows += [torch.cos(2 * math.pi * q * j / n), -torch.sin(2 * math.pi * q * j / n)]
    return torch.stack(rows).float()


@lru_cache(maxsize=8)
def _depth_twiddles(k: int, nd: int) -> torch.Tensor:
    """(2 n_d, 2k) float32 real form of exp(+2 pi i q kd / n_d): rows (q in :func:`frequency_order`,
    re/im), columns (tap kd, re/im). Applied to conj(rfft2) of the depth taps it gives conj(DFT3)."""
    q = frequency_order(nd).double()
    phi = 2 * math.pi * q[:, None] * torch.arange(k, dtype=torch.float64)[None, :] / nd
    c, s = torch.cos(phi), torch.sin(phi)
    t = torch.empty(nd, 2, k, 2, dtype=torch.float64)
    t[:, 0, :, 0], t[:, 0, :, 1], t[:, 1, :, 0], t[:, 1, :, 1] = c, -s, s, c
    return t.reshape(2 * nd, 2 * k).float()


def _complex_block(e: torch.Tensor) -> torch.Tensor:
    """(m, q) complex -> (2m, 2q) real form: rows (m, re/im), columns (re/im, q)."""
    m, q = e.shape
    out = torch.empty(m, 2, 2, q, dtype=torch.float64)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = e.real, -e.imag, e.imag, e.real
    return out.reshape(2 * m, 2 * q)


@lru_cache(maxsize=8)
def _inverse_bases(n: int, nd: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 real forms of the inverse DFTs onto the valid outputs: depth (2 t_d, 2 n_d) and
    y (2t, 2n) complex blocks (:func:`_complex_block`, input frequencies in :func:`frequency_order`),
    and x (t, 2, n/2+1): real part of the inverse real DFT (weights 1, 2, .., 2, 1) of (re, im)."""
    t, td, h = n - k + 1, nd - k + 1, n // 2

    def inverse(size: int, keep: int) -> torch.Tensor:
        q = frequency_order(size).double()
        m = torch.arange(keep, dtype=torch.float64)
        return _complex_block(torch.exp(2j * math.pi * m[:, None] * q[None, :] / size) / size).float()

    weight = torch.full((h + 1,), 2.0, dtype=torch.float64)
    weight[0] = weight[h] = 1.0
    m = torch.arange(t, dtype=torch.float64)[:, None]
    ex = weight * torch.exp(2j * math.pi * m * torch.arange(h + 1, dtype=torch.float64) / n) / n
    return inverse(nd, td), inverse(n, t), torch.stack([ex.real, -ex.imag], 1).float()


def _tiles(size: int, n: int, k: int) -> list[tuple[int, int, int, int]]:
    """Overlap-save tiles along one axis of ``size``: (first, last + 1 input index, first, last + 1
    tile index) of the part of each length-n input tile inside the map (zeros outside)."""
    t, p = n - k + 1, k // 2
    out = []
    for i in range(math.ceil(size / t)):
        start = i * t - p
        lo, hi = max(start, 0), min(start + n, size)
        out.append((lo, hi, lo - start, hi - start))
    return out


def _chunk_taps(weight: torch.Tensor, n: int, out: torch.Tensor) -> torch.Tensor:
    """conj(rfft2) of the depth taps of a (Cout, c, k, k, k) weight chunk, zero-padded to n x n,
    into ``out`` (n/2+1, n, k, 2, Cout, cc >= c) float32 (x, y in :func:`frequency_order`, tap,
    re/im, channels). Computed in float64, one tap at a time (3 MB transients for the mask layer:
    larger temporaries measured +100 MB of resident heap after the cache was built)."""
    k, c = weight.shape[2], weight.shape[1]
    order = frequency_order(n)
    for kd in range(k):
        w = F.pad(weight[:, :, kd].double(), (0, n - k, 0, n - k))
        spec = torch.view_as_real(torch.fft.rfft2(w).conj()[:, :, order])  # (Cout, c, y, x, re/im)
        out[:, :, kd, :, :, :c] = spec.permute(3, 2, 4, 0, 1)
    return out


def fft_kernels(weight: torch.Tensor, n: int = TILE_FFT, chunks: int | None = None,
                depth_n: int = DEPTH_FFT, three_d: bool | None = None) -> FFTKernels:
    """Transformed kernels of a (Cout, Cin, k, k, k) weight for :func:`fft_conv3d`.

    ``three_d`` (default: the weight is bf16): 3D-transformed kernels in the weight's dtype if bf16,
    else float32, so the depth transform is done once here; otherwise float32 2D-transformed depth
    taps, depth-transformed per call (1 GFLOP for the mask layer, ~20 ms at 1 thread).
    ``chunks`` input-channel chunks (default :data:`PRODUCT_CHUNKS_BF16` for bf16 3D kernels, else
    :data:`CHANNEL_CHUNKS`); zero channels pad the last chunk.
    Memory: 8 k n (n/2+1) Cout Cin bytes for depth taps (44.7 MiB for the mask layer), 2 or 4 times
    2 n_d n (n/2+1) Cout Cin bytes for bf16 / float32 3D kernels (69.5 MiB in one bf16 chunk;
    140.4 MiB in float32 chunks of 24, with the zero channels of the last one).
    """
    cout, cin, k = weight.shape[:3]
    if n % 2 or depth_n % 2 or k % 2 == 0 or k > min(n, depth_n):
        raise ValueError("fft_kernels needs even FFT lengths >= the (odd) kernel size")
    if three_d is None:
        three_d = weight.dtype == torch.bfloat16
    if chunks is None:
        chunks = PRODUCT_CHUNKS_BF16 if three_d and weight.dtype == torch.bfloat16 else CHANNEL_CHUNKS
    cc, nq = -(-cin // max(1, min(chunks, cin))), n // 2 + 1
    chunks = -(-cin // cc)  # no empty chunk (e.g. 4 channels in 3 chunks -> 2 chunks of 2)
    shape = (nq, n, k, 2, cout, cc)
    if not three_d:
        taps = weight.new_zeros((chunks, *shape), dtype=torch.float32)
        for j in range(chunks):
            _chunk_taps(weight[:, j * cc: (j + 1) * cc], n, taps[j])
        return FFTKernels(taps.view(chunks, nq, n, 2 * k, cout * cc), k, n, depth_n, cout, cin, True)
    dtype = torch.bfloat16 if weight.dtype == torch.bfloat16 else torch.float32
    twiddles = _depth_twiddles(k, depth_n)
    spectra = weight.new_zeros((chunks, nq, n * depth_n, 2 * cout, cc), dtype=dtype)
    for j in range(chunks):
        for c0 in range(j * cc, min(cin, (j + 1) * cc), 16):  # 16 channels at a time: small temporaries
            c1 = min(c0 + 16, cin, (j + 1) * cc)
            taps = weight.new_zeros((nq, n, k, 2, cout, c1 - c0), dtype=torch.float32)
            taps = _chunk_taps(weight[:, c0:c1], n, taps).view(nq, n, 2 * k, -1)
            for qx in range(nq):
                part = torch.matmul(twiddles, taps[qx]).view(n * depth_n, 2 * cout, c1 - c0)
                spectra[j, qx, :, :, c0 - j * cc: c1 - j * cc] = part
    return FFTKernels(spectra, k, n, depth_n, cout, cin, False)


def _butterfly(src: torch.Tensor, dst: torch.Tensor, dim: int, ri: int) -> None:
    """cos/sin parts -> complex frequencies along ``dim`` (length n, :func:`_cos_sin_basis` rows),
    real/imaginary parts along ``ri``: with A = src[q], B = src[n/2 + q], dst[q] = A - iB and
    dst[n/2 + q] = A + iB (frequency -q) for q = 1..n/2-1; rows 0 and n/2 are copied."""
    h = src.shape[dim] // 2
    dst.narrow(dim, 0, 1).copy_(src.narrow(dim, 0, 1))
    dst.narrow(dim, h, 1).copy_(src.narrow(dim, h, 1))
    a, b = src.narrow(dim, 1, h - 1), src.narrow(dim, h + 1, h - 1)
    pos, neg = dst.narrow(dim, 1, h - 1), dst.narrow(dim, h + 1, h - 1)
    torch.add(a.select(ri, 0), b.select(ri, 1), out=pos.select(ri, 0))
    torch.sub(a.select(ri, 1), b.select(ri, 0), out=pos.select(ri, 1))
    torch.sub(a.select(ri, 0), b.select(ri, 1), out=neg.select(ri, 0))
    torch.add(a.select(ri, 1), b.select(ri, 0), out=neg.select(ri, 1))


@dataclass
class _Plan:
    """Sizes, tiles and reusable work buffers of one :func:`fft_conv3d` call."""

    n: int
    nd: int
    k: int
    cout: int
    batch: int
    xt: list[tuple[int, int, int, int]]
    yt: list[tuple[int, int, int, int]]
    dt: list[tuple[int, int, int, int]]
    device: torch.device
    bufs: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def make(cls, n: int, nd: int, k: int, cout: int, x_shape: torch.Size, device: torch.device) -> _Plan:
        """The plan for an input of shape (B, Cin, D, H, W)."""
        b, _, d, h, w = x_shape
        return cls(n, nd, k, cout, b, _tiles(w, n, k), _tiles(h, n, k), _tiles(d, nd, k), device)

    @property
    def ntx(self) -> int:
        return len(self.xt)

    @property
    def nty(self) -> int:
        return len(self.yt)

    @property
    def ntd(self) -> int:
        return len(self.dt)

    @property
    def nb(self) -> int:
        """(batch element, depth tile) pairs."""
        return self.batch * self.ntd

    @property
    def ntiles(self) -> int:
        """Columns of the per-frequency products: (batch, depth tile), y tile, re/im, x tile."""
        return self.nb * self.nty * 2 * self.ntx

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A view of the work buffer ``name`` (allocated once, at its first and largest use)."""
        size = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype:
            buf = self.bufs[name] = torch.empty(size, dtype=dtype, device=self.device)
        return buf[:size].view(shape)


def _forward_spectra(plan: _Plan, xc: torch.Tensor, q0: int, nqc: int, spectra: torch.Tensor,
                     batch: int) -> None:
    """Write the 3D spectra of one channel chunk xc (cc, D, H, W) (any float dtype) for x-frequencies
    q0 .. q0+nqc-1 into ``spectra`` (nqc, n, n_d, nb, nty, 2, ntx, >= cc) (frequencies x, y, depth in
    :func:`frequency_order`; columns (batch, depth tile), y tile, re/im, x tile; channels).

    Three transposed-output products (x: real DFT rows for the chunk's frequencies; y, depth: cos/sin
    basis) leave (depth, y, x freq, re/im, x tile, channel); the y and depth butterflies turn the
    cos/sin parts into complex frequencies, the second one writing into ``spectra``.
    """
    n, nd = plan.n, plan.nd
    cc, d, h, w = xc.shape
    bx = _rfft_basis(n)[2 * q0: 2 * (q0 + nqc)].to(xc.device)
    cy, cd = _cos_sin_basis(n).to(xc.device), _cos_sin_basis(nd).to(xc.device)
    rows = cc * d * h
    l1 = plan.buffer("l1", (2 * nqc, plan.ntx, rows))
    block = cc if xc.dtype == torch.float32 else CONVERT_CHANNELS
    for c0 in range(0, cc, block):  # other dtypes: converted a few channels at a time
        part = xc[c0: c0 + block]
        if part.dtype != torch.float32:
            part = plan.buffer("x", tuple(part.shape)).copy_(part)
        xv, r0 = part.view(-1, w), c0 * d * h
        for i, (lo, hi, j0, j1) in enumerate(plan.xt):
            torch.mm(bx[:, j0:j1], xv[:, lo:hi].t(), out=l1[:, i, r0: r0 + xv.shape[0]])
    l1 = l1.view(-1, h)  # rows (x freq, re/im, x tile, channel, depth), columns y
    for ty, (lo, hi, j0, j1) in enumerate(plan.yt):
        l2 = plan.buffer("l2", (n, l1.shape[0]))
        torch.mm(cy[:, j0:j1], l1[:, lo:hi].t(), out=l2)
        # The y butterfly commutes with the depth pass: done here on 16 instead of 22 depth rows.
        u = plan.buffer("u", (n, nqc, 2, plan.ntx, cc, d))
        _butterfly(l2.view(u.shape), u, 0, 2)
        u = u.view(-1, d)  # rows (y freq, x freq, re/im, x tile, channel), columns depth
        for di, (dlo, dhi, f0, f1) in enumerate(plan.dt):
            l3 = plan.buffer("l3", (nd, u.shape[0]))
            torch.mm(cd[:, f0:f1], u[:, dlo:dhi].t(), out=l3)
            dst = spectra[:, :, :, batch * plan.ntd + di, ty, :, :, :cc].permute(2, 1, 0, 3, 4, 5)
            _butterfly(l3.view(nd, n, nqc, 2, plan.ntx, cc), dst, 0, 3)


def _products(plan: _Plan, kern: FFTKernels, q0: int, nqc: int, j: int, cc: int,
              spectra: torch.Tensor, out: torch.Tensor) -> None:
    """Add chunk j's per-frequency products to ``out`` (F, 2 Cout, ntiles) float32 (F = nqc * n * n_d;
    j = 0 overwrites). ``spectra`` (F, ntiles, >= cc): its first ``cc`` channels are chunk j's."""
    n, nd, cout = plan.n, plan.nd, plan.cout
    spec = spectra[:, :, :cc].transpose(1, 2)  # (F, cc, ntiles)
    if not kern.depth_taps:  # cached 3D kernels: one product for the whole step
        weights = kern.spectra[j, q0: q0 + nqc].view(-1, 2 * cout, kern.channel_step)[:, :, :cc]
        if weights.dtype == torch.float32:
            if j == 0:
                torch.bmm(weights, spec, out=out)
            else:
                out.baddbmm_(weights, spec)
            return
        part = torch.bmm(weights, spec)  # bf16 (oneDNN, float32 accumulation inside)
        if j == 0:
            out.copy_(part)
        else:
            out.add_(part)
        return
    twiddles = _depth_twiddles(plan.k, nd).to(out.device)
    per_x = n * nd
    for qi in range(nqc):  # depth-transform the taps of one x-frequency, then multiply
        taps = kern.spectra[j, q0 + qi]  # (n, 2k, Cout * cc_max)
        weights = plan.buffer("w3", (n, 2 * nd, taps.shape[-1]))
        torch.matmul(twiddles, taps, out=weights)
        weights = weights.view(per_x, 2 * cout, kern.channel_step)[:, :, :cc]
        rows = slice(qi * per_x, (qi + 1) * per_x)
        if j == 0:
            torch.bmm(weights, spec[rows], out=out[rows])
        else:
            out[rows].baddbmm_(weights, spec[rows])


def _inverse(plan: _Plan, prod: torch.Tensor, q0: int, nqc: int, acc: torch.Tensor) -> None:
    """Add the inverse transform of x-frequencies q0.. of the products ``prod`` (F, 2 Cout, ntiles)
    to ``acc`` (t_d * t, t, Cout * nb * nty * ntx) float32 (output voxels of every tile).

    The complex output spectra are formed once, as real and imaginary planes (re/im, depth, y, x,
    Cout, tiles); the depth and y inverses are real products with :func:`_complex_block` matrices
    and the x inverse keeps only the real part, accumulated over the x-frequency steps. Measured
    16 ms at full size (complex64 products with the combined spectra: 23 ms).
    """
    n, nd, cout, nb = plan.n, plan.nd, plan.cout, plan.nb
    ed, ey, ex = (m.to(acc.device) for m in _inverse_bases(n, nd, plan.k))
    td, t = ed.shape[0] // 2, ey.shape[0] // 2
    # (re K + i im K)(re X + i im X): real = re.re - im.im, imaginary = im.re + re.im.
    p = prod.view(nqc, n, nd, 2, cout, nb, plan.nty, 2, plan.ntx)  # (.., re/im of K, .., re/im of X, ..)
    z = plan.buffer("z", (2, nd, n, nqc, cout, nb, plan.nty, plan.ntx))
    zre, zim = z[0].permute(2, 1, 0, 3, 4, 5, 6), z[1].permute(2, 1, 0, 3, 4, 5, 6)
    torch.sub(p[:, :, :, 0, :, :, :, 0], p[:, :, :, 1, :, :, :, 1], out=zre)
    torch.add(p[:, :, :, 0, :, :, :, 1], p[:, :, :, 1, :, :, :, 0], out=zim)
    depth = torch.mm(ed, z.view(2 * nd, -1)).view(td, 2 * n, -1)  # (t_d, (re/im, y), x * R)
    rows = torch.matmul(ey, depth)  # (t_d, (t, re/im), x * R)
    cols = ex[:, :, q0: q0 + nqc].reshape(t, 2 * nqc)
    acc.baddbmm_(cols.expand(td * t, t, 2 * nqc), rows.view(td * t, 2 * nqc, -1))


def fft_conv3d(x: torch.Tensor, kernels: FFTKernels, bias: torch.Tensor | None, kernel_size: int,
               x_step: int = X_STEP) -> torch.Tensor:
    """``conv3d(x, weight, bias, padding=kernel_size // 2)`` from :func:`fft_kernels` of ``weight``.

    x (B,Cin,D,H,W) any float dtype and memory format -> (B,Cout,D,H,W) in x's dtype and memory
    format (transforms in float32; products in the 3D kernels' dtype). ``x_step`` x-frequencies
    per step (:data:`X_STEP`). Timings and memory: see the module docstring.
    """
    kern = kernels
    k = kernel_size
    if x.dim() != 5 or k != kern.kernel_size or x.shape[1] != kern.in_channels:
        raise ValueError("fft_conv3d: x must be (B,Cin,D,H,W) with the kernels' Cin and kernel size")
    n, nd, cout = kern.n, kern.depth_n, kern.out_channels
    b, cin, d, h, w = x.shape
    nq = n // 2 + 1
    step = max(1, min(x_step, nq))
    plan = _Plan.make(n, nd, k, cout, x.shape, x.device)
    t, td = n - k + 1, nd - k + 1
    spec_dtype = torch.float32 if kern.depth_taps else kern.spectra.dtype
    cc_max = kern.channel_step
    # Channels transformed at a time (written into channel slices of the spectra): a kernel
    # chunk, for bf16 3D kernels at most a CHANNEL_CHUNKS_BF16-th of the input channels.
    group = cc_max
    if not kern.depth_taps and kern.spectra.dtype == torch.bfloat16:
        group = min(cc_max, -(-cin // CHANNEL_CHUNKS_BF16))
    inputs = [channels_first_copy(x[bi]) for bi in range(b)]
    acc = torch.zeros(td * t, t, cout * plan.nb * plan.nty * plan.ntx, device=x.device)
    for q0 in range(0, nq, step):
        nqc = min(step, nq - q0)
        freqs = nqc * n * nd
        prod = plan.buffer("prod", (freqs, 2 * cout, plan.ntiles))
        for j in range(kern.chunks):
            c0, c1 = j * cc_max, min(cin, (j + 1) * cc_max)
            spectra = plan.buffer("spectra", (freqs, plan.ntiles, cc_max), spec_dtype)
            grid = spectra.view(nqc, n, nd, plan.nb, plan.nty, 2, plan.ntx, cc_max)
            for g0 in range(c0, c1, group):
                g1 = min(c1, g0 + group)
                for bi in range(b):
                    _forward_spectra(plan, inputs[bi][g0:g1], q0, nqc, grid[..., g0 - c0:g1 - c0], bi)
            _products(plan, kern, q0, nqc, j, c1 - c0, spectra, prod)
        _inverse(plan, prod, q0, nqc, acc)
    if bias is not None:
        acc.view(td * t, t, cout, -1).add_(bias.float().view(cout, 1))
    tiled = acc.view(td, t, t, cout, b, plan.ntd, plan.nty, plan.ntx).permute(4, 3, 5, 0, 6, 1, 7, 2)
    out = torch.empty((b, cout, d, h, w), dtype=x.dtype, device=x.device, memory_format=memory_format(x))
    full = (plan.ntd * td, plan.nty * t, plan.ntx * t)
    if full == (d, h, w):
        out.view(b, cout, plan.ntd, td, plan.nty, t, plan.ntx, t).copy_(tiled)
    else:
        padded = torch.empty((b, cout, *full), device=x.device)
        padded.view(b, cout, plan.ntd, td, plan.nty, t, plan.ntx, t).copy_(tiled)
        out.copy_(padded[:, :, :d, :h, :w])
    return out

"""Exact FFT form of a large-kernel 3D convolution (LivePortrait's 7x7x7 dense-motion ``mask`` layer).

``conv3d(x, w, b, padding=k // 2)`` with a k x k x k kernel: the (H, W) plane is cut into
overlapping tiles of n x n pixels (t = n - k + 1 output pixels each, overlap-save), each tile is
Fourier transformed once, and for every frequency the sum over input channels and the k depth taps
is a small matrix product with the (cached) transformed kernels. Depth taps are summed directly,
so only 2D transforms are needed and the transformed kernels stay small (k * n * (n // 2 + 1)
complex values per channel pair). The result equals the direct convolution up to float32 rounding
(relative error about 2e-7 against a float64 reference, below the direct float32 convolution's).

Cost at full size (142 -> 22 channels, 16 x 64 x 64, k = 7, n = 22): about 12 GFLOP of matrix
products instead of 140 GFLOP. Everything runs in float32 (also for reduced-precision inputs, whose
result is cast back).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layout import memory_format

#: FFT tile size: 22 gives 16 output pixels per tile, so a 64-pixel side is exactly 4 tiles.
TILE_FFT = 22
#: Input channels are transformed in this many chunks (bounds the transient memory).
CHANNEL_CHUNKS = 4
#: Rows of tiles transformed and multiplied together (wider products, more transient memory).
ROWS_PER_STEP = 1


def fft_kernels(weight: torch.Tensor, n: int = TILE_FFT, chunks: int = CHANNEL_CHUNKS) -> torch.Tensor:
    """Transformed kernels of a (Cout,Cin,k,k,k) weight for :func:`fft_conv3d`, float32.

    Returns (chunks, k, n * (n // 2 + 1), 2 * Cout, cc) with cc = ceil(Cin / chunks) (zero
    channels pad the last chunk): for input-channel chunk j, depth tap kd and frequency f the rows
    are the real parts then the imaginary parts of conj(rfft2(w[:, chunk j, kd] zero-padded to
    n x n)), so one real matrix product per frequency gives both halves of the complex product.
    Memory: about 8 * k * n * (n // 2 + 1) * Cout * Cin bytes (46 MB for the mask layer).
    """
    cout, cin, k = weight.shape[:3]
    cc = -(-cin // chunks)
    out = weight.new_zeros((chunks, k, n * (n // 2 + 1), 2 * cout, cc), dtype=torch.float32)
    for kd in range(k):  # one depth tap at a time keeps the transient memory small
        w = F.pad(weight[:, :, kd].float(), (0, n - k, 0, n - k))  # (Cout,Cin,n,n)
        wf = torch.fft.rfft2(w).conj().permute(2, 3, 0, 1).reshape(-1, cout, cin)  # (F,Cout,Cin)
        for j in range(chunks):
            part = wf[:, :, j * cc: (j + 1) * cc]
            out[j, kd, :, :cout, : part.shape[-1]] = part.real
            out[j, kd, :, cout:, : part.shape[-1]] = part.imag
    return out


def fft_conv3d(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None, kernel_size: int,
               n: int = TILE_FFT, rows_per_step: int = ROWS_PER_STEP) -> torch.Tensor:
    """``conv3d(x, weight, bias, padding=kernel_size // 2)`` from :func:`fft_kernels` of ``weight``.

    x (B,Cin,D,H,W) any float dtype and memory format -> (B,Cout,D,H,W) in x's dtype and memory
    format. Works on ``rows_per_step`` rows of tiles and one channel chunk at a time: transient
    memory about 3 * 8 * cc * (D + k - 1) * n * (n // 2 + 1) * rows_per_step * ceil(W / t) bytes
    (about 40 MB for the mask layer, below the hourglass' own peak).
    """
    k = kernel_size
    p = k // 2
    t = n - k + 1
    b, cin, d, h, w = x.shape
    chunks, cc = kernels.shape[0], kernels.shape[-1]
    cout = kernels.shape[3] // 2
    nfreq = kernels.shape[2]
    nty, ntx = math.ceil(h / t), math.ceil(w / t)
    fmt = memory_format(x)
    out = torch.empty((b, cout, d, nty * t, ntx * t), dtype=torch.float32, device=x.device)
    for bi in range(b):
        for ty0 in range(0, nty, rows_per_step):
            nr = min(rows_per_step, nty - ty0)
            ntiles = nr * ntx
            prod = torch.empty((nfreq, 2 * cout, d * ntiles * 2), dtype=torch.float32, device=x.device)
            # Input rows ty0*t - p .. (ty0+nr-1)*t - p + n - 1 (zeros outside the map).
            lo, hi = ty0 * t - p, (ty0 + nr - 1) * t - p + n
            for j in range(chunks):
                part = x[bi, j * cc: (j + 1) * cc, :, max(lo, 0): min(hi, h)].float()
                slab = F.pad(part, (p, p + ntx * t - w, max(-lo, 0), max(hi - h, 0), p, p))  # (c,Dp,rows,Wp)
                c = slab.shape[0]
                tiles = slab.unfold(2, n, t).unfold(3, n, t).contiguous()  # (c,Dp,nr,ntx,n,n)
                del slab
                spec = torch.fft.rfft2(tiles)  # (c,Dp,nr,ntx,n,n//2+1), frequencies innermost
                del tiles
                # Frequency-major for the batched products, (F, c, Dp, tiles) as real pairs: a plain
                # 2D transpose (much faster than the equivalent 6D permute).
                spec = spec.view(-1, nfreq).t().contiguous()
                spec = torch.view_as_real(spec).view(nfreq, c, d + 2 * p, ntiles * 2)
                for kd in range(k):
                    taps = spec[:, :, kd: kd + d].reshape(nfreq, c, d * ntiles * 2)
                    weights = kernels[j, kd, :, :, :c]
                    if kd == 0 and j == 0:
                        torch.bmm(weights, taps, out=prod)
                    else:
                        prod.baddbmm_(weights, taps)
                del spec
            re = prod[:, :cout].view(nfreq, cout, d * ntiles, 2)
            im = prod[:, cout:].view(nfreq, cout, d * ntiles, 2)
            # (a + ib)(c + id) with a + ib the kernel: real = ac - bd, imaginary = ad + bc.
            spec_out = torch.complex(re[..., 0] - im[..., 1], re[..., 1] + im[..., 0])
            spec_out = spec_out.reshape(n, n // 2 + 1, cout, d, nr, ntx)
            tile_out = torch.fft.irfft2(spec_out, s=(n, n), dim=(0, 1))[:t, :t]  # (t,t,Cout,D,nr,ntx)
            out[bi, :, :, ty0 * t: (ty0 + nr) * t].copy_(
                tile_out.permute(2, 3, 4, 0, 5, 1).reshape(cout, d, nr * t, ntx * t))
    if bias is not None:
        out.add_(bias.float().reshape(1, -1, 1, 1, 1))
    return out[:, :, :, :h, :w].to(dtype=x.dtype, memory_format=fmt)

"""Winograd F(2x2, 3x3) over (H, W) for the 3x3x3 convolutions of the warping network (bf16, CPU).

A 3x3x3 convolution (stride 1, zero padding 1) is, per output depth d, the sum over the depth
taps dz = 0, 1, 2 of 3x3 convolutions of input plane d + dz - 1. Each 2D convolution runs as
Winograd F(2x2, 3x3): the tiles of every input plane are transformed once (16 transform points
per 2x2 output tile) and, for output plane d, the three transformed planes d - 1, d, d + 1 are
multiplied by the matching transformed kernel slices and summed in the transform domain (one
batched GEMM per depth tap, accumulated in place), so the output transform runs once per output
plane. 16 * 3 multiply-adds per 4 outputs instead of 27 * 4: 2.25x fewer than the direct form.
Planes are processed output plane by output plane over a ring of three transformed input planes
and in bands of tile rows, so the transformed tiles stay in cache.

The transforms, their storage order and the zero-padded band input transform are those of the 2D
path (:mod:`kdtalker_core.backends.winograd`): weights transformed in float32 then rounded once,
the input transform in the input's dtype, the bias at transform point (1, 1). The three depth taps
are accumulated in place (two bf16 roundings more than one GEMM with K = 3 Cin, but no stacked copy
of the transformed tiles, which cost more than the GEMM saved).

Error (bf16, unit-variance data, full-size 142->142 at 16x64x64, vs float32 conv3d on the same
rounded inputs): 5.3e-3 max-relative vs 2.1e-3 for oneDNN's direct bf16 convolution (2.5x); RMS
vs the float32 convolution of the unrounded data 5.1e-3 vs 2.6e-3. As for the 2D path, a probe
(:func:`direct_clearly_faster`) turns it off on CPUs where oneDNN's direct convolution is clearly
faster. ``KDTALKER_BF16_WINOGRAD3D=0|1`` turns it off / on whatever the shape rule in
:func:`preferred` and the probe say.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import winograd
from .layout import memory_format

#: Bytes of one plane's transformed tiles per band of tile rows. 1 and 2 MiB measured equal on one
#: thread (4 MiB and more slower: out of cache); 2 MiB keeps the elementwise transform ops above
#: PyTorch's parallel grain size, so they also split over threads.
BAND_BYTES = 2 << 20


def transform_weight3d(weight: torch.Tensor) -> torch.Tensor:
    """weight (Cout,Cin,3,3,3) -> U (3, 16, Cin, Cout) contiguous in weight's dtype (made in float32):
    U[dz] is :func:`kdtalker_core.backends.winograd.transform_weight` of depth tap dz."""
    return torch.stack([winograd.transform_weight(weight[:, :, dz]) for dz in range(3)])


def conv3x3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, relu: bool = False,
              band_bytes: int = BAND_BYTES) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=1)`` by depth-folded Winograd; ``u = transform_weight3d(weight)``.

    x (B,Cin,D,H,W) with H, W even, any memory format; u (3,16,Cin,Cout) and bias (Cout,) in x's
    dtype -> (B,Cout,D,H,W) channels-last-3d in x's dtype. The output transform is one matrix
    product per output plane (float32 accumulation inside the GEMM). Tile rows are processed in
    bands of about ``band_bytes`` of transformed tiles per plane so that they stay in cache.
    ``relu`` applies a ReLU while the outputs are stored (no extra pass).
    """
    b, c, d, h, w = x.shape
    cout = u.shape[3]
    th, tw = h // 2, w // 2
    xv = x.permute(0, 2, 3, 4, 1).reshape(b * d, h, w, c)  # channels innermost (a view if channels-last)
    a = winograd.output_matrix(x.dtype, x.device)
    out = torch.empty(b, cout, d, h, w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    tiles = out.permute(0, 2, 3, 4, 1).view(b, d, th, 2, tw, 2, cout)
    band = max(1, min(th, band_bytes // (16 * tw * max(c, cout) * x.element_size())))
    # Buffers reused across bands and planes (sized for a full band, viewed smaller for the last).
    ring_bufs = [winograd.scratch_buffer(f"ring{k}", 16 * band * tw * c, x) for k in range(3)]
    scratch = winograd.BandScratch(x, 1, band)
    m_buf = winograd.scratch_buffer("m", 16 * band * tw * cout, x)
    y_buf = winograd.scratch_buffer("y", 4 * band * tw * cout, x)
    for t0 in range(0, th, band):
        n = min(band, th - t0)
        ring = [r[:16 * n * tw * c].view(4, 4, 1, n, tw, c) for r in ring_bufs]
        m = m_buf[:16 * n * tw * cout].view(16, n * tw, cout)
        y = y_buf[:4 * n * tw * cout].view(4, n * tw * cout)
        for i in range(b):
            # Ring of the transformed tiles of three consecutive input planes, (16, n*tw, Cin) each.
            winograd.transform_band(xv[i * d: i * d + 1], t0, n, scratch, ring[1])
            for j in range(d):  # output plane j: depth taps 0, 1, 2 read input planes j - 1, j, j + 1
                if j + 1 < d:
                    winograd.transform_band(xv[i * d + j + 1: i * d + j + 2], t0, n, scratch, ring[(j + 2) % 3])
                below, same, above = (ring[(j + k) % 3].view(16, n * tw, c) for k in range(3))
                torch.bmm(same, u[1], out=m)  # (16, n*tw, Cout)
                if j > 0:
                    m.baddbmm_(below, u[0])
                if j + 1 < d:
                    m.baddbmm_(above, u[2])
                if bias is not None:
                    m[winograd.BIAS_POINT].add_(bias)
                torch.mm(a, m.view(16, -1), out=y)
                y_tiles = y.view(2, 2, n, tw, cout).permute(2, 0, 3, 1, 4)
                if relu:
                    torch.clamp_min(y_tiles, 0, out=tiles[i, j, t0:t0 + n])
                else:
                    tiles[i, j, t0:t0 + n].copy_(y_tiles)
    return out


#: The dtypes this path runs in (float32 would lose against oneDNN's direct convolution).
DTYPES = (torch.bfloat16,)


def applicable(conv: nn.Conv3d) -> bool:
    """Whether ``conv`` is a plain 3x3x3 convolution (stride 1, padding 1, no dilation / groups)."""
    return (tuple(conv.kernel_size) == (3, 3, 3) and tuple(conv.stride) == (1, 1, 1)
            and tuple(conv.padding) == (1, 1, 1) and tuple(conv.dilation) == (1, 1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def _probe_calls() -> tuple[Callable[[], object], Callable[[], object]]:
    """A dense-motion-like bf16 channels-last-3d convolution, 128->128 at 8x32x32 (Zen 5, one
    thread, heap reuse on: this path 11.2 ms, oneDNN 16.2 ms)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 8, 32, 32, generator=gen).to(torch.bfloat16, memory_format=torch.channels_last_3d)
    w = (0.02 * torch.randn(128, 128, 3, 3, 3, generator=gen)).to(torch.bfloat16,
                                                                  memory_format=torch.channels_last_3d)
    b = torch.zeros(128, dtype=torch.bfloat16)
    u = transform_weight3d(w)
    return (lambda: conv3x3x3(x, u, b)), (lambda: F.conv3d(x, w, b, padding=1))


def direct_clearly_faster() -> bool:
    """:func:`kdtalker_core.backends.winograd.probe_says_direct` for this path (cached; about
    0.1 s the first time)."""
    return winograd.probe_says_direct("conv3d", _probe_calls)


def preferred(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv3x3x3` should replace oneDNN for this 3x3x3 convolution of x (B,Cin,D,H,W).

    Only CPU, :data:`DTYPES`, channels-last-3d input, even H and W. Shape rule from single-thread
    measurements on a Zen 5 EPYC (AVX512-BF16, no AMX), D = 16 (direct ms -> this ms): it wins with
    at least 128 input and output channels (142->142 at 64x64: 136 -> 105; 128->128 at 64x64:
    103 -> 76) and loses with fewer output channels (110->64 at 64x64: 44 -> 48; 128->32: 26 -> 35);
    64->128 at 32x32 (13.7 -> 12.0 alone) gained nothing inside the warping network. Off where the
    probe finds oneDNN clearly faster on this CPU (:func:`direct_clearly_faster`).
    ``KDTALKER_BF16_WINOGRAD3D`` = ``0`` / ``1`` overrides the channel rule and the probe.
    """
    if (x.device.type != "cpu" or x.dtype not in DTYPES or weight.dtype != x.dtype or x.dim() != 5
            or tuple(weight.shape[2:]) != (3, 3, 3) or x.shape[3] % 2 or x.shape[4] % 2
            or memory_format(x) != torch.channels_last_3d):
        return False
    forced = os.environ.get("KDTALKER_BF16_WINOGRAD3D", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return weight.shape[0] >= 128 and weight.shape[1] >= 128 and not direct_clearly_faster()

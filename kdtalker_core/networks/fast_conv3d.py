"""Exact fast forms of the warping network's 3D convolutions (same numbers up to float rounding).

- :func:`fold_batchnorm`: an eval-mode BatchNorm after a convolution folded into its weight and bias
  (one pass over the output less).
- :func:`upsample_phase_kernels` / :func:`conv3x3x3_upsampled`: a 3x3x3 convolution (padding 1)
  over a map nearest-upsampled x2 in (H, W) computed on the low-resolution map. Output pixels of
  one phase (py, px) = (row parity, column parity) see every low-resolution pixel through a
  3 x 2 x 2 kernel whose taps are the sums of the 3x3x3 taps landing on that pixel, so the four
  phases take 4 * 12 = 48 low-resolution taps instead of 4 * 27: 2.25x fewer multiply-adds, and no
  upsampled copy.
- :class:`KernelCache`: a module mixin caching such derived kernels, dropped whenever parameters
  move / change dtype or a state dict is loaded.

The FFT convolution of the 7x7x7 ``mask`` layer lives in :mod:`.fft_conv3d`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernel_cache import KernelCache  # noqa: F401 - re-exported: the W modules cache through it
from .layout import memory_format

#: Smallest low-resolution H*W for which the phase form beats interpolate + conv3d (measured on an
#: AVX-512 EPYC, fp32 and bf16: at 2x2 and 4x4 the direct convolution is as fast or faster, and
#: those layers' phase kernels would cost ~150 MB in float32).
PHASE_MIN_PIXELS = 64


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None,
                   norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``norm(conv(x))`` as one convolution (``norm`` in eval mode).

    weight (Cout,Cin,*k), bias (Cout,) or None -> (weight * s, (bias - mean) * s + beta) with
    s = gamma / sqrt(running_var + eps), computed in float32 and returned in the weight's dtype and
    memory format.
    """
    scale = norm.running_var.float().add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.float()
    shift = -norm.running_mean.float() * scale
    if bias is not None:
        shift = shift + bias.float() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.float()
    w = weight.float() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return w.to(dtype=weight.dtype, memory_format=memory_format(weight)), shift.to(weight.dtype)


def _phase_sums(w: torch.Tensor, axis: int, phase: int) -> torch.Tensor:
    """Along ``axis`` (3 taps), the 2 low-resolution taps of output ``phase`` of x2 nearest upsampling.

    Phase 0 reads low-res offsets (-1, 0) with taps (w0, w1 + w2); phase 1 reads (0, +1) with
    (w0 + w1, w2).
    """
    t0, t1, t2 = w.unbind(axis)
    pair = (t0, t1 + t2) if phase == 0 else (t0 + t1, t2)
    return torch.stack(pair, dim=axis)


def upsample_phase_kernels(weight: torch.Tensor) -> list[torch.Tensor]:
    """The four (py, px) phase kernels of a 3x3x3 convolution over a map upsampled x2 in (H, W).

    weight (Cout,Cin,3,3,3) -> [k00, k01, k10, k11], each (Cout,Cin,3,2,2); phase (py, px) reads
    low-resolution rows from offset py - 1 and columns from px - 1. Sums run in float32; kernels
    come back in the weight's dtype and memory format.
    """
    w32 = weight.float()
    fmt = memory_format(weight)
    kernels = []
    for py in range(2):
        rows = _phase_sums(w32, 3, py)
        for px in range(2):
            kernels.append(_phase_sums(rows, 4, px).to(dtype=weight.dtype, memory_format=fmt))
    return kernels


def conv3x3x3_upsampled(x: torch.Tensor, kernels: list[torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
    """``conv3d(interpolate(x, scale_factor=(1, 2, 2)), weight, bias, padding=1)`` from phase kernels.

    x (B,Cin,D,H,W); kernels from :func:`upsample_phase_kernels` -> (B,Cout,D,2H,2W) in x's dtype,
    channels-last-3d when x or the kernels are (as oneDNN's convolution would return it).
    """
    b, _, d, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))  # zero border in H and W; depth padding is the convolution's
    fmt = memory_format(x)
    if fmt == torch.contiguous_format:
        fmt = memory_format(kernels[0])
    out = torch.empty((b, kernels[0].shape[0], d, 2 * h, 2 * w), dtype=x.dtype, device=x.device,
                      memory_format=fmt)
    for i, k in enumerate(kernels):
        py, px = divmod(i, 2)
        window = xp[:, :, :, py: py + h + 1, px: px + w + 1]
        out[:, :, :, py::2, px::2] = F.conv3d(window, k, bias, padding=(1, 0, 0))
    return out


def use_phase_form(x: torch.Tensor) -> bool:
    """Whether :func:`conv3x3x3_upsampled` is worth it for low-resolution input x (B,C,D,H,W)."""
    return x.shape[-1] * x.shape[-2] >= PHASE_MIN_PIXELS

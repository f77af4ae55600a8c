"""NNPACK Winograd 3x3 convolutions (float32, CPU) behind a feature check and a measured probe.

``torch._nnpack_spatial_convolution`` is a private PyTorch entry point: this module is the only
place that calls it. :func:`conv3x3` falls back to the public ``F.conv2d`` (oneDNN on the CPU)
whenever NNPACK is missing, declines a shape, or fails at run time.

Whether NNPACK is worth using depends on the machine: on AVX2-only CPUs its Winograd kernels were
measured 2.5-3x faster than oneDNN's direct float32 convolution; on AVX-512 CPUs oneDNN (with
channels-last activations) may win, and a build may lack NNPACK or fail in it at run time (NNPACK
also fails every call made before it is initialised by ``torch._nnpack_available()``, which
:func:`works` does). :func:`preferred` decides per machine
by a short timed probe (about 0.3 s, once per process and thread count). ``KDTALKER_NNPACK=0|1``
overrides the probe (``1`` still requires NNPACK to work).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from .timing import best_seconds

#: Probe shape: one decoder-like 3x3 convolution (channels, height = width).
_PROBE_CHANNELS = 256
_PROBE_SIZE = 64


def compiled() -> bool:
    """True when this PyTorch build ships NNPACK (this call also initialises it: NNPACK
    convolutions called before the first ``torch._nnpack_available()`` fail)."""
    fn = getattr(torch, "_nnpack_available", None)
    try:
        return bool(fn()) if fn is not None else False
    except RuntimeError:
        return False


def _nnpack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch._nnpack_spatial_convolution(x, weight, bias, [1, 1])


@functools.lru_cache(maxsize=1)
def works() -> bool:
    """True when NNPACK runs a decoder-sized 3x3 convolution here and matches ``F.conv2d``.

    Builds with NNPACK may still fail at run time on some CPUs; the check runs once per process.
    """
    if not compiled():
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, _PROBE_SIZE, _PROBE_SIZE, generator=gen)
    w = 0.05 * torch.randn(64, 64, 3, 3, generator=gen)
    b = torch.randn(64, generator=gen)
    try:
        with torch.inference_mode():
            got = _nnpack(x, w, b)
            want = F.conv2d(x, w, b, padding=1)
    except RuntimeError:
        return False
    return bool(torch.allclose(got, want, atol=1e-3, rtol=1e-3))


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1, through NNPACK where it runs, else ``F.conv2d``.

    x (B,Cin,H,W) float32 on the CPU, weight (Cout,Cin,3,3), bias (Cout,) or None ->
    (B,Cout,H,W) NCHW. Frames differ from the direct convolution by ~1e-5 relative (Winograd).
    NNPACK's batch-1 path is several times faster than its batched one and gives the same numbers
    whatever the batch, so samples go one at a time.
    """
    if not works():  # also initialises NNPACK: calls before that fail
        return F.conv2d(x, weight, bias, padding=1)
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    weight = weight.contiguous()
    try:
        outs = [_nnpack(x[i:i + 1].contiguous(), weight, bias) for i in range(x.shape[0])]
    except RuntimeError:  # a shape NNPACK declines: the direct convolution is always right
        return F.conv2d(x, weight, bias, padding=1)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


@functools.lru_cache(maxsize=8)
def _probe(threads: int) -> bool:
    """True when NNPACK beats oneDNN (channels-last float32) on a decoder-sized convolution."""
    del threads  # part of the cache key only: the answer depends on the thread count
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, _PROBE_CHANNELS, _PROBE_SIZE, _PROBE_SIZE, generator=gen)
    w = 0.02 * torch.randn(_PROBE_CHANNELS, _PROBE_CHANNELS, 3, 3, generator=gen)
    b = torch.zeros(_PROBE_CHANNELS)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = w.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        try:
            t_nnpack = best_seconds(lambda: _nnpack(x, w, b))
        except RuntimeError:
            return False
        t_onednn = best_seconds(lambda: F.conv2d(x_cl, w_cl, b, padding=1))
    return t_nnpack < t_onednn


def preferred(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether float32 3x3 convolutions on ``device`` should go through NNPACK on this machine.

    False off the CPU, for any dtype but float32, and where NNPACK does not work; otherwise the
    answer of a timed probe (NNPACK vs oneDNN channels-last), unless ``KDTALKER_NNPACK`` is
    ``0`` or ``1``.
    """
    if torch.device(device).type != "cpu" or dtype != torch.float32 or not works():
        return False
    forced = os.environ.get("KDTALKER_NNPACK", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _probe(torch.get_num_threads())

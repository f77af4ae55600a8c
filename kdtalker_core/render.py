"""Chunked rendering: warp the source appearance volume to every driving frame, then decode.

Frames are produced chunk by chunk on the compute device, so device memory depends on
``chunk_size``, not on the number of frames. Batching frames gives the same numbers as the
official one-frame-at-a-time loop (every operation is per sample).

Precision: float32 by default. float16 / bfloat16 run the convolutions under autocast while the
sampling grids, softmax, grid sampling, instance-norm statistics and the final sigmoid stay in
float32 (see :mod:`kdtalker_core.networks.dense_motion` and :mod:`kdtalker_core.networks.spade`).
Reduced precision only pays off on hardware with fast half-precision math (CUDA, or CPUs with
AVX512-BF16 / AMX); :func:`preferred_dtype` picks a sensible default.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch

from .errors import InputError
from .networks.spade import winograd_convolutions

_DTYPES = {torch.float32, torch.float16, torch.bfloat16}


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def preferred_dtype(device: torch.device | str) -> torch.dtype:
    """A fast, accurate default rendering dtype for ``device``.

    CUDA: bfloat16 when supported, else float16. CPU: bfloat16 only with native bf16 instructions
    (emulated bf16 convolutions are orders of magnitude slower than float32), else float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def _validate(feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
              chunk_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if feature_3d.ndim != 5 or feature_3d.shape[0] != 1:
        raise InputError(
            f"feature_3d must have shape (1,C,D,H,W), got {tuple(feature_3d.shape)}; "
            "pass the appearance volume of one portrait"
        )
    if kp_source.ndim == 2:
        kp_source = kp_source.unsqueeze(0)
    if kp_source.ndim != 3 or kp_source.shape[0] != 1 or kp_source.shape[-1] != 3:
        raise InputError(f"kp_source must have shape (1,K,3), got {tuple(kp_source.shape)}")
    if kp_driving.ndim != 3 or kp_driving.shape[1:] != kp_source.shape[1:]:
        raise InputError(
            f"kp_driving must have shape (T,{kp_source.shape[1]},3), got {tuple(kp_driving.shape)}"
        )
    if kp_driving.shape[0] == 0:
        raise InputError("kp_driving has no frames; give at least one driving frame")
    if int(chunk_size) < 1:
        raise InputError(f"chunk_size must be at least 1, got {chunk_size}")
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of float32, float16, bfloat16, got {dtype}")
    return kp_source, kp_driving


def render_frames(
    warping_network: torch.nn.Module,
    spade_decoder: torch.nn.Module,
    feature_3d: torch.Tensor,
    kp_source: torch.Tensor,
    kp_driving: torch.Tensor,
    *,
    chunk_size: int = 8,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, int], None] | None = None,
    channels_last: bool | None = None,
    winograd: bool | None = None,
    micro_batch: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield rendered frames chunk by chunk.

    warping_network / spade_decoder: :class:`WarpingNetwork` / :class:`SPADEDecoder` in eval mode
    on the device of ``feature_3d``. feature_3d (1,C,D,H,W) source appearance volume;
    kp_source (1,K,3) source keypoints; kp_driving (T,K,3) driving keypoints (moved to the
    device here). Yields float32 frames (n,H_img,W_img,3) in [0,1] on the device (ComfyUI IMAGE
    layout), n <= chunk_size, T frames in all. ``callback(done, total)`` runs after each chunk
    is computed, before it is yielded (it may raise to cancel). No host synchronisation happens
    here. ``channels_last`` (default: on CUDA) runs the 2D decoder in channels-last memory format.
    ``winograd`` (default: float32 on CPU) runs the decoder's 3x3 convolutions with NNPACK's
    Winograd kernels (~2.5x faster there; frames differ from the direct convolution by ~1e-5).
    ``micro_batch`` frames go through the networks at once (default: 1 on CPU, where batching
    was measured 10-15% slower per frame, else ``chunk_size``); the numbers do not depend on it.
    """
    kp_source, kp_driving = _validate(feature_3d, kp_source, kp_driving, chunk_size, dtype)
    device = feature_3d.device
    kp_source = kp_source.to(device=device, dtype=torch.float32)
    kp_driving = kp_driving.to(device=device, dtype=torch.float32)
    if channels_last is None:
        channels_last = device.type == "cuda"
    if winograd is None:
        winograd = device.type == "cpu" and dtype == torch.float32
    if device.type == "cpu" and dtype != torch.float32 and not cpu_has_fast_bf16():
        warnings.warn(
            f"{dtype} rendering on a CPU without native bf16 instructions uses PyTorch's slow "
            "reference kernels (far slower than float32); use float32 or preferred_dtype('cpu')",
            RuntimeWarning, stacklevel=2,
        )
    total = kp_driving.shape[0]
    chunk_size = int(chunk_size)
    if micro_batch is None:
        micro_batch = 1 if device.type == "cpu" else chunk_size
    micro_batch = max(1, min(int(micro_batch), chunk_size))
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext())
    done = 0
    while done < total:
        stop = min(total, done + chunk_size)
        parts = []
        with torch.inference_mode(), autocast:
            for start in range(done, stop, micro_batch):
                kp = kp_driving[start:min(stop, start + micro_batch)]
                warped = warping_network(feature_3d, kp, kp_source)["out"]
                if channels_last:
                    warped = warped.contiguous(memory_format=torch.channels_last)
                with winograd_convolutions(winograd):
                    parts.append(spade_decoder(warped).float().permute(0, 2, 3, 1))
        frames = torch.cat(parts) if len(parts) > 1 else parts[0].contiguous()
        done = stop
        if callback is not None:
            callback(done, total)
        yield frames


def render_all(
    warping_network: torch.nn.Module,
    spade_decoder: torch.nn.Module,
    feature_3d: torch.Tensor,
    kp_source: torch.Tensor,
    kp_driving: torch.Tensor,
    **kwargs: object,
) -> torch.Tensor:
    """All frames at once: (T,H_img,W_img,3) float32 in [0,1] (same options as :func:`render_frames`)."""
    chunks = list(render_frames(warping_network, spade_decoder, feature_3d, kp_source, kp_driving,
                                **kwargs))  # type: ignore[arg-type]
    return torch.cat(chunks, dim=0)

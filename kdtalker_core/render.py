"""Chunked rendering: warp the source appearance volume to every driving frame, then decode.

Frames are produced chunk by chunk on the compute device, so device memory depends on
``chunk_size``, not on the number of frames. Batching frames gives the same numbers as the
official one-frame-at-a-time loop (every operation is per sample).

Precision (chosen by :mod:`kdtalker_core.precision`): :func:`prepare_networks` casts the warping
network (with its dense-motion estimator) and the SPADE decoder ONCE to the compute dtype and
switches them to channels-last memory where that is faster; :func:`render_frames` then runs them
as they are, without autocast. The numerically sensitive parts (keypoint transforms, sampling
grids, softmax, grid sampling, instance-norm statistics, the final sigmoid) stay float32 inside
the networks. float32 networks that were not prepared keep the official layout (NCHW) and numbers.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from .backends import allocator, nnpack, winograd
from .errors import InputError
from .frame_threads import frame_pool, iter_in_order
from .frame_threads import frame_threads as threads_for_frames
from .networks.dense_motion import DenseMotionNetwork
from .networks.spade import SPADEDecoder, SpectralNormConv2d, winograd_convolutions
from .networks.warping import WarpingNetwork
from .precision import native_bf16

_DTYPES = {torch.float32, torch.float16, torch.bfloat16}


def _to_memory_format(module: nn.Module, channels_last: bool) -> None:
    """Re-lay every 4D (5D) parameter and buffer channels-last(-3d), or back to contiguous."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.dim() not in (4, 5):
            continue
        if channels_last:
            fmt = torch.channels_last if tensor.dim() == 4 else torch.channels_last_3d
        else:
            fmt = torch.contiguous_format
        tensor.data = tensor.data.contiguous(memory_format=fmt)
    for sub in module.modules():
        if isinstance(sub, (WarpingNetwork, DenseMotionNetwork, SPADEDecoder)):
            sub.channels_last = channels_last


def default_channels_last(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the rendering networks should run channels-last on ``device`` in ``dtype``.

    CUDA: always. CPU: for reduced precision, and for float32 where NNPACK does not win (oneDNN's
    channels-last float32 convolutions measured 1.3-1.9x faster than NCHW on an AVX-512 EPYC).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return dtype != torch.float32 or not nnpack.preferred(device, dtype)


@torch.no_grad()
def prepare_networks(
    warping_network: nn.Module,
    spade_decoder: nn.Module,
    dtype: torch.dtype,
    device: torch.device | str,
    *,
    channels_last: bool | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Make the rendering networks ready for fast inference, in place; returns them.

    Folds the decoder's spectral norm in float32, then casts every floating-point parameter and
    buffer of both networks ONCE to ``dtype`` on ``device`` and lays 4D/5D weights out
    channels-last when ``channels_last`` (default :func:`default_channels_last`). Call it once
    after loading (again with another dtype to switch: cast from a reduced dtype loses precision,
    so reload the weights to go back to float32). Loading a state dict afterwards is not supported.
    """
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of float32, float16, bfloat16, got {dtype}")
    device = torch.device(device)
    if channels_last is None:
        channels_last = default_channels_last(device, dtype)
    for m in spade_decoder.modules():  # fold spectral norm in float32, before any cast (once)
        if isinstance(m, SpectralNormConv2d) and m.fused_weight is None:
            m.fuse()
    for net in (warping_network, spade_decoder):
        net.to(device=device, dtype=dtype)
        _to_memory_format(net, channels_last)
        net.eval().requires_grad_(False)
    return warping_network, spade_decoder


def network_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (float32 if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def compiler_available(device: torch.device | str) -> bool:
    """True when torch.compile's inductor backend can build kernels for ``device``.

    CPU: a C++ compiler (``$CXX``, g++, c++ or clang++) on the PATH. CUDA: Triton installed.
    """
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return False
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    if device.type == "cpu":
        names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        return any(n and shutil.which(n) for n in names)
    return False


def default_compile(device: torch.device | str) -> bool:
    """Whether rendering compiles its networks by default on ``device``: nowhere yet.

    Measured on a 2-core AVX-512 EPYC (bf16): compiling W + G takes minutes, more than it saves on
    a 10 s clip (250 frames); see bench/README.md. CUDA has not been measured yet.
    """
    del device
    return False


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled artefacts across runs (``$TORCHINDUCTOR_CACHE_DIR`` wins)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "kdtalker" / "inductor"


def compile_networks(warping_network: nn.Module, spade_decoder: nn.Module) -> tuple[nn.Module, nn.Module]:
    """torch.compile (inductor, static shapes) wrappers of the two prepared networks.

    Each network is compiled once per process (later calls return the same wrappers); compiled
    artefacts are cached on disk in :func:`compile_cache_dir`. Without a usable compiler the
    eager networks come back, after a one-line notice on stderr.
    """
    device = next(spade_decoder.parameters()).device
    if not compiler_available(device):
        print(f"kdtalker: no compiler for torch.compile on {device.type}; rendering runs uncompiled",
              file=sys.stderr)
        return warping_network, spade_decoder
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))
    out = []
    for net in (warping_network, spade_decoder):
        compiled = net.__dict__.get("_kdtalker_compiled")
        if compiled is None:
            compiled = torch.compile(net, dynamic=False)
            # Kept in the instance dict (not as a submodule): no state-dict keys, freed with the network.
            object.__setattr__(net, "_kdtalker_compiled", compiled)
        out.append(compiled)
    return out[0], out[1]


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


@contextmanager
def _scratch_released() -> Iterator[None]:
    """On leaving, the calling thread's kept Winograd scratch buffers are freed (the frame
    threads' go with their threads); see :func:`kdtalker_core.backends.winograd.scratch_buffer`."""
    try:
        yield
    finally:
        winograd.release_scratch()


def render_frames(
    warping_network: torch.nn.Module,
    spade_decoder: torch.nn.Module,
    feature_3d: torch.Tensor,
    kp_source: torch.Tensor,
    kp_driving: torch.Tensor,
    *,
    chunk_size: int = 8,
    dtype: torch.dtype | None = None,
    callback: Callable[[int, int], None] | None = None,
    winograd: bool | None = None,
    micro_batch: int | None = None,
    compile: bool | None = None,
    frame_threads: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield rendered frames chunk by chunk.

    warping_network / spade_decoder: :class:`WarpingNetwork` / :class:`SPADEDecoder` in eval mode
    on the device of ``feature_3d`` (ideally made ready by :func:`prepare_networks`).
    feature_3d (1,C,D,H,W) source appearance volume; kp_source (1,K,3) source keypoints;
    kp_driving (T,K,3) driving keypoints (moved to the device here). Yields float32 frames
    (n,H_img,W_img,3) in [0,1] on the device (ComfyUI IMAGE layout), n <= chunk_size, T frames in
    all. ``callback(done, total)`` runs after each micro-batch is computed (one frame on a CPU), so
    raising from it cancels within one micro-batch, not one chunk. No host synchronisation happens here.

    ``dtype`` (default: the networks' own dtype) is the compute dtype. Networks prepared in that
    dtype run as they are; float32 networks asked for a reduced dtype fall back to autocast
    (slower: casts on every call; prefer :func:`prepare_networks`). ``winograd`` (default: float32
    on CPUs where :func:`kdtalker_core.backends.nnpack.preferred`) runs the decoder's 3x3
    convolutions with NNPACK (frames differ from the direct convolution by ~1e-5).
    ``micro_batch`` frames go through the networks at once (default: 1 on CPU, where batching
    was measured 10-15% slower per frame, else ``chunk_size``); the numbers do not depend on it.
    ``compile`` (default :func:`default_compile`) runs the networks through :func:`compile_networks`.
    ``frame_threads`` frames render side by side, one per thread with one intra-op thread each
    (default :func:`kdtalker_core.frame_threads.frame_threads`: on a CPU in bf16, one per
    intra-op thread; at most ``chunk_size``; the numbers do not depend on it); the callback still
    comes in frame order.
    The frame threads do not wait at chunk boundaries: while the caller holds a chunk, the next
    chunk's first frames compute (at most ``frame_threads`` frames beyond the last one reported,
    which is also how far a cancel from the callback can run on).
    """
    weights_dtype = network_dtype(spade_decoder)
    dtype = weights_dtype if dtype is None else dtype
    kp_source, kp_driving = _validate(feature_3d, kp_source, kp_driving, chunk_size, dtype)
    if weights_dtype != torch.float32 and dtype != weights_dtype:
        raise InputError(f"the rendering networks hold {weights_dtype} weights but {dtype} was asked; "
                         "prepare them again from float32 weights (prepare_networks)")
    device = feature_3d.device
    kp_source = kp_source.to(device=device, dtype=torch.float32)
    kp_driving = kp_driving.to(device=device, dtype=torch.float32)
    if winograd is None:
        winograd = dtype == torch.float32 and nnpack.preferred(device, dtype)
    if device.type == "cpu" and dtype != torch.float32 and not native_bf16(device):
        warnings.warn(
            f"{dtype} rendering on a CPU without native bf16 instructions uses PyTorch's slow "
            "reference kernels (far slower than float32); use float32 or precision='auto'",
            RuntimeWarning, stacklevel=2,
        )
    chunk_size = int(chunk_size)
    if micro_batch is None:
        micro_batch = 1 if device.type == "cpu" else chunk_size
    micro_batch = max(1, min(int(micro_batch), chunk_size))
    if compile is None:
        compile = default_compile(device)
    if compile:
        warping_network, spade_decoder = compile_networks(warping_network, spade_decoder)
    use_autocast = dtype != weights_dtype  # float32 weights, reduced compute dtype: legacy path
    total = kp_driving.shape[0]
    done = 0
    workers = threads_for_frames(device, dtype) if frame_threads is None else max(1, int(frame_threads))
    workers = min(workers, chunk_size)  # frames of one chunk go side by side (chunk 1: intra-op threads)

    def render_batch(start: int, end: int) -> torch.Tensor:
        # Thread-local state (inference mode, autocast, the NNPACK switch) is entered here, so
        # that this also runs on a frame thread.
        autocast = torch.autocast(device.type, dtype=dtype) if use_autocast else nullcontext()
        with torch.inference_mode(), autocast, winograd_convolutions(winograd):
            warped = warping_network(feature_3d, kp_driving[start:end], kp_source)["out"]
            return spade_decoder(warped).float().permute(0, 2, 3, 1)

    # CPU, reduced precision: the networks' large freed maps stay in the heap for the next frame
    # (no page faults); between chunks, while the caller holds one, glibc's defaults apply (frames
    # still computing then mostly reuse freed blocks of their own arena).
    with (allocator.reuse_large_blocks(allocator.wanted(device, dtype)) as reuse,
          frame_pool(workers) as pool, _scratch_released()):
        if pool is None:  # micro-batches in this thread
            frames, step, part = None, micro_batch, render_batch
        else:  # one frame per thread; the next chunk's frames start while the caller works on this one
            frames = iter_in_order(pool, workers, lambda i: render_batch(i, i + 1), range(total))
            step, part = 1, lambda start, end: next(frames)
        with closing(frames) if frames is not None else nullcontext():
            while done < total:
                stop = min(total, done + chunk_size)
                parts = []
                with allocator.large_blocks_from_heap(reuse):
                    for start in range(done, stop, step):
                        end = min(stop, start + step)
                        parts.append(part(start, end))
                        if callback is not None:  # after every frame / micro-batch: a cancel lands within them
                            callback(end, total)
                chunk = torch.cat(parts) if len(parts) > 1 else parts[0].contiguous()
                done = stop
                yield chunk


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

"""Linear layers with weights packed once on the CPU (MKL or oneDNN), behind feature checks.

PyTorch's x86 CPU builds expose private operators that multiply with a weight packed once for a
fixed number of input rows: ``torch.ops.mkl._mkl_reorder_linear_weight`` / ``torch.ops.mkl._mkl_linear``
(MKL, float32) and ``torch.ops.mkldnn._reorder_linear_weight`` / ``torch.ops.mkldnn._linear_pointwise``
(oneDNN, float32 and bfloat16; the path torch.compile's CPU backend uses). For the denoiser's small
products (about 66 rows x 768) re-packing the weight inside every ``F.linear`` call is a noticeable part
of the time, so the sampler packs once per window.

Which library packs float32 depends on the CPU: MKL's float32 kernels are fast on Intel CPUs, while on
AMD CPUs they were measured at about a third of oneDNN's (2-core Zen 5 EPYC, AVX-512, 2 threads, 66 x
768 @ 768 x 768: F.linear 573 us, MKL packed 636 us, oneDNN packed 222 us). :func:`float32_library`
decides by a short timed probe (a few tens of ms, once per process and thread count);
``KDTALKER_PACKED_FP32=mkl|onednn`` overrides it. bfloat16 is always packed by oneDNN (66 x 768 @ 768 x
768: 170-190 -> 110-135 us). oneDNN's packed products can also apply a SiLU or add a residual to
their float32 sums (``linear(..., silu=True)`` / ``residual=``; a one-time trial checks both): one
pass less over the result and, in bf16, one rounding less (66 x 768 @ 768 x 768 then SiLU, bf16:
156 -> 143 us; a 50-step denoiser window with these and the CPU attention rule of
:mod:`kdtalker_core.attention` 8% faster, same error against float32).

These operators are not public API. This module is the only place that touches them: every caller goes
through :func:`pack_weight` and :func:`linear`, which fall back to ``torch.nn.functional.linear`` whenever
the operators are missing or fail a one-time trial, the tensors are not float32 / bfloat16 CPU tensors,
or the fallback is forced with :func:`force_fallback` (used by tests to compare both paths). MKL's packed
product is ``F.linear``'s product bit for bit; oneDNN's bfloat16 product too, its float32 product sums
in another order (relative differences around 1e-6).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .timing import best_seconds

_forced_fallback = False


@dataclass(frozen=True)
class PackedWeight:
    """A weight packed for ``rows`` input rows by ``library`` (``"mkl"`` or ``"onednn"``)."""

    library: str
    tensor: torch.Tensor
    rows: int


def _mkl_present() -> bool:
    """True when this PyTorch build has MKL and both private packing operators."""
    mkl = getattr(torch.ops, "mkl", None)
    return (
        torch.backends.mkl.is_available()
        and mkl is not None
        and hasattr(mkl, "_mkl_reorder_linear_weight")
        and hasattr(mkl, "_mkl_linear")
    )


def _trial_operands(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small fixed operands for the one-time oneDNN trials: x (5,32), w (48,32), b (48,) in
    ``dtype`` and w packed by oneDNN for 5 rows."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 32, generator=gen).to(dtype)
    w = torch.randn(48, 32, generator=gen).to(dtype)
    b = torch.randn(48, generator=gen).to(dtype)
    return x, w, b, torch.ops.mkldnn._reorder_linear_weight(w, 5)


@functools.lru_cache(maxsize=4)
def _onednn_works(dtype: torch.dtype) -> bool:
    """True when oneDNN packs and multiplies a ``dtype`` weight here and matches ``F.linear`` (one trial)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if (not torch.backends.mkldnn.is_available() or mkldnn is None
            or not hasattr(mkldnn, "_reorder_linear_weight") or not hasattr(mkldnn, "_linear_pointwise")):
        return False
    try:
        x, w, b, packed = _trial_operands(dtype)
        got = mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        return bool(torch.allclose(got.float(), F.linear(x, w, b).float(), atol=0.05, rtol=0.02))
    except (RuntimeError, TypeError):
        return False


@functools.lru_cache(maxsize=8)
def _probe_float32(threads: int) -> str:
    """The faster packed float32 product on a denoiser-sized product (66 x 768 @ 768 x 768)."""
    del threads  # part of the cache key only: the answer depends on the thread count
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(66, 768, generator=gen)
    w = 0.02 * torch.randn(768, 768, generator=gen)
    b = torch.zeros(768)
    with torch.inference_mode():
        mkl = torch.ops.mkl._mkl_reorder_linear_weight(w, 66)
        onednn = torch.ops.mkldnn._reorder_linear_weight(w, 66)
        t_mkl = best_seconds(lambda: torch.ops.mkl._mkl_linear(x, mkl, w, b, 66), repeats=5, calls=10)
        t_onednn = best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, onednn, b, "none", [], ""),
                                repeats=5, calls=10)
    return "onednn" if t_onednn < t_mkl else "mkl"


def float32_library() -> str | None:
    """Which library packs float32 weights here: ``"mkl"``, ``"onednn"`` or None (neither / forced off).

    Both usable: the faster in a timed probe, unless ``KDTALKER_PACKED_FP32`` is ``mkl`` or ``onednn``.
    """
    if _forced_fallback:
        return None
    mkl, onednn = _mkl_present(), _onednn_works(torch.float32)
    forced = os.environ.get("KDTALKER_PACKED_FP32", "").strip().lower()
    if forced == "mkl" and mkl:
        return "mkl"
    if forced == "onednn" and onednn:
        return "onednn"
    if mkl and onednn:
        return _probe_float32(torch.get_num_threads())
    return "mkl" if mkl else "onednn" if onednn else None


def available() -> bool:
    """True when packed float32 products will be used (a library works, the fallback is not forced)."""
    return float32_library() is not None


def bf16_available() -> bool:
    """True when packed bfloat16 products will be used (oneDNN passes its trial, no forced fallback)."""
    return not _forced_fallback and _onednn_works(torch.bfloat16)


def packs(dtype: torch.dtype) -> bool:
    """Whether :func:`pack_weight` packs CPU weights of ``dtype`` here."""
    return (dtype == torch.float32 and available()) or (dtype == torch.bfloat16 and bf16_available())


@contextmanager
def force_fallback(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`pack_weight` returns None and :func:`linear` uses ``F.linear`` only."""
    global _forced_fallback
    previous = _forced_fallback
    _forced_fallback = enabled
    try:
        yield
    finally:
        _forced_fallback = previous


def pack_weight(weight: torch.Tensor, rows: int) -> PackedWeight | None:
    """Packed copy of ``weight`` (out_features, in_features) for inputs of ``rows`` rows, or None.

    float32 CPU weights: packed by :func:`float32_library`; bfloat16 CPU weights: by oneDNN when
    :func:`bf16_available`; None (use the plain weight) otherwise. The packed tensor is about the
    size of the weight; oneDNN's also multiplies inputs of another row count correctly.
    """
    if weight.device.type != "cpu" or rows < 1:
        return None
    library = float32_library() if weight.dtype == torch.float32 else (
        "onednn" if weight.dtype == torch.bfloat16 and bf16_available() else None)
    if library == "mkl":
        return PackedWeight("mkl", torch.ops.mkl._mkl_reorder_linear_weight(weight, rows), rows)
    if library == "onednn":
        return PackedWeight("onednn", torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows), rows)
    return None


@functools.lru_cache(maxsize=4)
def _onednn_fusions_work(dtype: torch.dtype) -> bool:
    """True when oneDNN's packed product also applies a SiLU or adds a residual for ``dtype`` here
    and matches the unfused ops (one trial)."""
    if not _onednn_works(dtype):
        return False
    mkldnn = torch.ops.mkldnn
    try:
        x, w, b, packed = _trial_operands(dtype)
        r = torch.randn(5, 48, generator=torch.Generator().manual_seed(1)).to(dtype)
        plain = F.linear(x.float(), w.float(), b.float())
        silu = mkldnn._linear_pointwise(x, packed, b, "swish", [], "")
        added = mkldnn._linear_pointwise.binary(x, r, packed, b, "add")
        return (bool(torch.allclose(silu.float(), F.silu(plain), atol=0.05, rtol=0.02))
                and bool(torch.allclose(added.float(), plain + r.float(), atol=0.05, rtol=0.02)))
    except (RuntimeError, TypeError, AttributeError):
        return False


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    packed: PackedWeight | None = None,
    *,
    silu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias`` for x (..., in_features) -> (..., out_features), then optionally
    ``silu`` of it, or ``residual`` (same shape as the result) added to it (not both).

    ``packed`` is :func:`pack_weight` (weight, rows); MKL's needs x to have exactly ``rows`` rows
    (the product of its leading sizes). Without ``packed``, or under :func:`force_fallback`, this
    is ``F.linear`` followed by the SiLU / addition. With a oneDNN-packed weight the SiLU or the
    addition runs inside the product, on its float32 sums (one rounding to a reduced dtype instead
    of two; no extra pass over the result).
    """
    if silu and residual is not None:
        raise ValueError("linear(): silu and residual cannot be combined")
    if packed is not None and not _forced_fallback:
        if packed.library == "onednn":
            if (silu or residual is not None) and _onednn_fusions_work(x.dtype):
                if silu:
                    return torch.ops.mkldnn._linear_pointwise(x, packed.tensor, bias, "swish", [], "")
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed.tensor, bias, "add")
            out = torch.ops.mkldnn._linear_pointwise(x, packed.tensor, bias, "none", [], "")
        else:
            out = torch.ops.mkl._mkl_linear(x, packed.tensor, weight, bias, packed.rows)
    else:
        out = F.linear(x, weight, bias)
    if silu:
        return F.silu(out, inplace=True)
    return out.add_(residual) if residual is not None else out

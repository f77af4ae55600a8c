"""Linear layers with pre-packed weights on the CPU (MKL for float32, oneDNN for bfloat16), behind feature checks.

PyTorch's x86 CPU builds expose private operators that multiply with a weight packed once for a fixed
number of input rows: ``torch.ops.mkl._mkl_reorder_linear_weight`` / ``torch.ops.mkl._mkl_linear`` (MKL,
float32) and ``torch.ops.mkldnn._reorder_linear_weight`` / ``torch.ops.mkldnn._linear_pointwise`` (oneDNN,
the path torch.compile's CPU backend uses for bfloat16). For the denoiser's small products (about 66 rows
x 768) re-packing the weight inside every ``F.linear`` call is a noticeable part of the time, so the
sampler packs once per window. Measured on a 2-core Zen 5 EPYC (AVX512-BF16, 2 threads): a bf16
66x768 @ 768x768 product 170-190 -> 110-135 us.

These operators are not public API. This module is the only place that touches them: every caller goes
through :func:`pack_weight` and :func:`linear`, which fall back to ``torch.nn.functional.linear`` whenever
the operators are missing or fail a one-time trial, the tensors are not float32 / bfloat16 CPU tensors,
or the fallback is forced with :func:`force_fallback` (used by tests to compare both paths). Both packed
products give ``F.linear``'s numbers (tests compare them).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_forced_fallback = False


def _operators_present() -> bool:
    """True when this PyTorch build has MKL and both private packing operators."""
    mkl = getattr(torch.ops, "mkl", None)
    return (
        torch.backends.mkl.is_available()
        and mkl is not None
        and hasattr(mkl, "_mkl_reorder_linear_weight")
        and hasattr(mkl, "_mkl_linear")
    )


def available() -> bool:
    """True when packed float32 products will be used: the operators exist and the fallback is not forced."""
    return not _forced_fallback and _operators_present()


@functools.lru_cache(maxsize=1)
def _onednn_bf16_works() -> bool:
    """True when oneDNN packs and multiplies a bfloat16 weight here and matches ``F.linear`` (one trial)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if (not torch.backends.mkldnn.is_available() or mkldnn is None
            or not hasattr(mkldnn, "_reorder_linear_weight") or not hasattr(mkldnn, "_linear_pointwise")):
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(5, 32, generator=gen).bfloat16()
        w = torch.randn(48, 32, generator=gen).bfloat16()
        b = torch.randn(48, generator=gen).bfloat16()
        packed = mkldnn._reorder_linear_weight(w, 5)
        got = mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        return bool(torch.allclose(got.float(), F.linear(x, w, b).float(), atol=0.05, rtol=0.02))
    except (RuntimeError, TypeError):
        return False


def bf16_available() -> bool:
    """True when packed bfloat16 products will be used (oneDNN passes its trial, no forced fallback)."""
    return not _forced_fallback and _onednn_bf16_works()


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


def pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """Packed copy of ``weight`` (out_features, in_features) for inputs of ``rows`` rows, or None.

    float32 CPU weights: MKL-packed when :func:`available`; bfloat16 CPU weights: a oneDNN tensor
    when :func:`bf16_available`; None (use the plain weight) otherwise. The packed tensor is about
    the size of the weight; inputs with another row count still multiply correctly.
    """
    if weight.device.type != "cpu" or rows < 1:
        return None
    if weight.dtype == torch.float32 and available():
        return torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
    if weight.dtype == torch.bfloat16 and bf16_available():
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
    return None


def packs(dtype: torch.dtype) -> bool:
    """Whether :func:`pack_weight` packs CPU weights of ``dtype`` here."""
    return (dtype == torch.float32 and available()) or (dtype == torch.bfloat16 and bf16_available())


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    packed: torch.Tensor | None = None,
    rows: int = 0,
) -> torch.Tensor:
    """``x @ weight.T + bias`` for x (..., in_features) -> (..., out_features).

    ``packed`` is :func:`pack_weight` (weight, rows) and ``rows`` the number of rows of x it was packed
    for (the product of x's leading sizes). Without ``packed``, or when packing is not available, this is
    ``F.linear``; the packed product gives the same numbers.
    """
    if packed is None or _forced_fallback:
        return F.linear(x, weight, bias)
    if packed.dtype == torch.bfloat16:  # oneDNN's packed tensor (MKL packs float32 only)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows)

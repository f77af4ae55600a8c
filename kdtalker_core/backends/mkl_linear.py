"""Linear layers with MKL pre-packed float32 weights, behind a feature check.

PyTorch's x86 CPU builds with MKL expose two private operators, ``torch.ops.mkl._mkl_reorder_linear_weight``
(pack a weight for a fixed number of input rows) and ``torch.ops.mkl._mkl_linear`` (multiply with the
packed weight). For the denoiser's small products (about 66 rows x 768) re-packing the weight inside every
``F.linear`` call is a noticeable part of the time, so the sampler packs once per window.

These operators are not public API. This module is the only place that touches them: every caller goes
through :func:`pack_weight` and :func:`linear`, which fall back to ``torch.nn.functional.linear`` whenever
the operators are missing, the tensors are not float32 CPU tensors, or the fallback is forced with
:func:`force_fallback` (used by tests to compare both paths).
"""

from __future__ import annotations

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
    """True when packed products will be used: the operators exist and the fallback is not forced."""
    return not _forced_fallback and _operators_present()


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
    """MKL-packed copy of ``weight`` (out_features, in_features) for inputs of ``rows`` rows, or None.

    None (use the plain weight) unless packing is :func:`available` and ``weight`` is a float32 CPU
    tensor. The packed tensor is about the size of the weight.
    """
    if not available() or weight.device.type != "cpu" or weight.dtype != torch.float32 or rows < 1:
        return None
    return torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)


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
    if packed is None or not available():
        return F.linear(x, weight, bias)
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows)

"""Which memory layout a 4D / 5D activation or weight has (the fast paths keep it)."""

from __future__ import annotations

import torch


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels-last (4D) or channels-last-3d (5D) when ``t`` is laid out so and not also plain
    contiguous (a tensor with size-1 dimensions can be both), else contiguous."""
    if t.dim() in (4, 5) and not t.is_contiguous():
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        if t.is_contiguous(memory_format=fmt):
            return fmt
    return torch.contiguous_format


def is_channels_last(t: torch.Tensor) -> bool:
    """True when :func:`memory_format` of ``t`` is channels-last(-3d)."""
    return memory_format(t) != torch.contiguous_format

"""A module mixin that caches kernels derived from its parameters (used by W and G)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: Held while a kernel is made: frame threads that need the same kernel at the same time (the
#: first frames of a render) wait for one copy instead of each making its own (time, and a
#: transient copy each: the decoder's Winograd weights are ~290 MB in bf16). Re-entrant, for a
#: make() that asks for another cached kernel.
_make_lock = threading.RLock()


class KernelCache(nn.Module):
    """Caches kernels derived from the parameters (folded, phase-split) between forwards.

    The cache empties on ``.to()`` / ``.float()`` / ``.bfloat16()`` ... (every ``_apply``) and
    before a state dict is loaded, so it never outlives the parameters it was made from.
    """

    def __init__(self) -> None:
        super().__init__()
        self._kernel_cache: dict[object, Any] = {}
        self.register_load_state_dict_pre_hook(KernelCache._drop_cache)

    @staticmethod
    def _drop_cache(module: nn.Module, *args: object) -> None:
        module._kernel_cache = {}

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._kernel_cache = {}
        return super()._apply(fn, recurse)

    def cached(self, key: object, make: Callable[[], Any]) -> Any:
        """``make()`` once per ``key`` (without autograd), then the cached value; threads asking
        for a kernel that is being made wait for it."""
        value = self._kernel_cache.get(key)
        if value is None:
            with _make_lock:
                value = self._kernel_cache.get(key)
                if value is None:
                    with torch.no_grad():
                        value = self._kernel_cache[key] = make()
        return value

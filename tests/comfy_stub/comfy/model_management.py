"""Stand-in for ``comfy.model_management``: devices, cache emptying, interrupts (CPU only)."""

from __future__ import annotations

import threading

import torch

soft_empty_cache_calls = 0
_interrupt_lock = threading.RLock()
_interrupt = False


class InterruptProcessingException(BaseException):
    """Raised to cancel a prompt; a BaseException, so ``except Exception`` does not swallow it."""


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def xformers_enabled() -> bool:
    return False


def soft_empty_cache(force: bool = False) -> None:
    global soft_empty_cache_calls
    soft_empty_cache_calls += 1


def interrupt_current_processing(value: bool = True) -> None:
    global _interrupt
    with _interrupt_lock:
        _interrupt = value


def processing_interrupted() -> bool:
    with _interrupt_lock:
        return _interrupt


def throw_exception_if_processing_interrupted() -> None:
    global _interrupt
    with _interrupt_lock:
        if _interrupt:
            _interrupt = False
            raise InterruptProcessingException()

"""The one precision policy: which dtype each network computes in, on which hardware.

``"auto"`` means bfloat16 where the hardware multiplies bf16 natively (a CUDA device with bf16
support; a CPU with AMX-BF16 or AVX512-BF16) and float32 elsewhere, for rendering and for the
motion networks alike. Emulated bf16 on a CPU without those instructions is one to two orders of
magnitude slower than float32, so it is never chosen automatically there.

fp32 is bit-faithful to the official implementation (the golden vectors); reduced precision keeps
the numerically sensitive parts (keypoint transforms, sampling grids, softmax, normalisation
statistics, the DDIM state, the Kalman smoother) in float32 inside the networks.
"""

from __future__ import annotations

import functools

import torch

from .errors import InputError

#: Precision name -> compute dtype. ``auto`` is resolved by :func:`resolve_precision`.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Every accepted precision setting, in menu order.
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (``/proc/cpuinfo``; empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def cpu_summary() -> str:
    """CPU model, the SIMD / bf16 flags that decide precision and kernels, and torch's capability.

    e.g. ``AMD EPYC; avx2 avx512f avx512_bf16; torch AVX512`` (for benchmarks and ``doctor``).
    """
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
    flags = " ".join(f for f in wanted if f in cpu_flags()) or "no avx2/avx512/amx flags"
    return f"{cpu_model()}; {flags}; torch {torch.backends.cpu.get_cpu_capability()}"


def cpu_has_native_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` multiplies bfloat16 natively (so bf16 is faster than fp32 there)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`native_bf16`, else ``"fp32"``; others are validated.

    Raises :class:`~kdtalker_core.errors.InputError` for an unknown name.
    """
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISION_CHOICES)}")
    return precision


def describe(precision: str, device: torch.device | str) -> str:
    """One line saying what ``precision`` resolves to on ``device`` and why (for summaries, doctor)."""
    chosen = resolve_precision(precision, device)
    device = torch.device(device)
    if precision != "auto":
        return f"{chosen} (requested)"
    if device.type == "cuda":
        why = "CUDA bf16 support" if chosen == "bf16" else "this CUDA device has no bf16 support"
    else:
        flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
        why = ("CPU has " + ", ".join(flags)) if flags else "CPU has no native bf16 (no avx512_bf16/amx_bf16)"
    return f"{chosen} (auto: {why})"

"""Natural eye blinks: a seeded blink schedule sampled at any frame rate.

KDTalker's motion model rarely closes the eyes. :func:`blink_curve` draws blink times from a
renewal process (a refractory gap after each blink, then an exponential wait so the average rate is
``rate_per_min``) and returns the eyelid closure per frame: 0 = as the motion has it, 1 = fully
closed. Each blink closes quickly, is held shut briefly and reopens more slowly; its peak is placed
on a frame so that even a 25 fps sampling shows a fully closed eye.

The closure is turned into keypoints by :mod:`kdtalker_core.retarget` (LivePortrait's eye
retargeting MLP, or the keypoint-offset fallback).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InputError

__all__ = ["DEFAULT_BLINK_DURATION", "TYPICAL_BLINK_RATE", "blink_curve"]

#: Seconds from the start of a blink until the eye is open again (human blinks: ~0.1-0.4 s).
DEFAULT_BLINK_DURATION = 0.25
#: Blinks per minute of a relaxed speaker (adults: roughly 10-20); the knob's suggested value.
TYPICAL_BLINK_RATE = 15.0
#: Fractions of a blink spent closing and held shut (the rest is reopening).
_CLOSE_PART, _HOLD_PART = 0.3, 0.15
#: Shortest time between the ends of two blinks, seconds.
_MIN_GAP = 0.6


def _blink_shape(u: np.ndarray) -> np.ndarray:
    """Closure in [0,1] at phase ``u`` in [0,1) of a blink (0 outside): close, hold, reopen (smooth)."""
    out = np.zeros_like(u)
    closing = (u >= 0) & (u < _CLOSE_PART)
    out[closing] = np.sin(0.5 * np.pi * u[closing] / _CLOSE_PART) ** 2
    held = (u >= _CLOSE_PART) & (u < _CLOSE_PART + _HOLD_PART)
    out[held] = 1.0
    opening = (u >= _CLOSE_PART + _HOLD_PART) & (u < 1)
    v = (u[opening] - _CLOSE_PART - _HOLD_PART) / (1 - _CLOSE_PART - _HOLD_PART)
    out[opening] = np.cos(0.5 * np.pi * v) ** 2
    return out


def blink_times(duration_s: float, rate_per_min: float, blink_duration: float, seed: int) -> np.ndarray:
    """Start times (seconds) of the blinks within ``[0, duration_s)``: seeded, reproducible.

    Gaps are ``blink_duration + 0.6 s`` plus an exponential wait whose mean brings the average rate
    to ``rate_per_min`` (when that rate is possible; faster requests saturate at the refractory gap).
    The first blink comes after a uniform share of one mean interval.
    """
    if rate_per_min <= 0 or duration_s <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(int(seed))
    mean_gap = 60.0 / rate_per_min
    refractory = blink_duration + _MIN_GAP
    wait = max(mean_gap - refractory, 1e-3)
    times = []
    t = rng.uniform(0.2, max(0.3, mean_gap))
    while t < duration_s:
        times.append(t)
        t += refractory + rng.exponential(wait)
    return np.asarray(times)


def blink_curve(
    num_frames: int,
    fps: float,
    rate_per_min: float = 0.0,
    duration_s: float = DEFAULT_BLINK_DURATION,
    seed: int = 0,
) -> torch.Tensor:
    """Eyelid closure per frame -> ``(num_frames,)`` float32 in [0,1] (CPU); all zeros when the rate is 0.

    ``fps``: frame rate of the motion the curve is for (frame ``i`` is at ``i / fps`` s);
    ``rate_per_min``: average blinks per minute (0 = off); ``duration_s``: length of one blink;
    ``seed``: the schedule's random seed (same seed, same blinks, at any frame rate).
    """
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    for name, value in (("fps", fps), ("blink duration", duration_s)):
        if not (value > 0 and math.isfinite(value)):
            raise InputError(f"{name} must be a positive number, got {value}")
    if not (rate_per_min >= 0 and math.isfinite(rate_per_min)):
        raise InputError(f"blink rate must be >= 0 blinks per minute, got {rate_per_min}")
    closure = np.zeros(num_frames)
    if rate_per_min == 0:
        return torch.zeros(num_frames)
    times = np.arange(num_frames) / fps
    peak_offset = (_CLOSE_PART + 0.5 * _HOLD_PART) * duration_s
    for start in blink_times(num_frames / fps, rate_per_min, duration_s, seed):
        peak = round((start + peak_offset) * fps) / fps  # the fully closed moment falls on a frame
        u = (times - (peak - peak_offset)) / duration_s
        closure = np.maximum(closure, _blink_shape(u))
    return torch.from_numpy(closure.astype(np.float32))

"""Writing small media files for tests (shared by the test modules)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """``samples`` (N,) float in [-1, 1] -> a 16-bit mono PCM WAV at ``rate`` Hz; returns ``path``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path

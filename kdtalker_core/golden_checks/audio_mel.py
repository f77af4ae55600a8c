"""Checker for ``audio_mel`` fixtures: raw samples -> 16 kHz mono -> mel -> per-frame windows.

Runs the product path twice: once from the in-memory samples (``to_mono_16k``) and once from a
16-bit PCM wav written from them and decoded by ``load_audio_file`` (outputs suffixed ``[file]``).
"""

from __future__ import annotations

import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import audio
from ..golden_checks._common import CheckResult, compare, compare_exact, load_fixture, tolerance

# meta['config'] key -> the product's constant it must equal.
_CONFIG_CONSTANTS: dict[str, float] = {
    "sample_rate": audio.SAMPLE_RATE,
    "n_fft": audio.N_FFT,
    "hop_size": audio.HOP_SIZE,
    "win_size": audio.WIN_SIZE,
    "num_mels": audio.NUM_MELS,
    "fmin": audio.FMIN,
    "fmax": audio.FMAX,
    "preemphasis": audio.PREEMPHASIS,
    "min_level_db": audio.MIN_LEVEL_DB,
    "ref_level_db": audio.REF_LEVEL_DB,
    "max_abs_value": audio.MAX_ABS_VALUE,
    "syncnet_mel_step_size": audio.WINDOW_STEPS,
}


def _write_pcm16_wav(path: Path, samples: torch.Tensor, sample_rate: int) -> None:
    """samples (N,) or (C, N) full scale -> 16-bit PCM wav (int16 = round(x * 32768), clipped)."""
    x = samples.detach().cpu().double().numpy()
    x = x[None] if x.ndim == 1 else x
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.ascontiguousarray(pcm.T).tobytes())


def _run_path(name: str, suffix: str, wav16k: torch.Tensor, fps: float, meta: dict[str, Any],
              expected: dict[str, torch.Tensor]) -> list[CheckResult]:
    """Compare wav_16k, num_frames, mel, indiv_mels computed from one 16 kHz signal."""
    results = [compare(name, f"wav_16k{suffix}", wav16k, expected["wav_16k"], *tolerance(meta, "wav_16k"))]
    cropped, frames = audio.crop_to_video_frames(wav16k, fps)
    results.append(compare_exact(name, f"num_frames{suffix}", torch.tensor([frames]), expected["num_frames"]))
    mel = audio.melspectrogram(cropped)
    results.append(compare(name, f"mel{suffix}", mel, expected["mel"], *tolerance(meta, "mel")))
    windows = audio.mel_windows(mel, frames, fps)
    results.append(compare(name, f"indiv_mels{suffix}", windows, expected["indiv_mels"],
                           *tolerance(meta, "indiv_mels")))
    return results


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Run one audio_mel fixture through kdtalker_core.audio (memory and file paths)."""
    fx = load_fixture(fixture_dir, meta)
    config = meta.get("config", {})
    results: list[CheckResult] = []
    mismatched = {k: (config[k], v) for k, v in _CONFIG_CONSTANTS.items() if k in config and config[k] != v}
    if mismatched:
        results.append(CheckResult(fx.name, "config", False, float("nan"),
                                   f"fixture config differs from the product constants: {mismatched}"))
    fps = float(config.get("fps", 25))
    samples = fx.inputs["samples"]
    sample_rate = int(fx.inputs["sample_rate"].reshape(-1)[0])

    results += _run_path(fx.name, "", audio.to_mono_16k(samples, sample_rate), fps, meta, fx.outputs)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.wav"
        _write_pcm16_wav(path, samples, sample_rate)
        loaded, loaded_rate = audio.load_audio_file(path)
    if loaded_rate != sample_rate:
        results.append(CheckResult(fx.name, "sample_rate[file]", False, float("nan"),
                                   f"decoded rate {loaded_rate} != {sample_rate}"))
    results += _run_path(fx.name, "[file]", audio.to_mono_16k(loaded, loaded_rate), fps, meta, fx.outputs)
    return results

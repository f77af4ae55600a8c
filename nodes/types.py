"""Our ComfyUI socket types and the conversions between ComfyUI values and kdtalker_core values.

ComfyUI conventions: IMAGE is a float tensor (B,H,W,C) in [0,1] on the CPU; MASK is (B,H,W);
AUDIO is ``{"waveform": (B,C,N) float, "sample_rate": int}``. Our own values travel between our
nodes under upper-case type names that no other package uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from comfy_api.latest import io

from ..kdtalker_core.errors import KDTalkerError

#: Loaded networks + where to run / park them (``nodes.models.ModelHandle``).
Models = io.Custom("KDTALKER_MODELS")
#: A prepared photo (``kdtalker_core.pipeline.Portrait``).
Portrait = io.Custom("KDTALKER_PORTRAIT")
#: Per-frame audio features (``kdtalker_core.pipeline.AudioFeatures``).
AudioFeatures = io.Custom("KDTALKER_AUDIO_FEATURES")
#: Per-frame head pose + expression (``kdtalker_core.motion.Motion``).
Motion = io.Custom("KDTALKER_MOTION")

CUSTOM_TYPES = ("KDTALKER_MODELS", "KDTALKER_PORTRAIT", "KDTALKER_AUDIO_FEATURES", "KDTALKER_MOTION")


def first_image(image: torch.Tensor) -> torch.Tensor:
    """IMAGE (B,H,W,C) -> (1,H,W,C): the first image of a batch (the portrait)."""
    if image.ndim == 3:
        image = image[None]
    return image[:1]


def audio_parts(audio: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """AUDIO -> (waveform (C,N) float32 CPU of the first batch item, sample_rate)."""
    wav = torch.as_tensor(audio["waveform"])
    if wav.ndim == 3:
        wav = wav[0]
    elif wav.ndim == 1:
        wav = wav[None]
    return wav.detach().float().cpu(), int(audio["sample_rate"])


def make_audio(waveform: torch.Tensor, sample_rate: int) -> dict[str, Any]:
    """(C,N) or (N,) waveform -> AUDIO ``{"waveform": (1,C,N) float32 CPU, "sample_rate"}``."""
    wav = waveform.detach().float().cpu()
    if wav.ndim == 1:
        wav = wav[None]
    return {"waveform": wav[None].contiguous(), "sample_rate": int(sample_rate)}


def audio_span(audio: dict[str, Any], start_seconds: float, seconds: float) -> dict[str, Any]:
    """The part of AUDIO from ``start_seconds`` lasting exactly ``seconds`` (silence-padded at the end).

    Keeps the original sample rate and channels, so the video gets the speech at full quality and
    exactly as long as the frames.
    """
    wav, sr = audio_parts(audio)
    start = max(0, int(round(start_seconds * sr)))
    length = max(0, int(round(seconds * sr)))
    part = wav[:, start:start + length]
    if part.shape[1] < length:
        part = torch.nn.functional.pad(part, (0, length - part.shape[1]))
    return make_audio(part, sr)


#: Sample rates FFmpeg's AAC encoder accepts, in Hz.
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def mono_track(audio: dict[str, Any], seconds: float) -> tuple[torch.Tensor, int]:
    """AUDIO -> the mono soundtrack of a video exactly ``seconds`` long: ((N,) float32 CPU, rate in Hz).

    Channels are averaged (the video writer stores mono AAC); a rate AAC cannot store is resampled
    to 16 kHz by the library's resampler.
    """
    wav, sr = audio_parts(audio_span(audio, 0.0, seconds))
    if sr in AAC_RATES:
        return wav.mean(dim=0), sr
    from ..kdtalker_core.audio import SAMPLE_RATE, to_mono_16k

    return to_mono_16k(wav, sr), SAMPLE_RATE


def silence(seconds: float, sample_rate: int = 16000) -> dict[str, Any]:
    """Mono silent AUDIO of the given length."""
    return make_audio(torch.zeros(1, max(0, int(round(seconds * sample_rate)))), sample_rate)


def as_image(frames: torch.Tensor) -> torch.Tensor:
    """(T,H,W,3) frames anywhere -> ComfyUI IMAGE: contiguous float32 on the CPU."""
    return frames.detach().float().cpu().contiguous()


def as_mask(mask: torch.Tensor) -> torch.Tensor:
    """(H,W) or (B,H,W) mask -> ComfyUI MASK (B,H,W) float32 on the CPU."""
    mask = mask.detach().float().cpu()
    return (mask[None] if mask.ndim == 2 else mask).contiguous()


@contextmanager
def about_input(where: str) -> Iterator[None]:
    """Prefix a user-input error raised inside with the node input it is about (``where``, e.g.
    "Encode Audio, input 'audio'"), keeping its type and its what-to-do message."""
    try:
        yield
    except KDTalkerError as exc:
        raise type(exc)(f"{where}: {exc}") from exc


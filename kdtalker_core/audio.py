"""Speech audio -> 16 kHz mono -> Wav2Lip mel spectrogram -> one 80x16 mel window per video frame.

This reproduces the audio front end of the official KDTalker inference (Wav2Lip's ``hparams``):

* decode any file PyAV/FFmpeg can read; integer PCM is scaled by ``1/2**(bits-1)`` (int16 -> x/32768);
* average the channels, resample to 16 kHz with soxr "HQ" (what librosa 0.10's default
  ``soxr_hq`` calls) and fix the length to ``ceil(N * 16000 / sr)`` samples;
* keep ``T = int(N16 / (16000 / fps))`` video frames and the first ``int(T * 16000 / fps)`` samples;
* pre-emphasis 0.97, STFT (n_fft 800, hop 200, periodic Hann, zero-padded centre), magnitude,
  80-band Slaney mel filterbank 55-7600 Hz, ``20 log10(max(1e-5, .)) - 20`` dB and a clipped
  symmetric normalisation to [-4, 4];
* window ``i`` is 16 mel frames starting at ``int(80 * (i - 2) / fps)``, clamped into range.

Everything after resampling is torch and runs on the waveform's device. The spectrum is computed in
float64 on CPU and CUDA (as the official numpy code does) and in float32 on devices without float64
(MPS). float32 (``compute_dtype=torch.float32``) differs from the official float64 mel by about
4e-5 on the [-4, 4] scale for speech at normal level (measured on the golden clips; the golden
tolerance is 1e-4); quiet bins close to the -100 dB floor are the least precise in float32. The STFT
runs over blocks of frames, so its float64 temporaries do not grow with the audio length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AudioError, InputError

#: Sample rate of everything downstream of :func:`to_mono_16k`, in Hz.
SAMPLE_RATE = 16000
#: STFT size, hop and window length in samples (50 ms window, 12.5 ms hop at 16 kHz).
N_FFT = 800
HOP_SIZE = 200
WIN_SIZE = 800
#: Mel filterbank: number of bands and band edges in Hz.
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
#: Pre-emphasis coefficient k of y[n] = x[n] - k x[n-1].
PREEMPHASIS = 0.97
#: dB scaling: floor (dB) and reference level (dB) subtracted from the mel dB values.
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
#: Normalised mel values lie in [-MAX_ABS_VALUE, MAX_ABS_VALUE].
MAX_ABS_VALUE = 4.0
#: Mel frames per video-frame window, and mel frames per second (SAMPLE_RATE / HOP_SIZE).
WINDOW_STEPS = 16
MEL_FRAMES_PER_SECOND = 80.0
#: Resampler quality passed to python-soxr (librosa's res_type 'soxr_hq').
RESAMPLE_QUALITY = "HQ"

# Integer sample formats of FFmpeg -> full-scale divisor (float formats need none).
_INT_FORMAT_SCALE = {"s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


# --------------------------------------------------------------------------------------------- loading
def load_audio_file(path: str | Path, *, fps: float = 25.0) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of any container PyAV reads (wav, flac, mp3, m4a/aac, ogg/opus,
    mkv/mp4 video files, ...), at any sample rate and channel count.

    Returns ``(waveform, sample_rate)``: waveform (C, N) float32 on CPU, full scale [-1, 1]
    (int16 PCM maps to exactly ``int16 / 32768``, unsigned 8-bit to ``(u8 - 128) / 128``),
    sample_rate in Hz at the file's native rate (no resampling here). Silence is valid.

    Raises AudioError naming the file when it is missing, has no audio stream, cannot be decoded,
    decodes to no samples, holds NaN or infinite samples, or is shorter than one video frame at
    ``fps`` (40 ms at 25 fps).
    """
    import av  # local: PyAV loads FFmpeg, only needed for files

    p = Path(path)
    if not p.is_file():
        raise AudioError(f"Audio file not found: {str(p)!r}. Check the path (or pick the file again).")
    chunks: list[np.ndarray] = []
    rate: int | None = None
    try:
        with av.open(str(p), mode="r") as container:
            if not container.streams.audio:
                raise AudioError(
                    f"{p.name!r} has no audio stream. Give a speech file (wav, flac, mp3, m4a, ogg, ...)."
                )
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                if rate is None:
                    rate = int(frame.sample_rate)
                elif int(frame.sample_rate) != rate:
                    raise AudioError(
                        f"{p.name!r} changes sample rate mid-stream ({rate} -> {frame.sample_rate} Hz). "
                        "Re-encode it to a plain wav first, e.g. `ffmpeg -i in -ar 16000 -ac 1 out.wav`."
                    )
                chunks.append(_frame_to_float(frame))
    except AudioError:
        raise
    except Exception as exc:  # FFmpeg raises many error types for broken/unsupported data
        raise AudioError(
            f"Could not decode audio file {str(p)!r} ({type(exc).__name__}: {exc}). Use a wav, flac, mp3, "
            "m4a or ogg file, or convert it with `ffmpeg -i in -ar 16000 -ac 1 out.wav`."
        ) from exc
    if rate is None or not chunks:
        raise AudioError(f"Audio file {str(p)!r} decoded to no samples. Give a file that contains speech.")
    waveform = torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks, axis=1)))
    if waveform.shape[1] == 0:
        raise AudioError(f"Audio file {str(p)!r} decoded to no samples. Give a file that contains speech.")
    if not bool(torch.isfinite(waveform).all()):
        bad = int((~torch.isfinite(waveform)).sum())
        raise AudioError(
            f"Audio file {str(p)!r} contains {bad} NaN or infinite samples. Re-export it from the source "
            "(e.g. as 16-bit wav) so every sample is a number."
        )
    need = samples_per_frame(fps) * rate / SAMPLE_RATE
    if waveform.shape[1] < need:
        raise AudioError(
            f"Audio file {str(p)!r} is too short: {waveform.shape[1] / rate * 1000:.1f} ms, shorter than one "
            f"video frame ({1000 / fps:.0f} ms at {fps:g} fps). Give a longer clip."
        )
    return waveform, rate


def _frame_to_float(frame: Any) -> np.ndarray:
    """One decoded PyAV AudioFrame -> (C, n) float32 full-scale samples."""
    fmt = frame.format
    channels = int(frame.layout.nb_channels)
    data = frame.to_ndarray()
    if not fmt.is_planar:  # packed formats come back as (1, n*C), interleaved
        data = data.reshape(-1, channels).T
    base = fmt.name.rstrip("p")
    if base in _INT_FORMAT_SCALE:
        return (data.astype(np.float64) / _INT_FORMAT_SCALE[base]).astype(np.float32)
    if base == "u8":
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if base in ("flt", "dbl"):
        return data.astype(np.float32)
    raise AudioError(f"Unsupported audio sample format {fmt.name!r}. Convert the file to 16-bit wav first.")


# ------------------------------------------------------------------------------------- mono + 16 kHz
def to_mono_16k(waveform: torch.Tensor | Mapping[str, Any], sample_rate: int | None = None) -> torch.Tensor:
    """Mix down to mono (mean over channels) and resample to 16 kHz with soxr HQ.

    Args:
        waveform: (N,), (C, N), or ComfyUI's (1, C, N) full-scale samples (float, or int16 PCM which is
            divided by 32768); or a ComfyUI AUDIO dict ``{"waveform": (1, C, N), "sample_rate": sr}``.
        sample_rate: input rate in Hz (taken from the dict when a dict is given).

    Returns:
        (N16,) float32 on the input's device, ``N16 = ceil(N * 16000 / sample_rate)``. A 16 kHz input is
        only mixed down; other rates go through python-soxr on the CPU (the one step not in torch).
    """
    if isinstance(waveform, Mapping):
        if "waveform" not in waveform:
            raise AudioError("The AUDIO input has no 'waveform'. Connect a Load Audio node (or a wav file).")
        sample_rate = waveform.get("sample_rate", sample_rate) if sample_rate is None else sample_rate
        waveform = waveform["waveform"]
    if sample_rate is None:
        raise InputError("to_mono_16k needs the sample rate of the waveform (Hz).")
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise AudioError(f"Invalid audio sample rate {sample_rate} Hz. Re-save the audio with a normal rate.")
    x = _as_float_channels(torch.as_tensor(waveform))
    if x.shape[-1] == 0:
        raise AudioError(
            "The audio is empty (0 samples). Give a clip with speech, at least one video frame long."
        )
    if not bool(torch.isfinite(x).all()):
        raise AudioError(
            "The audio contains NaN or infinite samples. Re-export it from the source (or clamp/clean it "
            "before KDTalker)."
        )
    mono = x.mean(dim=0) if x.shape[0] > 1 else x[0]
    if sample_rate == SAMPLE_RATE:
        return mono.contiguous()
    target_len = math.ceil(mono.shape[0] * (float(SAMPLE_RATE) / sample_rate))
    resampled = _soxr_resample(mono.detach().cpu().numpy(), sample_rate)
    out = torch.from_numpy(_fix_length(resampled, target_len))
    return out.to(mono.device)


def _as_float_channels(x: torch.Tensor) -> torch.Tensor:
    """(N,) | (C, N) | (1, C, N) -> (C, N) float32; integer PCM scaled to full scale."""
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise AudioError(
                f"Got a batch of {x.shape[0]} audio clips; KDTalker takes one clip. Split the batch first."
            )
        x = x[0]
    elif x.ndim == 1:
        x = x[None]
    elif x.ndim != 2:
        raise AudioError(
            f"Audio must be (samples,), (channels, samples) or (1, channels, samples); got {tuple(x.shape)}."
        )
    if x.dtype == torch.int16:
        return x.to(torch.float32) / 32768.0
    if not x.is_floating_point():
        raise AudioError(f"Audio samples must be float in [-1, 1] or int16 PCM, got dtype {x.dtype}.")
    return x.to(torch.float32)


def _soxr_resample(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """soxr HQ resampling of a float32 (N,) signal from sample_rate to 16 kHz."""
    import soxr

    return np.asarray(
        soxr.resample(np.ascontiguousarray(mono, dtype=np.float32), sample_rate, SAMPLE_RATE,
                      quality=RESAMPLE_QUALITY),
        dtype=np.float32,
    )


def _fix_length(y: np.ndarray, size: int) -> np.ndarray:
    """Trim or zero-pad a 1-D signal to exactly ``size`` samples (librosa's fix_length)."""
    if y.shape[0] >= size:
        return np.ascontiguousarray(y[:size])
    return np.concatenate([y, np.zeros(size - y.shape[0], dtype=y.dtype)])


# -------------------------------------------------------------------------------------- frame timing
def samples_per_frame(fps: float = 25.0) -> float:
    """16 kHz samples per video frame (640.0 at 25 fps)."""
    if not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"fps must be a positive number, got {fps!r}.")
    return SAMPLE_RATE / float(fps)


def num_video_frames(num_samples_16k: int, fps: float = 25.0) -> int:
    """Number of whole video frames covered by ``num_samples_16k`` samples: ``int(N / (16000 / fps))``."""
    return int(int(num_samples_16k) / samples_per_frame(fps))


def crop_to_video_frames(wav16k: torch.Tensor, fps: float = 25.0) -> tuple[torch.Tensor, int]:
    """Cut a 16 kHz signal (N,) to whole video frames: returns (wav[:int(T * 16000 / fps)], T).

    Raises AudioError when the audio is shorter than one video frame (40 ms at 25 fps).
    """
    n = int(wav16k.shape[-1])
    frames = num_video_frames(n, fps)
    if frames < 1:
        need = samples_per_frame(fps)
        raise AudioError(
            f"The audio is too short: {n / SAMPLE_RATE * 1000:.1f} ms, shorter than one video frame "
            f"({need / SAMPLE_RATE * 1000:.0f} ms at {fps:g} fps). Give a longer clip."
        )
    return wav16k[..., : int(frames * samples_per_frame(fps))], frames


# --------------------------------------------------------------------------------------------- mel
def _hz_to_slaney_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear (3 per 200 Hz) below 1 kHz, logarithmic (27 per ln 6.4) above."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    lin = hz / f_sp
    log = min_log_mel + torch.log(hz / min_log_hz) / logstep
    return torch.where(hz >= min_log_hz, log, lin)


def _slaney_mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_hz_to_slaney_mel`."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    lin = f_sp * mel
    log = min_log_hz * torch.exp(logstep * (mel - min_log_mel))
    return torch.where(mel >= min_log_mel, log, lin)


@lru_cache(maxsize=4)
def mel_filterbank(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = NUM_MELS,
    fmin: float = FMIN, fmax: float = FMAX,
) -> torch.Tensor:
    """Triangular Slaney-normalised mel filterbank (n_mels, n_fft//2+1), float32 values, CPU.

    Bands are spaced uniformly on the Slaney mel scale between fmin and fmax (n_mels + 2 edges);
    band m rises linearly from edge m to edge m+1 and falls to edge m+2, and is scaled by
    ``2 / (edge[m+2] - edge[m])`` (equal area). The triangles are rounded to float32 before the
    area scaling and the product is rounded again, the same two roundings as librosa's float32 basis.
    """
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (1.0 / (n_fft * (1.0 / sample_rate)))
    lo = float(_hz_to_slaney_mel(torch.tensor(float(fmin), dtype=torch.float64)))
    hi = float(_hz_to_slaney_mel(torch.tensor(float(fmax), dtype=torch.float64)))
    steps = torch.arange(n_mels + 2, dtype=torch.float64)
    mel_points = lo + steps * ((hi - lo) / (n_mels + 1))
    mel_points[-1] = hi
    edges = _slaney_mel_to_hz(mel_points)  # (n_mels + 2,) Hz
    widths = edges[1:] - edges[:-1]  # (n_mels + 1,)
    dist = edges[:, None] - freqs[None, :]  # (n_mels + 2, bins)
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    tri = torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)
    area = 2.0 / (edges[2:] - edges[:-2])
    return (tri.to(torch.float64) * area[:, None]).to(torch.float32)


def default_compute_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (CPU, CUDA: matches the official numpy path), else float32."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def melspectrogram(
    wav16k: torch.Tensor, compute_dtype: torch.dtype | None = None, block_frames: int = 4096,
) -> torch.Tensor:
    """Wav2Lip normalised log-mel spectrogram of a 16 kHz mono signal.

    Args:
        wav16k: (N,) samples at 16 kHz, full scale, N >= 1.
        compute_dtype: float64 (default on CPU/CUDA, matches the official code to ~1e-7) or float32.
        block_frames: STFT frames computed at a time, which bounds the temporary complex spectrum
            (401 x block_frames) so memory stays flat in audio length; the result does not depend on it.

    Returns:
        (1 + N // 200, 80) float32, time-major, values in [-4, 4], on wav16k's device.
    """
    if wav16k.ndim != 1 or wav16k.shape[0] == 0:
        raise AudioError(
            f"melspectrogram needs a non-empty 1-D 16 kHz signal, got shape {tuple(wav16k.shape)}."
        )
    if block_frames < 1:
        raise InputError(f"block_frames must be >= 1, got {block_frames}.")
    dtype = compute_dtype or default_compute_dtype(wav16k.device)
    n = wav16k.shape[0]
    num_frames = 1 + n // HOP_SIZE
    window = torch.hann_window(WIN_SIZE, periodic=True, dtype=dtype, device=wav16k.device)
    basis = mel_filterbank().to(device=wav16k.device, dtype=dtype)  # (80, 401)
    floor = math.exp(MIN_LEVEL_DB / 20.0 * math.log(10.0))
    out = torch.empty(num_frames, NUM_MELS, dtype=torch.float32, device=wav16k.device)
    for first in range(0, num_frames, block_frames):
        count = min(block_frames, num_frames - first)
        segment = _emphasised_segment(wav16k, first * HOP_SIZE - N_FFT // 2,
                                      (first + count - 1) * HOP_SIZE + N_FFT // 2, dtype)
        spectrum = torch.stft(
            segment, n_fft=N_FFT, hop_length=HOP_SIZE, win_length=WIN_SIZE, window=window,
            center=False, return_complex=True,
        )  # (401, count) complex
        # |z| as sqrt(re^2 + im^2): within 1 ulp of hypot (complex abs) and about twice as fast.
        magnitude = torch.linalg.vector_norm(torch.view_as_real(spectrum), dim=-1)
        mel = basis @ magnitude  # (80, count)
        db = 20.0 * torch.log10(torch.clamp(mel, min=floor)) - REF_LEVEL_DB
        scaled = (2.0 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
        out[first:first + count] = torch.clamp(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).T
    return out


def _emphasised_segment(wav: torch.Tensor, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
    """Samples ``start..stop-1`` of the pre-emphasised signal, zeros outside ``[0, N)``, in dtype.

    Frame j of the centred STFT covers samples ``j*hop - n_fft/2 .. j*hop + n_fft/2 - 1`` of the
    pre-emphasised signal zero-extended on both sides; computing only the part a block of frames
    needs keeps the float64 temporaries proportional to the block, not to the audio length.
    """
    n = wav.shape[0]
    lo, hi = max(start, 0), min(stop, n)
    x = wav[max(lo - 1, 0):hi].to(dtype)
    emphasised = x[1:] - PREEMPHASIS * x[:-1]
    if lo == 0:
        emphasised = torch.cat([x[:1], emphasised])
    return torch.nn.functional.pad(emphasised, (lo - start, stop - hi))


def window_starts(num_frames: int, fps: float = 25.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T,) int64 first mel frame of each video frame's window: ``int(80 * ((i - 2) / fps))``.

    The division and product are float64 like the official Python float arithmetic, then truncated
    toward zero (frame 0 -> -6, frame 1 -> -3 at 25 fps).
    """
    samples_per_frame(fps)  # validates fps
    i = torch.arange(int(num_frames), dtype=torch.float64, device=device)
    return torch.trunc(MEL_FRAMES_PER_SECOND * ((i - 2.0) / float(fps))).to(torch.int64)


def mel_windows(mel: torch.Tensor, num_frames: int, fps: float = 25.0) -> torch.Tensor:
    """Per-video-frame mel windows (one gather).

    Args:
        mel: (frames, 80) time-major mel from :func:`melspectrogram`.
        num_frames: T, the number of video frames (>= 1).
        fps: video frame rate.

    Returns:
        (T, 80, 16): window i holds mel frames ``start_i .. start_i + 15`` (clamped into
        ``[0, frames - 1]``) transposed to (mel bin, time).
    """
    if num_frames < 1:
        raise AudioError(
            "No video frames to make: the audio is shorter than one video frame. Give a longer clip."
        )
    if mel.ndim != 2 or mel.shape[0] == 0:
        raise AudioError(f"mel_windows needs a (frames, mels) spectrogram, got shape {tuple(mel.shape)}.")
    starts = window_starts(num_frames, fps, device=mel.device)
    offsets = torch.arange(WINDOW_STEPS, dtype=torch.int64, device=mel.device)
    index = (starts[:, None] + offsets[None, :]).clamp_(0, mel.shape[0] - 1)  # (T, 16)
    return mel[index].transpose(1, 2).contiguous()


def audio_to_mel_windows(
    waveform: torch.Tensor | Mapping[str, Any], sample_rate: int | None = None, fps: float = 25.0,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw audio (any rate/channels, or a ComfyUI AUDIO dict) -> (windows, wav16k).

    windows: (T, 80, 16) float32 with T = :func:`num_video_frames`; wav16k: (int(T * 16000 / fps),)
    float32, the 16 kHz mono signal the T video frames cover (what the video should carry).
    Both on the input's device.
    """
    wav = to_mono_16k(waveform, sample_rate)
    cropped, frames = crop_to_video_frames(wav, fps)
    mel = melspectrogram(cropped, compute_dtype)
    return mel_windows(mel, frames, fps), cropped

"""Audio front end (kdtalker_core.audio) and Wav2Lip audio encoder: fixtures, formats, edge cases."""

from __future__ import annotations

import math
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soxr
import torch

from kdtalker_core import audio
from kdtalker_core.errors import AudioError
from kdtalker_core.golden import run_fixture
from kdtalker_core.networks.audio_encoder import AudioEncoder, audio_encoder_state_dict

ROOT = Path(__file__).resolve().parent
SPEECH = ROOT / "data" / "speech_16k_mono.wav"  # espeak-ng speech, 2.0 s, 16 kHz mono int16


def _read_pcm16(path: Path) -> tuple[np.ndarray, int]:
    """(C, N) int16 samples and rate of a PCM wav, via the stdlib (independent of PyAV)."""
    with wave.open(str(path), "rb") as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return raw.reshape(-1, w.getnchannels()).T.copy(), w.getframerate()


def _encode_with_pyav(path: Path, samples: np.ndarray, rate: int, codec: str, fmt: str) -> None:
    """Encode mono float samples (N,) in [-1, 1] to `path` with PyAV (codec in its sample format)."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        stream.time_base = Fraction(1, rate)
        if fmt.startswith("s16"):
            data = np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)
        else:
            data = samples.astype(np.float32)
        block = 1024
        for pts in range(0, data.shape[0], block):
            frame = av.AudioFrame.from_ndarray(data[None, pts:pts + block], format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = pts
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# ------------------------------------------------------------------------------------------ golden
@pytest.mark.parametrize("name", ["audio_mel_16k_mono", "audio_mel_44k1_stereo", "audio_encoder"])
def test_golden_fixture_passes(golden_dir: Path, name: str) -> None:
    results = run_fixture(golden_dir / name)
    failed = [r.line() for r in results if not r.ok]
    assert results and not failed, failed


# ----------------------------------------------------------------------------------------- loading
def test_wav_int16_maps_to_exactly_x_over_32768() -> None:
    pcm, rate = _read_pcm16(SPEECH)
    waveform, sr = audio.load_audio_file(SPEECH)
    assert sr == rate == 16000
    assert waveform.dtype == torch.float32 and waveform.shape == pcm.shape
    assert torch.equal(waveform, torch.from_numpy(pcm.astype(np.float32) / 32768.0))


@pytest.mark.parametrize(
    ("suffix", "codec", "fmt", "rate", "lossless"),
    [
        (".flac", "flac", "s16", 16000, True),
        (".mp3", "libmp3lame", "fltp", 16000, False),
        (".ogg", "libopus", "flt", 48000, False),
    ],
)
def test_compressed_formats_decode(tmp_path: Path, suffix: str, codec: str, fmt: str, rate: int,
                                   lossless: bool) -> None:
    pcm, _ = _read_pcm16(SPEECH)
    mono = pcm[0].astype(np.float64) / 32768.0
    if rate != 16000:
        mono = np.asarray(soxr.resample(mono, 16000, rate), dtype=np.float64)
    path = tmp_path / f"speech{suffix}"
    _encode_with_pyav(path, mono, rate, codec, fmt)

    waveform, sr = audio.load_audio_file(path)
    assert sr == rate and waveform.ndim == 2 and waveform.shape[0] == 1
    assert waveform.dtype == torch.float32 and torch.isfinite(waveform).all()
    if lossless:
        assert torch.equal(waveform[0], torch.from_numpy(pcm[0].astype(np.float32) / 32768.0))
        return
    # Lossy: codec delay/padding changes the length a little; the content must still be the speech.
    n = waveform.shape[1]
    assert abs(n - mono.shape[0]) < 0.1 * rate
    decoded = waveform[0].double().numpy()
    lag = int(np.argmax(np.correlate(decoded[: rate // 2 * 3], mono[: rate], mode="valid")))
    aligned = decoded[lag: lag + mono.shape[0]]
    m = min(aligned.shape[0], mono.shape[0])
    corr = np.corrcoef(aligned[:m], mono[:m])[0, 1]
    assert corr > 0.9, corr
    windows, wav16 = audio.audio_to_mel_windows(waveform, sr)
    assert windows.shape[1:] == (80, 16) and windows.shape[0] == wav16.shape[0] // 640


def test_undecodable_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "not_really_audio.wav"
    bad.write_bytes(b"this is plain text, not RIFF audio" * 10)
    with pytest.raises(AudioError, match="not_really_audio.wav"):
        audio.load_audio_file(bad)
    with pytest.raises(AudioError, match="not found"):
        audio.load_audio_file(tmp_path / "missing.mp3")


# ------------------------------------------------------------------------------- mono + resampling
def test_comfyui_audio_dict_and_any_layout() -> None:
    pcm, _ = _read_pcm16(SPEECH)
    mono = torch.from_numpy(pcm[0].astype(np.float32) / 32768.0)
    stereo = torch.stack([mono, 0.5 * mono])
    expected = (stereo[0] + stereo[1]) / 2
    comfy = {"waveform": stereo[None], "sample_rate": 16000}
    assert torch.equal(audio.to_mono_16k(comfy), expected)
    assert torch.equal(audio.to_mono_16k(comfy["waveform"], comfy["sample_rate"]), expected)
    assert torch.equal(audio.to_mono_16k(mono, 16000), mono)
    windows, wav16 = audio.audio_to_mel_windows(comfy)
    assert windows.shape == (50, 80, 16) and wav16.shape == (32000,)
    with pytest.raises(AudioError, match="batch"):
        audio.to_mono_16k(torch.zeros(2, 1, 16000), 16000)


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (22050, 3), (44100, 2), (48000, 6)])
def test_any_rate_and_channel_count(rate: int, channels: int) -> None:
    n = int(rate * 0.37) + 3
    t = torch.arange(n, dtype=torch.float64) / rate
    tone = torch.sin(2 * math.pi * 440.0 * t).float()
    waveform = torch.stack([tone * (c + 1) / channels for c in range(channels)])
    wav16 = audio.to_mono_16k(waveform, rate)
    assert wav16.shape == (math.ceil(n * 16000 / rate),) and wav16.dtype == torch.float32
    # The resampled tone keeps its amplitude (mean of the channel gains) and frequency.
    gain = float(np.mean([(c + 1) / channels for c in range(channels)]))
    mid = wav16[800:-800].double()
    assert abs(mid.abs().max().item() - gain) < 0.02
    spectrum = torch.fft.rfft(mid * torch.hann_window(mid.shape[0], dtype=torch.float64)).abs()
    peak_hz = int(spectrum.argmax()) * 16000 / mid.shape[0]
    assert abs(peak_hz - 440.0) < 16000 / mid.shape[0] * 1.5
    windows, _ = audio.audio_to_mel_windows(waveform, rate)
    assert windows.shape == (audio.num_video_frames(wav16.shape[0]), 80, 16)


# -------------------------------------------------------------------------------------- edge cases
def test_silence_is_valid() -> None:
    windows, wav16 = audio.audio_to_mel_windows(torch.zeros(2, 44100), 44100)
    assert windows.shape == (25, 80, 16) and wav16.shape == (16000,)
    assert torch.equal(windows, torch.full_like(windows, -4.0))


@pytest.mark.parametrize(("rate", "n"), [(16000, 640), (16000, 1279), (44100, 1764), (11025, 441)])
def test_one_video_frame(rate: int, n: int) -> None:
    waveform = 0.1 * torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    windows, wav16 = audio.audio_to_mel_windows(waveform, rate)
    assert windows.shape == (1, 80, 16) and wav16.shape == (640,)
    mel = audio.melspectrogram(wav16)
    assert mel.shape == (4, 80)
    # frame 0 covers mel frames -6..9 clamped into 0..3: six copies of frame 0, then 1, 2, and 3 x 8
    expected_index = [0] * 7 + [1, 2] + [3] * 7
    assert torch.equal(windows[0], mel[expected_index].T)


@pytest.mark.parametrize(
    ("waveform", "message"),
    [
        (torch.zeros(0), "empty"),
        (torch.zeros(2, 0), "empty"),
        (torch.zeros(639), "too short"),
        (torch.tensor([0.0, float("nan")] * 500), "NaN"),
        (torch.tensor([0.0, float("inf")] * 500), "infinite"),
    ],
)
def test_bad_audio_raises_helpful_error(waveform: torch.Tensor, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        audio.audio_to_mel_windows(waveform, 16000)


def test_too_short_after_resampling() -> None:
    with pytest.raises(AudioError, match="shorter than one video frame .40 ms at 25 fps"):
        audio.audio_to_mel_windows(torch.zeros(1700), 44100)


@pytest.mark.parametrize("fps", [25.0, 24.0, 30.0, 29.97, 60.0])
def test_window_starts_follow_python_int_truncation(fps: float) -> None:
    count = 400
    expected = [int(80.0 * ((i - 2) / float(fps))) for i in range(count)]
    assert audio.window_starts(count, fps).tolist() == expected
    mel = torch.arange(1000, dtype=torch.float32)[:, None].expand(1000, 80)
    windows = audio.mel_windows(mel, count, fps)
    first_col = windows[:, 0, :]
    reference = torch.tensor([[min(max(s + k, 0), 999) for k in range(16)] for s in expected])
    assert torch.equal(first_col, reference.float())


def test_real_speech_file_end_to_end() -> None:
    waveform, rate = audio.load_audio_file(SPEECH)
    windows, wav16 = audio.audio_to_mel_windows(waveform, rate)
    assert windows.shape == (50, 80, 16) and wav16.shape == (32000,)
    assert windows.min() >= -4 and windows.max() <= 4 and windows.std() > 0.5
    assert audio.num_video_frames(32000) == 50
    # Official float arithmetic: 32000 / (16000 / 30) = 59.999... -> 59 frames (kept for faithfulness).
    assert audio.num_video_frames(32000, fps=30) == 59


def test_float32_mel_close_to_float64() -> None:
    waveform, _ = audio.load_audio_file(SPEECH)
    wav16 = waveform[0]
    ref = audio.melspectrogram(wav16)
    fast = audio.melspectrogram(wav16, compute_dtype=torch.float32)
    assert (fast - ref).abs().max() < 2e-4


# ------------------------------------------------------------------------------------------ encoder
def _random_encoder(seed: int = 0) -> AudioEncoder:
    torch.manual_seed(seed)
    enc = AudioEncoder()
    with torch.no_grad():
        for module in enc.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def test_encoder_state_dict_matches_wav2lip_layout(golden_dir: Path) -> None:
    import json

    manifest = json.loads((golden_dir / "manifests" / "wav2lip.pth.json").read_text())["keys"]
    official = {k[len("module.audio_encoder."):]: v["shape"] for k, v in manifest.items()
                if k.startswith("module.audio_encoder.")}
    ours = {k: list(v.shape) for k, v in AudioEncoder().state_dict().items()}
    assert ours == official
    wrapped = {f"module.audio_encoder.{k}": v for k, v in AudioEncoder().state_dict().items()}
    wrapped["module.face_encoder_blocks.0.0.conv_block.0.weight"] = torch.zeros(1)
    AudioEncoder().load_state_dict(audio_encoder_state_dict(wrapped), strict=True)


def test_encoder_shapes_chunks_and_fusion() -> None:
    enc = _random_encoder()
    windows = torch.randn(3, 80, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = enc(windows)
        assert out.shape == (3, 512) and (out >= 0).all()
        assert torch.equal(enc(windows[:, None]), out)
    assert torch.allclose(enc.encode_in_chunks(windows, chunk=2), out, atol=1e-6, rtol=0)
    fused = enc.fused()
    assert "0.conv_block.1.running_mean" in enc.state_dict()  # the original is untouched
    assert "0.conv_block.1.running_mean" not in fused.state_dict()
    assert torch.allclose(fused.encode_in_chunks(windows), out, atol=1e-4, rtol=1e-5)
    # In float64 folding BatchNorm is exact up to rounding: the maths is the same function.
    enc64 = _random_encoder().double()
    with torch.no_grad():
        ref64 = enc64(windows[:1].double())
        assert (enc64.fused()(windows[:1].double()) - ref64).abs().max() < 1e-10
    single = enc.encode_in_chunks(windows[:1])
    assert single.shape == (1, 512)


def test_mel_blocks_do_not_change_the_result() -> None:
    waveform, _ = audio.load_audio_file(SPEECH)
    for n in (1, 199, 640, 31999):
        wav16 = waveform[0, :n]
        whole = audio.melspectrogram(wav16)
        assert whole.shape == (1 + n // 200, 80)
        assert torch.equal(audio.melspectrogram(wav16, block_frames=7), whole)

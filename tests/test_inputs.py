"""Photos and audio as people have them: real files written here, read back by the library.

Images: the sample portrait saved by Pillow as a phone JPEG with an EXIF rotation, CMYK and YCCK
JPEGs, 16-bit grayscale PNG and TIFF, palette and alpha PNGs, WebP; broken files are refused with
the file named. Audio: the sample speech re-encoded with PyAV into several containers, codecs,
rates and channel counts; NaN, sub-frame, empty and corrupt audio are refused with the file named,
silence is accepted.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from kdtalker_core import audio
from kdtalker_core.errors import AudioError, InputError
from kdtalker_core.image_io import read_image

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "kdtalker_core" / "assets" / "sample_portrait.jpg"
SPEECH = ROOT / "kdtalker_core" / "assets" / "sample_speech.wav"


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """The sample portrait as decoded by Pillow: (H, W, 3) uint8."""
    with Image.open(PORTRAIT) as img:
        return np.asarray(img.convert("RGB")).copy()


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# --------------------------------------------------------------------------------------------- images


def test_exif_orientation_is_applied(tmp_path, rgb):
    # A phone stores the pixels sideways and sets Orientation=6 ("rotate 90 degrees clockwise to view").
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif)
    out = read_image(path)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert _mean_abs(out, rgb) < 3.0
    naive = np.asarray(Image.open(path).convert("RGB"))
    assert naive.shape[:2] == rgb.shape[1::-1] and _mean_abs(np.rot90(naive, -1), rgb) < 3.0


def test_cmyk_jpeg(tmp_path, rgb):
    path = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95, subsampling=0)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
    assert _mean_abs(read_image(path), rgb) < 3.0


def _ycck_jpeg(rgb: np.ndarray, path: Path) -> None:
    """A YCCK JPEG (Adobe APP14 transform 2) holding ``rgb`` with no black ink.

    The decoder turns YCC into (R', G', B') with the JFIF matrix and outputs the stored CMYK value
    C_s = 255 - R'; Adobe files store inverted ink, C_s = 255 - C = R for ink C = 255 - R. So the
    stored Y, Cb, Cr are those of (255 - R, 255 - G, 255 - B) and the stored K is 255 (no ink).
    Pillow writes CMYK JPEGs inverted with transform 0; the components are handed over inverted and
    the transform byte is patched to 2.
    """
    inv = 255.0 - rgb.astype(np.float64)
    r, g, b = inv[..., 0], inv[..., 1], inv[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    k = np.full_like(y, 255.0)
    stored = np.clip(np.rint(np.stack([y, cb, cr, k], -1)), 0, 255).astype(np.uint8)
    Image.fromarray(255 - stored, mode="CMYK").save(path, quality=95, subsampling=0)
    data = bytearray(path.read_bytes())
    app14 = data.find(b"\xff\xee\x00\x0eAdobe")
    assert app14 > 0, "Pillow wrote no Adobe marker"
    assert data[app14 + 15] == 0
    data[app14 + 15] = 2
    path.write_bytes(bytes(data))


def test_ycck_jpeg(tmp_path, rgb):
    path = tmp_path / "ycck.jpg"
    _ycck_jpeg(rgb, path)
    out = read_image(path)
    assert _mean_abs(out, rgb) < 3.0
    # The same bytes read as plain CMYK (transform ignored) would be far off: YCCK was really decoded.
    plain = bytearray(path.read_bytes())
    at = plain.find(b"\xff\xee\x00\x0eAdobe")
    plain[at + 15] = 0
    (tmp_path / "as_cmyk.jpg").write_bytes(bytes(plain))
    assert _mean_abs(read_image(tmp_path / "as_cmyk.jpg"), rgb) > 20.0


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grayscale(tmp_path, rgb, suffix):
    gray8 = np.asarray(Image.fromarray(rgb).convert("L"))
    gray16 = gray8.astype(np.uint16) * 257 + 100  # uses the low byte too
    path = tmp_path / f"scan16{suffix}"
    Image.fromarray(gray16).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I"), img.mode
    out = read_image(path)
    expected = np.rint(gray16 / 257.0).clip(0, 255).astype(np.uint8)
    assert out.shape == rgb.shape and np.array_equal(out[..., 0], expected)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_8bit_grayscale_and_bilevel(tmp_path, rgb):
    gray = Image.fromarray(rgb).convert("L")
    gray.save(tmp_path / "gray.png")
    assert np.array_equal(read_image(tmp_path / "gray.png"), np.repeat(np.asarray(gray)[..., None], 3, 2))
    gray.convert("1").save(tmp_path / "bw.png")
    out = read_image(tmp_path / "bw.png")
    assert set(np.unique(out)) <= {0, 255} and out.shape == rgb.shape


def test_palette_images(tmp_path, rgb):
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(tmp_path / "pal.png")
    pal.save(tmp_path / "pal.gif")
    expected = np.asarray(pal.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "pal.png"), expected)
    assert _mean_abs(read_image(tmp_path / "pal.gif"), expected) < 1.0
    pal.info["transparency"] = 0  # palette entry 0 transparent
    pal.save(tmp_path / "pal_t.png", transparency=0)
    assert np.array_equal(read_image(tmp_path / "pal_t.png"), expected)


def test_alpha_images_keep_the_stored_colours(tmp_path, rgb):
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, rgb.shape[1] // 2:] = 255  # left half fully transparent
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(tmp_path / "la.png")
    assert np.array_equal(read_image(tmp_path / "la.png")[..., 1], gray)


def test_webp(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "lossless.webp", lossless=True)
    assert np.array_equal(read_image(tmp_path / "lossless.webp"), rgb)
    Image.fromarray(rgb).save(tmp_path / "lossy.webp", quality=90)
    assert _mean_abs(read_image(tmp_path / "lossy.webp"), rgb) < 4.0


def test_bytes_pil_and_arrays(rgb):
    data = PORTRAIT.read_bytes()
    assert np.array_equal(read_image(data), rgb)
    assert np.array_equal(read_image(Image.fromarray(rgb)), rgb)
    assert np.array_equal(read_image(rgb.astype(np.uint16) * 257), rgb)
    assert np.array_equal(read_image(torch.from_numpy(rgb).float().div(255)[None]), rgb)


def test_broken_images_are_refused_with_the_file_named(tmp_path):
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(InputError, match="nowhere.jpg"):
        read_image(missing)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(PORTRAIT.read_bytes()[:5000])
    with pytest.raises(InputError, match=r"cut\.jpg.*damaged"):
        read_image(truncated)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(InputError, match=r"notes\.png"):
        read_image(text)
    with pytest.raises(InputError, match="portrait input"):
        read_image(np.zeros((4, 4, 2), np.uint8), name="portrait input")


# --------------------------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """The sample speech, (N,) float32 at its native rate (16 kHz)."""
    wav, rate = audio.load_audio_file(SPEECH)
    return wav[0].numpy(), rate


def _encode(path: Path, samples: np.ndarray, rate: int, codec: str, channels: int,
            fmt: str = "fltp") -> None:
    """Write (N,) float samples to ``path`` with PyAV: resampled to ``rate``, ``channels`` copies."""
    import soxr

    src = np.asarray(soxr.resample(samples, 16000, rate), np.float32) if rate != 16000 else samples
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
        data = np.ascontiguousarray(np.repeat(src[None], channels, 0), np.float32)
        block = 4096
        for start in range(0, data.shape[1], block):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + block]),
                                               format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for out in resampler.resample(frame):
                for packet in stream.encode(out):
                    container.mux(packet)
        for out in resampler.resample(None):
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize(("name", "codec", "rate", "channels"), [
    ("speech.flac", "flac", 44100, 2),
    ("speech.mp3", "libmp3lame", 48000, 2),
    ("speech.m4a", "aac", 22050, 1),
    ("speech.opus", "libopus", 48000, 1),
    ("speech.mkv", "pcm_s16le", 8000, 2),
    ("speech_24bit.wav", "pcm_s24le", 32000, 1),
])
def test_any_container_rate_and_channels(tmp_path, speech, name, codec, rate, channels):
    samples, native = speech
    path = tmp_path / name
    _encode(path, samples, rate, codec, channels)
    wav, sr = audio.load_audio_file(path)
    assert sr == rate and wav.shape[0] == channels and wav.dtype == torch.float32
    seconds = samples.shape[0] / native
    assert abs(wav.shape[1] / sr - seconds) < 0.08, "lossy codecs add at most a few frames of padding"
    mono = audio.to_mono_16k(wav, sr).numpy()
    # Align (codec delay) and compare the speech band: the decoded speech is the original speech.
    n = min(mono.shape[0], samples.shape[0])
    best = max(float(np.corrcoef(mono[lag:lag + n - 2000], samples[: n - 2000])[0, 1]) for lag in range(0, 1800, 8))
    assert best > 0.9 if rate >= 16000 else best > 0.8


def _wav_float(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_f32le", rate=rate, layout="mono")
        if samples.size:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None], np.float32),
                                               format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = 0
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_audio_refusals_name_the_file(tmp_path, speech):
    samples = speech[0][:16000].copy()
    samples[100:110] = np.nan
    _wav_float(tmp_path / "nan.wav", samples)
    with pytest.raises(AudioError, match=r"nan\.wav.*NaN or infinite"):
        audio.load_audio_file(tmp_path / "nan.wav")
    samples[100:110] = np.inf
    _wav_float(tmp_path / "inf.wav", samples)
    with pytest.raises(AudioError, match=r"inf\.wav.*NaN or infinite"):
        audio.load_audio_file(tmp_path / "inf.wav")
    _wav_float(tmp_path / "blip.wav", speech[0][:320])  # 20 ms < one frame (40 ms)
    with pytest.raises(AudioError, match=r"blip\.wav.*too short"):
        audio.load_audio_file(tmp_path / "blip.wav")
    _wav_float(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(AudioError, match=r"empty\.wav"):
        audio.load_audio_file(tmp_path / "empty.wav")
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match=r"corrupt\.mp3"):
        audio.load_audio_file(corrupt)


def test_silence_is_valid(tmp_path):
    _wav_float(tmp_path / "silence.wav", np.zeros(16000, np.float32))
    wav, sr = audio.load_audio_file(tmp_path / "silence.wav")
    assert sr == 16000 and wav.shape == (1, 16000) and float(wav.abs().max()) == 0.0
    windows, _ = audio.audio_to_mel_windows(wav, sr)
    assert windows.shape == (25, 80, 16) and torch.isfinite(windows).all()
    _wav_float(tmp_path / "one_frame.wav", np.zeros(640, np.float32))
    assert audio.load_audio_file(tmp_path / "one_frame.wav")[0].shape == (1, 640)

"""Benchmark the audio front end: decode, resample, mel, per-frame windows, full-size audio encoder.

Each duration runs in its own subprocess so its peak resident memory (``ru_maxrss``) is its own.
The speech is the test clip ``tests/data/speech_16k_mono.wav`` tiled to the requested length,
written as a 16 kHz mono wav (decoded with ``load_audio_file``); the resampling stage times
``to_mono_16k`` on the same speech at 44.1 kHz stereo. The encoder has random weights (speed does
not depend on them), BatchNorm fused, run with ``encode_in_chunks``.

When the reference environment ``/tmp/kdref-venv`` (librosa 0.10) and the official source
``/tmp/kdtalker_src`` exist, the official mel + window extraction is timed on the same wav in a
subprocess and its windows are compared with ours (not a dependency; skipped otherwise).

    python -m bench.bench_audio [--seconds 2 60 600] [--threads N] [--chunk 256]
                                [--encoder fused|plain] [--no-reference]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SPEECH = ROOT / "tests" / "data" / "speech_16k_mono.wav"
REF_PYTHON = Path("/tmp/kdref-venv/bin/python")
REF_SOURCE = Path("/tmp/kdtalker_src")

# Runs in the reference venv: the official load_wav + melspectrogram, then the per-frame windows
# built the way Inferencer.extract_mel_from_audio does (start int(80*(i-2)/25), 16 steps, clamped).
_REFERENCE_SCRIPT = r"""
import sys, time, os
sys.path.insert(0, sys.argv[1])
import numpy as np
from dataset_process import audio as official
t0 = time.perf_counter()
wav = official.load_wav(sys.argv[2], 16000)
t1 = time.perf_counter()
frames = int(len(wav) / 640.0)
wav = wav[: frames * 640]
mel = official.melspectrogram(wav).T
t2 = time.perf_counter()
last = mel.shape[0] - 1
windows = np.stack([mel[[min(max(int(80.0 * ((i - 2) / 25.0)) + k, 0), last) for k in range(16)]].T
                    for i in range(frames)])
t3 = time.perf_counter()
np.save(sys.argv[3], windows.astype(np.float32))
print(t1 - t0, t2 - t1, t3 - t2)
"""


def _rss_mb() -> float:
    """Current resident memory of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """Peak resident memory of this process so far in MB (Linux ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _speech(seconds: float) -> np.ndarray:
    """The test speech tiled to `seconds` at 16 kHz, int16 (N,)."""
    with wave.open(str(SPEECH), "rb") as w:
        clip = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    n = int(round(seconds * 16000))
    return np.resize(clip, n)


def _write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    """(C, N) or (N,) int16 -> PCM wav."""
    pcm = pcm[None] if pcm.ndim == 1 else pcm
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm.T).tobytes())


def run_child(seconds: float, threads: int | None, chunk: int, encoder_kind: str, wav_path: Path) -> dict:
    """Time every stage for one duration in this process; returns a JSON-able dict."""
    import soxr
    import torch

    from kdtalker_core import audio
    from kdtalker_core.networks.audio_encoder import AudioEncoder

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = AudioEncoder().eval()
    if encoder_kind == "fused":
        encoder.fuse_batchnorm_()
    with torch.inference_mode():  # warm-up: oneDNN primitive creation, filterbank cache
        encoder.encode_in_chunks(torch.zeros(4, 80, 16))
        audio.melspectrogram(torch.zeros(6400))
    pcm = _speech(seconds)
    stereo_44k = np.stack([soxr.resample(pcm / 32768.0, 16000, 44100)] * 2).astype(np.float32)
    stereo_44k_t = torch.from_numpy(stereo_44k)
    base_mb = _rss_mb()

    times: dict[str, float] = {}
    t = time.perf_counter()
    waveform, rate = audio.load_audio_file(wav_path)
    times["decode_wav"] = time.perf_counter() - t
    t = time.perf_counter()
    wav16 = audio.to_mono_16k(waveform, rate)
    cropped, frames = audio.crop_to_video_frames(wav16)
    times["mono_16k"] = time.perf_counter() - t
    t = time.perf_counter()
    audio.to_mono_16k(stereo_44k_t, 44100)
    times["resample_44k1_stereo"] = time.perf_counter() - t
    t = time.perf_counter()
    mel = audio.melspectrogram(cropped)
    times["mel"] = time.perf_counter() - t
    t = time.perf_counter()
    windows = audio.mel_windows(mel, frames)
    times["windows"] = time.perf_counter() - t
    peak_front_mb = _peak_mb()
    t = time.perf_counter()
    features = encoder.encode_in_chunks(windows, chunk=chunk)
    times["encoder"] = time.perf_counter() - t
    np.save(wav_path.with_suffix(".windows.npy"), windows.numpy())
    return {
        "seconds": seconds, "frames": frames, "threads": torch.get_num_threads(), "times": times,
        "features_shape": list(features.shape), "rss_base_mb": base_mb,
        "peak_after_front_end_mb": peak_front_mb, "peak_mb": _peak_mb(),
    }


def run_reference(wav_path: Path, out_npy: Path) -> dict | None:
    """Official librosa path on the same wav (reference venv); None when it is not available."""
    if not (REF_PYTHON.exists() and (REF_SOURCE / "dataset_process" / "audio.py").exists()):
        return None
    proc = subprocess.run(
        [str(REF_PYTHON), "-c", _REFERENCE_SCRIPT, str(REF_SOURCE), str(wav_path), str(out_npy)],
        capture_output=True, text=True, cwd=str(REF_SOURCE),
    )
    if proc.returncode != 0:
        print(f"reference run failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    load, mel, windows = (float(v) for v in proc.stdout.split()[-3:])
    return {"load": load, "mel": mel, "windows": windows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 60.0, 600.0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--chunk", type=int, default=256, help="encoder frames per chunk")
    parser.add_argument("--encoder", choices=("fused", "plain"), default="fused")
    parser.add_argument("--no-reference", action="store_true", help="skip the official librosa timing")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--wav", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(run_child(args.child, args.threads, args.chunk, args.encoder, args.wav)))
        return

    print(f"{'audio':>7} {'frames':>6} {'decode':>8} {'resamp44k':>9} {'mel':>8} {'windows':>8} "
          f"{'encoder':>8} {'enc/frame':>9} {'peak MB':>8} {'front MB':>8} | {'ref mel':>8} "
          f"{'ref win':>8} {'max|d|':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            wav_path = Path(tmp) / f"speech_{seconds:g}s.wav"
            _write_wav(wav_path, _speech(seconds), 16000)
            cmd = [sys.executable, "-m", "bench.bench_audio", "--child", str(seconds), "--wav", str(wav_path),
                   "--chunk", str(args.chunk), "--encoder", args.encoder]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = None if args.no_reference else run_reference(wav_path, Path(tmp) / "ref.npy")
            ref_cols = "        -        -        -"
            if ref is not None:
                ours = np.load(wav_path.with_suffix(".windows.npy"))
                diff = float(np.abs(np.load(Path(tmp) / "ref.npy") - ours).max())
                ref_cols = f"{ref['mel']:8.3f} {ref['windows']:8.3f} {diff:8.1e}"
            t = r["times"]
            print(f"{seconds:6g}s {r['frames']:6d} {t['decode_wav']:8.3f} {t['resample_44k1_stereo']:9.3f} "
                  f"{t['mel']:8.3f} {t['windows']:8.4f} {t['encoder']:8.2f} "
                  f"{1000 * t['encoder'] / r['frames']:7.2f}ms {r['peak_mb']:8.0f} "
                  f"{r['peak_after_front_end_mb'] - r['rss_base_mb']:8.0f} | {ref_cols}", flush=True)
    print("times in seconds; 'front MB' = peak RSS growth over the process baseline up to the windows "
          "(decode + resample + mel + windows); 'peak MB' = whole-process peak RSS incl. torch and the "
          f"encoder; encoder = {args.encoder} BatchNorm, chunk {args.chunk}, random weights.")


if __name__ == "__main__":
    main()

"""Write frames + speech to an H.264/AAC mp4 with PyAV (no ffmpeg binary), atomically.

Frames arrive as chunks (n, H, W, 3) float in [0, 1] (any device); they are converted to uint8 on
the host one chunk at a time, so memory stays flat in the video length. The file is written next to
its final path and renamed only when complete: a failure or cancel leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch


def _to_uint8(chunk: torch.Tensor) -> np.ndarray:
    """(n,H,W,3) float [0,1] -> (n,H,W,3) uint8 numpy, rounding like the official parse_output (floor)."""
    return (chunk.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()


def write_mp4(
    path: str | Path,
    frames: Iterable[torch.Tensor],
    fps: float,
    audio: torch.Tensor | np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 18,
) -> int:
    """Encode frame chunks (and optional mono audio (N,) float [-1,1]) into ``path``.

    Returns the number of frames written. Width/height are taken from the first chunk and must be
    even for yuv420p (odd sizes are padded by one pixel of edge replication).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part.mp4", dir=path.parent)
    os.close(fd)
    count = 0
    try:
        with av.open(tmp_name, mode="w", format="mp4") as container:
            chunks = iter(frames)
            first = next(chunks, None)
            if first is None:
                raise ValueError("no frames to write")
            h, w = first.shape[1:3]
            vstream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            vstream.width, vstream.height = w + (w % 2), h + (h % 2)
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"crf": str(crf), "preset": "medium"}
            astream = None
            if audio is not None:
                astream = container.add_stream("aac", rate=sample_rate)
                astream.layout = "mono"
            for chunk in _chain(first, chunks):
                for img in _to_uint8(chunk):
                    if img.shape[0] % 2 or img.shape[1] % 2:
                        img = np.pad(img, ((0, img.shape[0] % 2), (0, img.shape[1] % 2), (0, 0)), mode="edge")
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                    container.mux(vstream.encode(frame))
                    count += 1
            container.mux(vstream.encode())
            if astream is not None:
                _mux_audio(container, astream, audio, sample_rate)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count


def _chain(first: torch.Tensor, rest: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    yield first
    yield from rest


def _mux_audio(container, astream, audio: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Encode mono float audio (N,) as AAC into ``astream`` of an open container."""
    import av

    samples = torch.as_tensor(audio).detach().float().cpu().reshape(-1).clamp(-1, 1).numpy()
    frame_size = 1024
    for start in range(0, samples.shape[0], frame_size):
        block = np.ascontiguousarray(samples[start:start + frame_size][None, :], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        container.mux(astream.encode(frame))
    container.mux(astream.encode())


def probe_mp4(path: str | Path) -> dict[str, float]:
    """Read back an mp4: frame count, video fps, video and audio durations in seconds."""
    import av

    info: dict[str, float] = {"frames": 0, "fps": 0.0, "video_seconds": 0.0, "audio_seconds": 0.0}
    with av.open(str(path)) as c:
        for s in c.streams:
            if s.type == "video":
                info["fps"] = float(s.average_rate or 0)
            if s.type == "audio":
                info["audio_sample_rate"] = float(s.rate)
        audio_samples = 0
        for frame in c.decode(*c.streams):
            if isinstance(frame, av.VideoFrame):
                info["frames"] += 1
            else:
                audio_samples += frame.samples
        if info["fps"]:
            info["video_seconds"] = info["frames"] / info["fps"]
        if audio_samples:
            info["audio_seconds"] = audio_samples / info["audio_sample_rate"]
    return info

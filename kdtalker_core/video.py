"""Write frames + speech to an H.264/AAC mp4 with PyAV (no ffmpeg binary), atomically.

Frames arrive as chunks (n, H, W, 3) float in [0, 1] (any device); they are converted to uint8 on
the host one chunk at a time, so memory stays flat in the video length. The file is written next to
its final path and renamed only when complete: a failure or cancel leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .atomic import publish, temp_beside


def _to_uint8(chunk: torch.Tensor) -> np.ndarray:
    """(n,H,W,3) float [0,1] -> (n,H,W,3) uint8 numpy, rounding like the official parse_output (floor)."""
    return (chunk.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()


class Mp4Writer:
    """An mp4 written chunk by chunk: ``start`` -> ``write`` ... -> ``finish`` (or ``abort``).

    A :class:`kdtalker_core.pipeline.FrameSink` (frames streamed by :func:`kdtalker_core.pipeline.run`)
    and the engine of :func:`write_mp4`. Frames are encoded as they arrive; the speech (mono (N,)
    float [-1,1]) is muxed at the end. Nothing appears at ``path`` until ``finish`` succeeds.
    """

    def __init__(self, path: str | Path, *, crf: int = 18) -> None:
        self.path = Path(path)
        self.crf = int(crf)
        self.frames = 0
        self._fps: float | None = None
        self._audio: torch.Tensor | np.ndarray | None = None
        self._sample_rate = 16000
        self._tmp: Path | None = None
        self._container = None
        self._vstream = None
        self._astream = None

    def start(self, fps: float, audio: torch.Tensor | np.ndarray | None = None, sample_rate: int = 16000) -> None:
        """Set the frame rate and the soundtrack; the file is created at the first frame."""
        self._fps, self._audio, self._sample_rate = float(fps), audio, int(sample_rate)

    def _open(self, height: int, width: int) -> None:
        import av

        if self._fps is None:
            raise ValueError("Mp4Writer.start(fps, ...) must be called before the first frame")
        self._tmp = temp_beside(self.path, ".part.mp4")
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        vstream = self._container.add_stream("libx264", rate=Fraction(self._fps).limit_denominator(1001))
        vstream.width, vstream.height = width + (width % 2), height + (height % 2)
        vstream.pix_fmt = "yuv420p"
        # a short rate-control lookahead (x264's default is 40 frames at "medium") keeps the encoder's
        # memory flat from ~20 frames on; at a fixed crf the quality barely changes
        vstream.options = {"crf": str(self.crf), "preset": "medium", "rc-lookahead": "10"}
        self._vstream = vstream
        if self._audio is not None:
            self._astream = self._container.add_stream("aac", rate=self._sample_rate)
            self._astream.layout = "mono"

    def write(self, chunk: torch.Tensor) -> None:
        """Encode frames (n,H,W,3) float [0,1] (any device); odd sizes get one edge pixel of padding."""
        import av

        if self._container is None:
            self._open(*chunk.shape[1:3])
        for img in _to_uint8(chunk):
            if img.shape[0] % 2 or img.shape[1] % 2:
                img = np.pad(img, ((0, img.shape[0] % 2), (0, img.shape[1] % 2), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            self._container.mux(self._vstream.encode(frame))
            self.frames += 1

    def finish(self) -> int:
        """Flush the encoder, add the speech, move the file to ``path``; returns the frame count."""
        if self._container is None:
            raise ValueError("no frames to write")
        try:
            self._container.mux(self._vstream.encode())
            if self._astream is not None:
                _mux_audio(self._container, self._astream, self._audio, self._sample_rate)
            self._container.close()
            self._container = None
            publish(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.frames

    def abort(self) -> None:
        """Discard everything written so far (no file is left behind)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the encoder may be in any state after a failure
                pass
            self._container = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


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
    writer = Mp4Writer(path, crf=crf)
    writer.start(fps, audio, sample_rate)
    try:
        for chunk in frames:
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


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


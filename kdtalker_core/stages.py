"""Stage progress and frame sinks: how a job reports its stages and where its frames go.

:func:`kdtalker_core.pipeline.run` (and the several-face run) report every stage of :data:`STAGES`
through one ``on_stage(stage, done, total)`` callback and stream the rendered frames chunk by chunk
into a :class:`FrameSink` (an mp4 writer, or a :class:`FrameCollector` for an in-memory result).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from .audio import SAMPLE_RATE as SPEECH_RATE

#: ``on_stage(stage, done, total)``: every stage of a run, in the order of :data:`STAGES`.
StageCallback = Callable[[str, int, int], None]
#: The stages a run always reports, in order.
STAGES: tuple[str, ...] = ("audio", "portrait", "motion", "render", "encode")
#: Reported between "portrait" and "motion" only when a pose video is given.
POSE_STAGE = "pose"


class FrameSink(Protocol):
    """Where rendered frames go, chunk by chunk (e.g. :class:`kdtalker_core.video.Mp4Writer`).

    ``start(fps, speech, sample_rate)`` once before the first frame (speech: (N,) float32 mono
    covering exactly the frames), ``write(frames)`` per chunk ((n,H,W,3) float [0,1] on the compute
    device), then ``finish()`` — or ``abort()`` after a failure or cancel (leave nothing behind).
    """

    def start(self, fps: float, speech: torch.Tensor, sample_rate: int) -> None: ...

    def write(self, frames: torch.Tensor) -> None: ...

    def finish(self) -> Any: ...

    def abort(self) -> None: ...


class FrameCollector:
    """A :class:`FrameSink` that keeps every frame: ``frames`` (T,H,W,3) float32 on the CPU after ``finish``."""

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self.frames: torch.Tensor | None = None

    def start(self, fps: float, speech: torch.Tensor, sample_rate: int) -> None:
        self._parts = []

    def write(self, frames: torch.Tensor) -> None:
        self._parts.append(frames.float().cpu())

    def finish(self) -> torch.Tensor:
        self.frames = torch.cat(self._parts, 0)
        self._parts = []
        return self.frames

    def abort(self) -> None:
        self._parts = []


class StageClock:
    """Reports stage progress to an ``on_stage(stage, done, total)`` callback and times each stage.

    ``seconds`` maps each finished stage to its wall time. The callback may raise to cancel.
    """

    def __init__(self, on_stage: StageCallback | None = None) -> None:
        self.on_stage = on_stage
        self.seconds: dict[str, float] = {}

    def report(self, stage: str, done: int, total: int) -> None:
        """Forward one progress report (no-op without a callback)."""
        if self.on_stage is not None:
            self.on_stage(stage, done, total)

    def timed(self, stage: str, total: int, work: Callable[[], Any]) -> Any:
        """Run ``work()`` as ``stage``: reports ``(0, total)`` first and ``(total, total)`` last."""
        self.report(stage, 0, total)
        t0 = time.perf_counter()
        out = work()
        self.seconds[stage] = time.perf_counter() - t0
        self.report(stage, total, total)
        return out


def stream_frames(chunks: Iterator[torch.Tensor], total: int, fps: float, speech: torch.Tensor,
                  sink: FrameSink | None, clock: StageClock) -> tuple[torch.Tensor | None, tuple[int, int]]:
    """The "render" and "encode" stages: every chunk (n,H,W,3) of ``chunks`` (``total`` frames in
    all) into ``sink`` (default: a :class:`FrameCollector`), with ``speech`` (16 kHz) as its sound.

    Returns the collected frames (None when streamed to a caller's sink) and the frame size (H,W).
    On any error or cancel the sink is aborted (no half-written file).
    """
    out = sink if sink is not None else FrameCollector()

    def render_all() -> tuple[int, int]:
        done, frame_hw = 0, (0, 0)
        for chunk in chunks:
            out.write(chunk)
            done, frame_hw = done + int(chunk.shape[0]), tuple(chunk.shape[1:3])
            if done < total:
                clock.report("render", done, total)
        return frame_hw

    out.start(fps, speech, SPEECH_RATE)
    try:
        frame_hw = clock.timed("render", total, render_all)
        clock.timed("encode", 1, out.finish)
    except BaseException:
        out.abort()
        raise
    return (out.frames if isinstance(out, FrameCollector) else None), frame_hw

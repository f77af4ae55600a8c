"""Render: portrait + motion -> video frames (batched on the device, chunk by chunk).

A frame range (``start_frame``, ``frame_count``) renders one segment of the clip, so a graph can
push a long clip through IMAGE nodes (upscalers, face restorers) in parts; every frame depends
only on its own motion (blink timing is computed over the whole clip), so segments put together
equal one pass. Blinks, eye / mouth openness and stitching act at render time (optional inputs,
off by default: :mod:`.performance`); ``motion_scale`` (optional, off) renders the motion's own head
scale (a driving video's zoom) instead of the portrait's.
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..kdtalker_core import pipeline
from ..kdtalker_core.errors import InputError
from ..kdtalker_core.motion import Motion
from . import performance as perf
from . import types as t
from . import widgets as w
from .models import ModelHandle
from .progress import NodeProgress


class KDTalkerRender(io.ComfyNode):
    """Warp and decode every frame; optionally paste the face back into the full photo."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerRender",
            display_name="KDTalker Render",
            category="KDTalker",
            description="Renders the frames (the slow part). Outputs an IMAGE batch for Create Video, "
                        "Video Combine, upscalers or face restorers, plus the audio and frame rate.",
            inputs=[
                t.Portrait.Input("portrait", tooltip="From Prepare Portrait."),
                t.Motion.Input("motion", tooltip="From Sample Motion or a motion tool."),
                t.Models.Input("models", tooltip="From Load KDTalker Models."),
                w.chunk_size_input(),
                w.paste_back_input(),
                io.Int.Input("start_frame", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="First frame to render (0 = the start). With frame_count, renders one "
                                     "segment of a long clip; segments joined in order equal one pass."),
                io.Int.Input("frame_count", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="How many frames to render from start_frame; 0 renders to the end "
                                     "of the motion."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Optional: the audio output of Encode Audio. The part under the "
                                       "rendered frames is passed through (cut or padded to their length); "
                                       "without it the audio output is silence of that length."),
                *perf.render_performance_inputs(),
                motion_scale_input(),
            ],
            outputs=[
                io.Image.Output("images", tooltip="The frames (T,H,W,3)."),
                io.Mask.Output("mask", tooltip="Where the face was pasted (1 = rendered face), (1,H,W)."),
                io.Audio.Output("audio", tooltip="Audio exactly as long as the frames."),
                io.Float.Output("fps", tooltip="Frame rate of the frames."),
            ],
        )

    @classmethod
    def execute(cls, portrait, motion, models: ModelHandle, chunk_size: int, paste_back: bool,
                start_frame: int = 0, frame_count: int = 0, audio: dict[str, Any] | None = None,
                motion_scale: bool = False, **performance: Any) -> io.NodeOutput:
        frames = frame_slice(motion, start_frame, frame_count)
        options = perf.performance_options(**performance)
        progress = NodeProgress()
        try:
            result = pipeline.render(models.acquire(), portrait, motion, chunk_size=chunk_size,
                                     paste_back=paste_back, motion_scale=bool(motion_scale),
                                     performance=options, frames=frames, callback=progress.stage("work"))
        finally:
            models.release()
        seconds = result.frames.shape[0] / result.fps
        start_seconds = start_frame / result.fps
        out_audio = t.audio_span(audio, start_seconds, seconds) if audio is not None else t.silence(seconds)
        return io.NodeOutput(t.as_image(result.frames), t.as_mask(result.mask), out_audio, float(result.fps))


def motion_scale_input() -> io.Boolean.Input:
    """The optional ``motion_scale`` switch of Render and Render Video (off: the official rendering)."""
    return io.Boolean.Input(
        "motion_scale", default=False, optional=True,
        tooltip="Render the head scale stored in the motion (a driving video's zoom from Extract Video "
                "Motion / Mix Motion). Off = the portrait's own scale, as the official KDTalker renders "
                "speech motion.")


def frame_slice(motion: Motion, start_frame: int, frame_count: int) -> slice | None:
    """Frames ``start_frame .. start_frame + frame_count - 1`` of ``motion`` as a slice (``frame_count``
    0: to the end; None: the whole motion). Raises InputError for a start past the end."""
    total = motion.num_frames
    if start_frame < 0 or frame_count < 0:
        raise InputError(f"Render: start_frame and frame_count must be >= 0, got {start_frame} and {frame_count}.")
    if start_frame >= total:
        raise InputError(f"Render: start_frame {start_frame} is past the end of the motion ({total} frames, "
                         f"0..{total - 1}). Lower start_frame.")
    stop = total if frame_count == 0 else min(total, start_frame + frame_count)
    return None if start_frame == 0 and stop == total else slice(start_frame, stop)


def frame_range(motion: Motion, start_frame: int, frame_count: int) -> Motion:
    """Frames ``start_frame .. start_frame + frame_count - 1`` of ``motion`` (``frame_count`` 0: to the end)."""
    frames = frame_slice(motion, start_frame, frame_count)
    return motion if frames is None else Motion(motion.data[frames], motion.fps)

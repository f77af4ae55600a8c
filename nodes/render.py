"""Render: portrait + motion -> video frames (batched on the device, chunk by chunk)."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..kdtalker_core import pipeline
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
                io.Audio.Input("audio", optional=True,
                               tooltip="Optional: the audio output of Encode Audio. It is passed through, "
                                       "cut or padded to the length of the frames; without it the audio "
                                       "output is silence of that length."),
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
                audio: dict[str, Any] | None = None) -> io.NodeOutput:
        progress = NodeProgress()
        try:
            result = pipeline.render(models.acquire(), portrait, motion, chunk_size=chunk_size,
                                     paste_back=paste_back, callback=progress.stage("work"))
        finally:
            models.release()
        seconds = result.frames.shape[0] / result.fps
        out_audio = t.audio_span(audio, 0.0, seconds) if audio is not None else t.silence(seconds)
        return io.NodeOutput(t.as_image(result.frames), t.as_mask(result.mask), out_audio, float(result.fps))

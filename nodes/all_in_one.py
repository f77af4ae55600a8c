"""KDTalker: the whole pipeline in one node (photo + speech -> frames, audio, fps)."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..kdtalker_core import options, pipeline
from . import types as t
from . import widgets as w
from .models import ModelHandle
from .progress import NodeProgress

#: Share of the progress bar per stage of :data:`kdtalker_core.pipeline.STAGES` (rendering dominates).
STAGES = {"audio": 0.2, "portrait": 0.2, "motion": 1.6, "render": 8.0, "encode": 0.1}


class KDTalker(io.ComfyNode):
    """Photo + speech -> talking-portrait frames, with the official settings by default."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalker",
            display_name="KDTalker (all in one)",
            category="KDTalker",
            search_aliases=["talking head", "talking portrait", "lip sync", "audio driven portrait"],
            description="Animates the face in a photo to speak the audio. Outputs frames, the matching "
                        "audio and the frame rate: connect them to Create Video or Video Combine.",
            inputs=[
                io.Image.Input("image", tooltip="The portrait photo (the first image of a batch is used)."),
                io.Audio.Input("audio", tooltip="The speech (any sample rate, mono or stereo)."),
                t.Models.Input("models", tooltip="From Load KDTalker Models."),
                w.seed_input(),
                w.steps_input(),
                w.smoothing_input(),
                w.chunk_size_input(),
                w.paste_back_input(),
            ],
            outputs=[
                io.Image.Output("images", tooltip=f"The frames (T,H,W,3) at {options.DEFAULTS.fps:g} fps."),
                io.Audio.Output("audio", tooltip="The speech, exactly as long as the frames."),
                io.Float.Output("fps", tooltip=f"Frame rate of the frames ({options.DEFAULTS.fps:g})."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, audio: dict[str, Any], models: ModelHandle, seed: int, steps: int,
                smoothing: float, chunk_size: int, paste_back: bool) -> io.NodeOutput:
        job = options.GenerateOptions(seed=seed, steps=steps, smoothing=smoothing, chunk_size=chunk_size,
                                      paste_back=paste_back)
        progress = NodeProgress(STAGES)
        waveform, sample_rate = t.audio_parts(audio)
        try:
            result = pipeline.generate(models.acquire(), t.first_image(image), waveform, sample_rate, job,
                                       image_name="the portrait image",
                                       on_stage=lambda stage, done, total: progress.stage(stage)(done, total))
        finally:
            models.release()
        seconds = result.num_frames / result.fps
        return io.NodeOutput(t.as_image(result.frames), t.audio_span(audio, job.start_seconds, seconds),
                             float(result.fps))

"""KDTalker: the whole pipeline in one node (photo + speech -> frames, audio, fps)."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..kdtalker_core import pipeline
from . import types as t
from . import widgets as w
from .models import ModelHandle
from .progress import NodeProgress

#: Frame rate of the one-node path (KDTalker's training rate).
FPS = 25.0
#: Share of the progress bar per stage (rendering dominates the run time).
STAGES = {"audio": 0.2, "portrait": 0.2, "motion": 1.6, "render": 8.0}


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
                io.Image.Output("images", tooltip="The frames (T,H,W,3) at 25 fps."),
                io.Audio.Output("audio", tooltip="The speech, exactly as long as the frames."),
                io.Float.Output("fps", tooltip="Frame rate of the frames (25)."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, audio: dict[str, Any], models: ModelHandle, seed: int, steps: int,
                smoothing: float, chunk_size: int, paste_back: bool) -> io.NodeOutput:
        progress = NodeProgress(STAGES)
        try:
            m = models.acquire()
            waveform, sample_rate = t.audio_parts(audio)
            features = pipeline.encode_audio(m, waveform, sample_rate, fps=FPS)
            progress.stage("audio")(1, 1)
            portrait = pipeline.prepare_portrait(m, t.first_image(image), name="the portrait image")
            progress.stage("portrait")(1, 1)
            motion = pipeline.sample_motion(m, portrait, features, seed=seed, steps=steps,
                                            smoothing=smoothing, callback=progress.stage("motion"))
            result = pipeline.render(m, portrait, motion, chunk_size=chunk_size, paste_back=paste_back,
                                     callback=progress.stage("render"))
        finally:
            models.release()
        seconds = result.frames.shape[0] / result.fps
        return io.NodeOutput(t.as_image(result.frames), t.audio_span(audio, 0.0, seconds), float(result.fps))

"""KDTalker: the whole pipeline in one node (photo + speech -> frames, audio, fps, VIDEO).

Inputs added after the first release (fps, blinks, calm silences) are optional and default to the
official behaviour, so saved workflows keep loading and render as before; the VIDEO output comes
after the old ones, so saved links keep their slots.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from comfy_api.latest import InputImpl, Types, io

from ..kdtalker_core import options, pipeline
from . import performance as perf
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
                w.output_fps_input(optional=True),
                *perf.blink_inputs(optional=True, seed=False),
                perf.silence_strength_input(optional=True),
            ],
            outputs=[
                io.Image.Output("images", tooltip="The frames (T,H,W,3) at the fps input's rate."),
                io.Audio.Output("audio", tooltip="The speech, exactly as long as the frames."),
                io.Float.Output("fps", tooltip=f"Frame rate of the frames (the fps input, {options.DEFAULTS.fps:g} "
                                               "by default)."),
                io.Video.Output("video", tooltip="Frames + speech as ComfyUI VIDEO (for Save Video, previews)."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, audio: dict[str, Any], models: ModelHandle, seed: int, steps: int,
                smoothing: float, chunk_size: int, paste_back: bool, fps: float = options.DEFAULTS.fps,
                blinks_per_minute: float = options.DEFAULTS.blink_rate,
                blink_duration: float = options.DEFAULTS.blink_duration,
                eye_openness: float = options.DEFAULTS.eye_open,
                silence_calm: float = options.DEFAULTS.silence_calm) -> io.NodeOutput:
        job = options.GenerateOptions(seed=seed, steps=steps, smoothing=smoothing, chunk_size=chunk_size,
                                      paste_back=paste_back, fps=fps, blink_rate=blinks_per_minute,
                                      blink_duration=blink_duration, eye_open=eye_openness,
                                      silence_calm=silence_calm)
        progress = NodeProgress(STAGES)
        waveform, sample_rate = t.audio_parts(audio)
        try:
            result = pipeline.generate(models.acquire(), t.first_image(image), waveform, sample_rate, job,
                                       image_name="the portrait image",
                                       on_stage=lambda stage, done, total: progress.stage(stage)(done, total))
        finally:
            models.release()
        seconds = result.num_frames / result.fps
        images = t.as_image(result.frames)
        speech = t.audio_span(audio, job.start_seconds, seconds)
        video = InputImpl.VideoFromComponents(Types.VideoComponents(
            images=images, audio=speech, frame_rate=Fraction(result.fps).limit_denominator(1001)))
        return io.NodeOutput(images, speech, float(result.fps), video)

"""Encode Audio: speech -> per-frame audio features (and the exact audio the frames cover)."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..kdtalker_core import pipeline
from . import types as t
from . import widgets as w
from .models import ModelHandle


class KDTalkerEncodeAudio(io.ComfyNode):
    """Speech at any sample rate / channel count -> Wav2Lip features, one per video frame."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerEncodeAudio",
            display_name="KDTalker Encode Audio",
            category="KDTalker",
            description="Turns speech into one audio feature per video frame. Also outputs the part of "
                        "the audio the frames cover, at its original quality, for the video file.",
            inputs=[
                io.Audio.Input("audio", tooltip="The speech (any sample rate, mono or stereo; only the first "
                                                "clip of a batch is used)."),
                t.Models.Input("models", tooltip="From Load KDTalker Models."),
                w.fps_input(),
                io.Float.Input("start_seconds", default=w.DEFAULTS.start_seconds, min=0.0, max=1e6, step=0.1,
                               tooltip="Skip this many seconds at the start of the audio."),
                io.Float.Input("duration_seconds", default=0.0, min=0.0, max=1e6, step=0.1,
                               tooltip="Use this many seconds of audio after the start; 0 uses the rest."),
            ],
            outputs=[
                t.AudioFeatures.Output("audio_features", tooltip="Per-frame features for Sample Motion."),
                io.Audio.Output("audio", tooltip="The audio the frames cover (trimmed, original quality): "
                                                 "connect it to Render or to the video node."),
            ],
        )

    @classmethod
    def execute(cls, audio: dict[str, Any], models: ModelHandle, fps: float, start_seconds: float,
                duration_seconds: float) -> io.NodeOutput:
        waveform, sample_rate = t.audio_parts(audio)
        try:
            with t.about_input("Encode Audio, input 'audio'"):
                features = pipeline.encode_audio(models.acquire(), waveform, sample_rate, fps=fps,
                                                 start_seconds=start_seconds,
                                                 duration_seconds=duration_seconds if duration_seconds > 0 else None)
        finally:
            models.release()
        covered = t.audio_span(audio, start_seconds, features.num_frames / features.fps)
        return io.NodeOutput(features, covered)

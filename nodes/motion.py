"""Sample Motion: portrait + audio features -> per-frame head pose and expression."""

from __future__ import annotations

from comfy_api.latest import io

from ..kdtalker_core import pipeline
from . import types as t
from . import widgets as w
from .models import ModelHandle
from .progress import NodeProgress


class KDTalkerSampleMotion(io.ComfyNode):
    """Run the diffusion model over the whole clip (64-frame windows), then smooth."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerSampleMotion",
            display_name="KDTalker Sample Motion",
            category="KDTalker",
            description="Generates head pose and facial expression for every frame from the audio "
                        "(diffusion sampling). Cheap compared with rendering: try several seeds.",
            inputs=[
                t.Portrait.Input("portrait", tooltip="From Prepare Portrait."),
                t.AudioFeatures.Input("audio_features", tooltip="From Encode Audio."),
                t.Models.Input("models", tooltip="From Load KDTalker Models."),
                w.seed_input(),
                w.steps_input(),
                w.eta_input(),
                w.smoothing_input(),
            ],
            outputs=[t.Motion.Output("motion", tooltip="Per-frame motion for Render or the motion tools.")],
        )

    @classmethod
    def execute(cls, portrait, audio_features, models: ModelHandle, seed: int, steps: int, eta: float,
                smoothing: float) -> io.NodeOutput:
        progress = NodeProgress()
        motion = pipeline.sample_motion(models.acquire(), portrait, audio_features, seed=seed, steps=steps,
                                        eta=eta, smoothing=smoothing, callback=progress.stage("work"))
        return io.NodeOutput(motion)

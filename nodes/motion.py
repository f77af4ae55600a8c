"""Sample Motion: portrait + audio features -> per-frame head pose and expression."""

from __future__ import annotations

from comfy_api.latest import io

from . import types as t
from .core import pipeline
from .models import ModelHandle
from .progress import NodeProgress

SEED_MAX = 0xFFFFFFFFFFFFFFFF


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
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Random seed: other seeds give other head motion for the same speech."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps per 64-frame window. 50 is the official setting; "
                                     "10 is about 5x faster with similar lip sync."),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="DDIM eta: 0 is deterministic DDIM (official); 1 adds fresh noise "
                                       "at every step like DDPM."),
                io.Float.Input("smoothing", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Kalman smoothing of the motion: 1 is the official amount, 0 is off."),
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

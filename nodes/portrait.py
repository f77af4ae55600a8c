"""Prepare Portrait: photo -> cropped face, appearance volume and source keypoints."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..kdtalker_core import options, pipeline
from . import types as t
from .models import ModelHandle


class KDTalkerPreparePortrait(io.ComfyNode):
    """Detect the face, crop it and run the appearance and motion extractors once."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerPreparePortrait",
            display_name="KDTalker Prepare Portrait",
            category="KDTalker",
            description="Finds the face in the photo, crops it the way KDTalker was trained, and extracts "
                        "its appearance and keypoints. Reuse the result for any number of audio clips.",
            inputs=[
                io.Image.Input("image", tooltip="The portrait photo. With a batch, the first image is used."),
                t.Models.Input("models", tooltip="From Load KDTalker Models."),
                io.Int.Input("face_index", default=options.DEFAULTS.face_index, min=0, max=63,
                             tooltip="Which face to animate when the photo shows several, counted in the "
                                     "order below (0 = first)."),
                io.Combo.Input("order", options=list(options.FACE_ORDERS), default=options.DEFAULTS.face_order,
                               tooltip="How faces are ordered for face_index: largest first, left to right, "
                                       "top to bottom, or detector (most confident first, the official "
                                       "choice)."),
                io.Combo.Input("crop_mode", options=list(options.CROP_MODES), default=options.DEFAULTS.crop_mode,
                               tooltip="official: KDTalker's landmark-based crop (as in the paper). square: "
                                       "a square crop aligned to the eyes and mouth (rotation removed). "
                                       "square_axis: the same square without rotation."),
            ],
            outputs=[
                t.Portrait.Output("portrait", tooltip="The prepared face, for Sample Motion and Render."),
                io.Image.Output("crop_preview", tooltip="The 256x256 crop the model sees."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, models: ModelHandle, face_index: int, order: str,
                crop_mode: str) -> io.NodeOutput:
        portrait = pipeline.prepare_portrait(models.acquire(), t.first_image(image), face_index=face_index,
                                             order=order, crop_mode=crop_mode, name="the portrait image")
        return io.NodeOutput(portrait, t.as_image(portrait.crop_preview()))

"""Video-driven motion: head pose from a driving video, and mixing it with the speech motion.

Thin wrappers over :mod:`kdtalker_core.driving` (tracking, crops, LivePortrait's relative driving).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..kdtalker_core import driving
from . import types as t
from .models import ModelHandle
from .progress import NodeProgress

CATEGORY = "KDTalker/motion"


class KDTalkerExtractVideoMotion(io.ComfyNode):
    """A driving video's head motion and expression, applied to the portrait."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerExtractVideoMotion",
            display_name="KDTalker Extract Video Motion",
            category=CATEGORY,
            description="Tracks the face through a driving video, crops it like the portrait and reads its "
                        "head pose and expression with LivePortrait's motion extractor. Relative mode "
                        "(LivePortrait's default for videos) applies each frame's change since the first "
                        "frame to the portrait's own pose. Combine with the speech motion in Mix Motion.",
            inputs=[
                io.Image.Input("video", tooltip="The driving video as an IMAGE batch (one image per frame), "
                                                "e.g. Load Video -> Get Video Components (images; wire its fps "
                                                "to fps too). The face is found on the first frame."),
                t.Portrait.Input("portrait", tooltip="From Prepare Portrait: the face the motion is for (its "
                                                     "pose is the starting point, its crop mode is used)."),
                t.Models.Input("models", tooltip="From Load KDTalker Models (uses the motion extractor)."),
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.001,
                               tooltip="Frame rate of the driving video. KDTalker speech motion is 25 fps; "
                                       "Mix Motion needs both motions at the same rate."),
                io.Combo.Input("pose_mode", options=["relative", "absolute"], default="relative",
                               tooltip="relative: changes since the video's first frame are added to the "
                                       "portrait's pose and expression (keeps the portrait's identity). "
                                       "absolute: the video's pose and expression as they are."),
                io.Float.Input("crop_smoothing", default=1.5, min=0.0, max=10.0, step=0.1,
                               tooltip="Temporal smoothing of the face crop, in frames (Gaussian standard "
                                       "deviation); 0 crops every frame on its own landmarks (jitters)."),
                io.Int.Input("face_index", default=0, min=0, max=64,
                             tooltip="Which face of the video's first frame to follow (0 = the detector's "
                                     "most confident one)."),
            ],
            outputs=[
                t.Motion.Output("motion", tooltip="Per-frame motion of the video, for Mix Motion or Render."),
                io.Image.Output("face_crops", tooltip="The face crops the motion extractor read (256x256), "
                                                      "to check the tracking."),
            ],
        )

    @classmethod
    def execute(cls, video, portrait, models: ModelHandle, fps: float, pose_mode: str, crop_smoothing: float,
                face_index: int) -> io.NodeOutput:
        progress = NodeProgress()
        try:
            result = driving.extract_video_motion(
                models.acquire().motion_extractor, video, portrait.kp_info, fps=fps, mode=pose_mode,
                crop_mode=portrait.crop.mode, smoothing=crop_smoothing, face_index=face_index,
                callback=progress.stage("work"),
            )
        finally:
            models.release()
        return io.NodeOutput(result.motion, t.as_image(driving.crops_as_image(result.crops)))


class KDTalkerMixMotion(io.ComfyNode):
    """Head pose from one motion, expression from another, or any per-field blend."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerMixMotion",
            display_name="KDTalker Mix Motion",
            category=CATEGORY,
            description="Per-field blend: a weight of 1 takes that field from pose_motion, 0 from "
                        "expression_motion. Defaults: head pose from the video, lips and eyes from the "
                        "speech. The result is as long as expression_motion (pose_motion loops, "
                        "ping-pongs or is cut).",
            inputs=[
                t.Motion.Input("pose_motion", tooltip="Usually from Extract Video Motion."),
                t.Motion.Input("expression_motion", tooltip="Usually from Sample Motion (speech): sets the "
                                                            "length and frame rate of the result."),
                io.Float.Input("rotation", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of pose_motion in the head rotation (yaw, pitch, roll)."),
                io.Float.Input("translation", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of pose_motion in the head position."),
                io.Float.Input("scale", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of pose_motion in the head scale (zoom)."),
                io.Float.Input("expression", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of pose_motion in the facial expression (0 = lips and eyes "
                                       "from expression_motion only)."),
                io.Combo.Input("length_mode", options=["loop", "pingpong", "cut"], default="loop",
                               tooltip="When pose_motion is shorter: loop it, play it back and forth, or cut "
                                       "the result to its length. A longer pose_motion is always cut."),
            ],
            outputs=[t.Motion.Output("motion", tooltip="The mixed motion.")],
        )

    @classmethod
    def execute(cls, pose_motion, expression_motion, rotation: float, translation: float, scale: float,
                expression: float, length_mode: str) -> io.NodeOutput:
        return io.NodeOutput(driving.mix_motion(pose_motion, expression_motion, rotation=rotation,
                                                translation=translation, scale=scale, exp=expression,
                                                fit=length_mode))

"""Motion utilities: scale pose / expression, still head, blend, save, load, plot.

Thin wrappers over :mod:`kdtalker_core.motion_edit`; every edit returns a new motion.
Motion files are safetensors written by ``save_motion`` and named ``*.motion.safetensors``; Save
Motion writes them to ComfyUI's output folder, Load Motion lists the input and output folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..kdtalker_core import errors, motion_edit
from . import types as t

MOTION_SUFFIX = ".motion.safetensors"
CATEGORY = "KDTalker/motion"


class KDTalkerScaleMotion(io.ComfyNode):
    """Damp or exaggerate head movement and facial expression."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerScaleMotion",
            display_name="KDTalker Scale Motion",
            category=CATEGORY,
            description="Scales head movement (rotation and translation) and expression separately.",
            inputs=[
                t.Motion.Input("motion", tooltip="The motion to edit."),
                io.Float.Input("pose_scale", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="Head rotation/translation: 0 freezes the head at the reference, "
                                       "1 unchanged, 2 doubles the movement."),
                io.Float.Input("expression_scale", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="Facial expression (mouth, eyes, brows) around the reference: 0 "
                                       "removes the change, 1 unchanged, >1 exaggerates."),
                io.Combo.Input("reference", options=["first", "mean"], default="first",
                               tooltip="What scaling is relative to: the first frame or the average "
                                       "over the clip."),
            ],
            outputs=[t.Motion.Output("motion", tooltip="The edited motion.")],
        )

    @classmethod
    def execute(cls, motion, pose_scale: float, expression_scale: float, reference: str) -> io.NodeOutput:
        out = motion_edit.scale_pose(motion, pose_scale, center=reference)
        out = motion_edit.scale_expression(out, expression_scale, center=reference)
        return io.NodeOutput(out)


class KDTalkerStillHead(io.ComfyNode):
    """Keep the head still and only animate the face."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerStillHead",
            display_name="KDTalker Still Head",
            category=CATEGORY,
            description="Holds head rotation, position and scale constant; the expression still moves.",
            inputs=[
                t.Motion.Input("motion", tooltip="The motion to edit."),
                t.Portrait.Input("portrait", optional=True,
                                 tooltip="Optional: hold the head in the photo's own pose. Without it the "
                                         "pose of the first frame is held."),
            ],
            outputs=[t.Motion.Output("motion", tooltip="The motion with a still head.")],
        )

    @classmethod
    def execute(cls, motion, portrait=None) -> io.NodeOutput:
        kp_info = portrait.kp_info if portrait is not None else None
        return io.NodeOutput(motion_edit.still_head(motion, kp_info))


class KDTalkerBlendMotion(io.ComfyNode):
    """Mix two motions frame by frame."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerBlendMotion",
            display_name="KDTalker Blend Motion",
            category=CATEGORY,
            description="(1 - weight) * motion_a + weight * motion_b, frame by frame; the result has the "
                        "length of the shorter motion. Both need the same frame rate.",
            inputs=[
                t.Motion.Input("motion_a", tooltip="First motion (weight 0 gives this one)."),
                t.Motion.Input("motion_b", tooltip="Second motion (weight 1 gives this one)."),
                io.Float.Input("weight", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of motion_b in the mix."),
            ],
            outputs=[t.Motion.Output("motion", tooltip="The blended motion.")],
        )

    @classmethod
    def execute(cls, motion_a, motion_b, weight: float) -> io.NodeOutput:
        return io.NodeOutput(motion_edit.blend(motion_a, motion_b, weight))


class KDTalkerSaveMotion(io.ComfyNode):
    """Write a motion to ComfyUI's output folder (reuse it with Load Motion)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerSaveMotion",
            display_name="KDTalker Save Motion",
            category=CATEGORY,
            description="Saves the motion as a small safetensors file (*.motion.safetensors) in the output "
                        "folder. Copy it to the input folder or pick it directly in Load Motion.",
            inputs=[
                t.Motion.Input("motion", tooltip="The motion to save."),
                io.String.Input("filename_prefix", default="kdtalker/motion",
                                tooltip="File name prefix inside the output folder (subfolders allowed); "
                                        "a counter and .motion.safetensors are appended."),
            ],
            outputs=[t.Motion.Output("motion", tooltip="The same motion, passed through.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, motion, filename_prefix: str) -> io.NodeOutput:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        os.makedirs(folder, exist_ok=True)
        file = f"{name}_{counter:05}_{MOTION_SUFFIX}"
        motion_edit.save_motion(Path(folder) / file, motion)
        ui = {"text": [os.path.join(subfolder, file)]}
        return io.NodeOutput(motion, ui=ui)


def motion_files() -> list[str]:
    """Motion files in the input folder, then the output folder (annotated " [output]")."""
    out: list[str] = []
    for base, tag in ((folder_paths.get_input_directory(), ""), (folder_paths.get_output_directory(),
                                                                  " [output]")):
        if not os.path.isdir(base):
            continue
        found = []
        for dirpath, _dirs, files in os.walk(base):
            found += [os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/")
                      for f in files if f.endswith(MOTION_SUFFIX)]
        out += [f + tag for f in sorted(found)]
    return out


class KDTalkerLoadMotion(io.ComfyNode):
    """Read a motion saved with Save Motion."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerLoadMotion",
            display_name="KDTalker Load Motion",
            category=CATEGORY,
            description="Loads a *.motion.safetensors file from the input or output folder.",
            inputs=[
                io.Combo.Input("motion_file", options=motion_files(),
                               tooltip="A file written by Save Motion (input folder, or output folder "
                                       "marked [output]). Refresh the page to see new files."),
            ],
            outputs=[t.Motion.Output("motion", tooltip="The loaded motion (on the CPU).")],
        )

    @classmethod
    def fingerprint_inputs(cls, motion_file: str) -> str:
        path = folder_paths.get_annotated_filepath(motion_file)
        try:
            st = os.stat(path)
        except OSError:
            return motion_file
        return f"{path}:{st.st_mtime_ns}:{st.st_size}"

    @classmethod
    def execute(cls, motion_file: str) -> io.NodeOutput:
        try:
            path = folder_paths.get_annotated_filepath(motion_file)
        except ValueError as exc:
            raise errors.InputError(f"invalid motion file name {motion_file!r}: "
                                    "pick a file in the list") from exc
        return io.NodeOutput(motion_edit.load_motion(path))


class KDTalkerPlotMotion(io.ComfyNode):
    """Draw the motion as a chart (head angles, most active expression dimensions)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerPlotMotion",
            display_name="KDTalker Plot Motion",
            category=CATEGORY,
            description="Top: yaw/pitch/roll in degrees (red/green/blue). Bottom: the expression "
                        "dimensions that move most (e.g. mouth opening). Grid lines every second.",
            inputs=[
                t.Motion.Input("motion", tooltip="The motion to draw."),
                io.Int.Input("width", default=768, min=64, max=4096, step=8,
                             tooltip="Image width in pixels."),
                io.Int.Input("height", default=384, min=64, max=4096, step=8,
                             tooltip="Image height in pixels."),
            ],
            outputs=[io.Image.Output("image", tooltip="The chart as an IMAGE (preview it or save it).")],
        )

    @classmethod
    def execute(cls, motion, width: int, height: int) -> io.NodeOutput:
        chart = motion_edit.plot_motion(motion, width=width, height=height)
        return io.NodeOutput(t.as_image(chart[None]))

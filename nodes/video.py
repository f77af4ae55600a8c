"""Render Video: portrait + motion -> an mp4 in ComfyUI's output folder, streamed chunk by chunk.

Frames go from the renderer straight into the H.264 encoder (the CLI's writer,
:func:`kdtalker_core.video.write_mp4`), so memory does not grow with the clip length: minutes of
speech need no more RAM than a second. The file appears under its final name only when it is
complete; an error or Cancel leaves nothing in output/. The node returns ComfyUI's native VIDEO
(backed by the file: it previews in the UI and wires into Save Video / Get Video Components) and
the file's path. Blinks, eye / mouth openness, stitching and ``motion_scale`` act at render time
(optional inputs, off by default, as on Render).
"""

from __future__ import annotations

import os
from typing import Any

import folder_paths
from comfy_api.latest import InputImpl, io, ui

from ..kdtalker_core import pipeline
from ..kdtalker_core.video import write_mp4
from . import performance as perf
from . import types as t
from . import widgets as w
from .models import ModelHandle
from .progress import NodeProgress
from .render import motion_scale_input


class KDTalkerRenderVideo(io.ComfyNode):
    """Render every frame and encode it on the fly into an mp4 (H.264 + AAC) in output/."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerRenderVideo",
            display_name="KDTalker Render Video",
            category="KDTalker",
            search_aliases=["talking head video", "save talking portrait", "long audio"],
            description="Renders the frames and writes them straight into an mp4 with the speech, so any "
                        "length of audio fits in memory. Outputs a VIDEO (for Save Video, Get Video "
                        "Components, previews) and the file path.",
            inputs=[
                t.Portrait.Input("portrait", tooltip="From Prepare Portrait."),
                t.Motion.Input("motion", tooltip="From Sample Motion or a motion tool."),
                t.Models.Input("models", tooltip="From Load KDTalker Models."),
                w.chunk_size_input(),
                w.paste_back_input(),
                io.String.Input("filename_prefix", default="video/KDTalker",
                                tooltip="Where the mp4 goes, relative to ComfyUI's output folder; a counter "
                                        "is added (video/KDTalker_00001_.mp4)."),
                io.Int.Input("crf", default=18, min=0, max=51,
                             tooltip="H.264 quality: lower is better and larger (18 is visually lossless, "
                                     "23 is FFmpeg's default)."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Optional: the speech (the audio output of Encode Audio). It is cut "
                                       "or padded to the length of the frames; without it the video is "
                                       "silent."),
                *perf.render_performance_inputs(),
                motion_scale_input(),
            ],
            outputs=[
                io.Video.Output("video", tooltip="The mp4 as ComfyUI VIDEO (backed by the file)."),
                io.String.Output("path", tooltip="Full path of the mp4 file."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, portrait, motion, models: ModelHandle, chunk_size: int, paste_back: bool,
                filename_prefix: str, crf: int, audio: dict[str, Any] | None = None,
                motion_scale: bool = False, **performance: Any) -> io.NodeOutput:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        file = f"{filename}_{counter:05}_.mp4"
        path = os.path.join(folder, file)
        track = t.mono_track(audio, motion.num_frames / motion.fps) if audio is not None else None
        progress = NodeProgress()
        try:
            frames = pipeline.iter_render(models.acquire(), portrait, motion, chunk_size=chunk_size,
                                          paste_back=paste_back, motion_scale=bool(motion_scale),
                                          performance=perf.performance_options(**performance),
                                          callback=progress.stage("work"))
            waveform, sample_rate = track if track is not None else (None, 16000)
            write_mp4(path, frames, motion.fps, waveform, sample_rate, crf=crf)
        finally:
            models.release()
        preview = ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)])
        return io.NodeOutput(InputImpl.VideoFromFile(path), path, ui=preview)

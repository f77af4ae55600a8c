"""Compose Faces: several (portrait, motion) pairs over one photo -> one video (kdtalker_core.multiface)."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..kdtalker_core import multiface
from ..kdtalker_core.errors import InputError
from . import types as t
from . import widgets as w
from .models import ModelHandle
from .progress import NodeProgress

#: How many (portrait, motion) pairs the node takes.
MAX_FACES = 4


def _pair_inputs(k: int) -> list[Any]:
    optional = k > 1
    where = "first" if k == 1 else f"face number {k}"
    return [
        t.Portrait.Input(f"portrait_{k}", optional=optional,
                         tooltip=f"The {where} face: Prepare Portrait on the same photo with its face_index. "
                                 "Faces are pasted in this order (a later face covers an earlier one where "
                                 "they overlap)."),
        t.Motion.Input(f"motion_{k}", optional=optional,
                       tooltip=f"Motion of portrait_{k}: Sample Motion with its own speech (and its own seed). "
                               "Calm Silences at strength 1 keeps the face idle where its speech is silent."),
    ]


class KDTalkerComposeFaces(io.ComfyNode):
    """Render several faces of one photo and paste them all into one video."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        pairs = [inp for k in range(1, MAX_FACES + 1) for inp in _pair_inputs(k)]
        return io.Schema(
            node_id="KDTalkerComposeFaces",
            display_name="KDTalker Compose Faces",
            category="KDTalker",
            description="Several people in one photo: each face (portrait_k + motion_k, up to "
                        f"{MAX_FACES}) is rendered and pasted through its own feathered mask into one video. "
                        "Pixels outside every face are the photo's, unchanged.",
            inputs=[
                io.Image.Input("photo", tooltip="The photo the portraits were prepared from (first image of a "
                                                "batch); the faces are pasted into it."),
                t.Models.Input("models", tooltip="From Load KDTalker Models."),
                w.chunk_size_input(),
                *pairs,
                io.Audio.Input("audio", optional=True,
                               tooltip="Optional soundtrack (e.g. the speech, or a mix of the speakers), cut or "
                                       "padded to the frames; without it the audio output is silence."),
            ],
            outputs=[
                io.Image.Output("images", tooltip="The frames (T,H,W,3). Motions of different lengths: the "
                                                  "longest decides, shorter ones hold their last frame."),
                io.Mask.Output("mask", tooltip="Where any face was pasted (1 = rendered face), (1,H,W)."),
                io.Audio.Output("audio", tooltip="Audio exactly as long as the frames."),
                io.Float.Output("fps", tooltip="Frame rate of the frames (all motions must share it)."),
            ],
        )

    @classmethod
    def execute(cls, photo: torch.Tensor, models: ModelHandle, chunk_size: int, audio: dict[str, Any] | None = None,
                **pairs: Any) -> io.NodeOutput:
        takes_in = []
        for k in range(1, MAX_FACES + 1):
            portrait, motion = pairs.get(f"portrait_{k}"), pairs.get(f"motion_{k}")
            if (portrait is None) != (motion is None):
                raise InputError(f"Compose Faces: connect both portrait_{k} and motion_{k}, or neither.")
            if portrait is not None:
                takes_in.append((portrait, motion))
        if not takes_in:
            raise InputError("Compose Faces: connect at least portrait_1 and motion_1.")
        rates = {m.fps for _, m in takes_in}
        if len(rates) > 1:
            raise InputError(f"Compose Faces: the motions have different frame rates {sorted(rates)}; give them "
                             "one rate (Frame Rate node).")
        n = max(m.num_frames for _, m in takes_in)
        takes = [multiface.FaceTake(p, multiface.hold_to_length(m, n)) for p, m in takes_in]
        progress = NodeProgress()
        try:
            frames = [chunk.float().cpu() for chunk in multiface.iter_compose(
                models.acquire(), takes, chunk_size=chunk_size, photo=t.first_image(photo)[0],
                callback=progress.stage("work"))]
        finally:
            models.release()
        images = torch.cat(frames)
        fps = float(rates.pop())
        seconds = images.shape[0] / fps
        out_audio = t.audio_span(audio, 0.0, seconds) if audio is not None else t.silence(seconds)
        mask = multiface.composite_mask([p for p, _ in takes_in])
        return io.NodeOutput(t.as_image(images), t.as_mask(mask), out_audio, fps)

"""A sample driving clip made from the bundled portrait, so the pose-from-video example runs out of the box.

The clip is the sample photo filmed by a virtual camera that moves gently around the face: a turn
(a horizontal keystone with a sideways shift), a nod (a vertical keystone with an up/down shift),
a slight roll and a slow zoom. Every motion is one or two whole sine periods over the clip, so the
clip loops seamlessly (Mix Motion loops a driving motion shorter than the speech). The frames are
computed, not stored: the same call always gives the same frames (bilinear resampling on the CPU).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import publish_new, temp_beside
from .image_io import read_image

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_PORTRAIT = ASSETS / "sample_portrait.jpg"
#: File name of the sample driving clip in ComfyUI's input folder (the pose-from-video example loads it).
SAMPLE_DRIVING_NAME = "kdtalker_sample_driving.mp4"

#: Where the camera looks in the bundled 512x512 portrait (pixels x, y) and how wide its view is:
#: dlib finds the face at (175, 76)-(265, 166), so a 208 px view centred a little below the face
#: centre frames head and shoulders with the face about 90/208 of the frame width.
PORTRAIT_VIEW_CENTER = (220.0, 134.0)
PORTRAIT_VIEW_SIZE = 208.0

#: Amplitudes of the camera path: keystone (fraction of the half-width), shift (fraction of the
#: view), roll (degrees), zoom (fraction).
TURN_KEYSTONE, TURN_SHIFT = 0.10, 0.04
NOD_KEYSTONE, NOD_SHIFT = 0.06, 0.03
ROLL_DEGREES = 4.0
ZOOM = 0.05


def camera_path(num_frames: int) -> dict[str, np.ndarray]:
    """The virtual camera's parameters per frame, each ``(T,)`` float64, periodic over ``num_frames``.

    ``turn`` / ``nod``: horizontal / vertical keystone strength; ``shift_x`` / ``shift_y``: view
    offset as a fraction of the view size (positive: the view moves right / down, so the face
    moves left / up in the frame); ``roll``: degrees; ``zoom``: view size factor (> 1 shows more,
    the face gets smaller).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    phase = 2.0 * math.pi * np.arange(num_frames) / num_frames
    turn = np.sin(phase)
    nod = np.sin(2.0 * phase)
    return {
        "turn": TURN_KEYSTONE * turn,
        "shift_x": TURN_SHIFT * turn,
        "nod": NOD_KEYSTONE * nod,
        "shift_y": NOD_SHIFT * nod,
        "roll": ROLL_DEGREES * np.sin(phase + math.pi / 3.0),
        "zoom": 1.0 + ZOOM * np.sin(phase - math.pi / 4.0),
    }


def sample_driving_frames(
    photo: np.ndarray | None = None,
    *,
    num_frames: int = 75,
    size: int = 256,
    center: tuple[float, float] = PORTRAIT_VIEW_CENTER,
    view: float = PORTRAIT_VIEW_SIZE,
) -> torch.Tensor:
    """Frames ``(T, size, size, 3)`` float32 in [0, 1] of a camera moving around ``photo``.

    ``photo``: (H,W,3) uint8 RGB, default the bundled sample portrait; ``center`` (x, y pixels) and
    ``view`` (pixels) set what the camera sees at rest. Outside the photo the edge pixels are
    repeated. Default: 75 frames = 3 s at 25 fps.
    """
    if photo is None:
        photo = read_image(SAMPLE_PORTRAIT)
    image = torch.from_numpy(np.array(photo, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0  # (1,3,H,W)
    height, width = image.shape[2:]
    path = {k: torch.from_numpy(v).float() for k, v in camera_path(num_frames).items()}

    # output pixel centres in [-1, 1] (u right, v down), one grid shared by all frames
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    u, v = u[None], v[None]  # (1,S,S)
    col = lambda name: path[name][:, None, None]  # noqa: E731  (T,1,1)

    # keystone: one side of the view is magnified and the other shrunk, as in a perspective view
    depth = 1.0 + col("turn") * u + col("nod") * v
    x, y = u / depth, v / depth
    angle = torch.deg2rad(col("roll"))
    x, y = x * torch.cos(angle) - y * torch.sin(angle), x * torch.sin(angle) + y * torch.cos(angle)
    half = 0.5 * view * col("zoom")
    src_x = center[0] + half * x + view * col("shift_x")
    src_y = center[1] + half * y + view * col("shift_y")
    grid = torch.stack([src_x / width * 2.0 - 1.0, src_y / height * 2.0 - 1.0], dim=-1)  # (T,S,S,2)
    frames = F.grid_sample(image.expand(num_frames, -1, -1, -1), grid, mode="bilinear",
                           padding_mode="border", align_corners=False)
    return frames.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def write_sample_driving_video(path: str | Path, *, num_frames: int = 75, size: int = 256,
                               fps: float = 25.0) -> bool:
    """Encode :func:`sample_driving_frames` as an H.264 mp4 at ``path`` unless a file is already there.

    The clip is written to a temporary file beside ``path`` and put in place only when complete and
    only if ``path`` is still free (a user's file of that name is never replaced; a failure leaves
    nothing behind). Returns True when the file was written. Takes well under a second on a CPU.
    """
    from .video import write_mp4

    path = Path(path)
    if os.path.lexists(path):
        return False
    frames = sample_driving_frames(num_frames=num_frames, size=size)
    tmp = temp_beside(path, ".part.mp4")
    try:
        write_mp4(tmp, [frames], fps, crf=18)
        return publish_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_new(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` only if ``target`` does not exist; all or nothing (a temporary
    file beside ``target``, placed with :func:`.atomic.publish_new`). Returns True when copied."""
    tmp = temp_beside(target)
    try:
        tmp.write_bytes(Path(source).read_bytes())
        return publish_new(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


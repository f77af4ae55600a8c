"""Video-driven motion: LivePortrait's relative and absolute driving, a driving video -> Motion, and
mixing a video's head pose with an audio motion's expression.

Conventions (those of :mod:`kdtalker_core.keypoints`): angles in degrees; keypoints are row vectors
rotated as ``x @ R`` with ``R = get_rotation_matrix(pitch, yaw, roll)`` (the transpose of the
column-vector ``Rz(roll) Ry(yaw) Rx(pitch)``). A *kp_info* is a dict of float tensors for B images:
``pitch/yaw/roll (B,1)`` degrees (or ``(B,66)`` bin logits), ``t (B,3)``, ``exp (B,63)``,
``scale (B,1)``, ``kp (B,63)`` (the driving frames' ``kp`` is not used).

Relative mode (LivePortrait's ``flag_relative_motion``; frame 0 of the video is the reference),
frame i applied to the source s::

    R_new     = R_d_i @ R_d_0^T @ R_s            (row-vector matrices, this order)
    delta_new = exp_s + (exp_d_i - exp_d_0)
    scale_new = scale_s * scale_d_i / scale_d_0
    t_new     = t_s + (t_d_i - t_d_0),  t_new_z = 0
    x_d_i     = scale_new * (kp_s @ R_new + delta_new) + t_new

Absolute mode: ``R_d_i``, ``exp_d_i``, the SOURCE scale and ``t_d_i`` (z = 0).

A :class:`~kdtalker_core.motion.Motion` stores angles, not matrices: :func:`motion_from_transform`
turns the composed ``R_new`` back into pitch/yaw/roll of the same Euler convention
(:func:`.keypoints.rotation_to_degrees`, exact up to float rounding for |yaw| < 90 degrees), so the renderer's
default (absolute) driving reproduces ``R_new``, ``delta_new`` and ``t_new``. The Motion's scale
column holds ``scale_new``; note that the default absolute renderer uses the portrait's own scale
(as the official KDTalker does for audio motion), so a video's zoom is only rendered by a renderer
that reads the motion's scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .errors import InputError
from .keypoints import get_kp_info, get_rotation_matrix, headpose_pred_to_degree, rotation_to_degrees
from .motion import (
    EXP_COLS,
    MOTION_DIM,
    NUM_KP,
    PITCH_COL,
    ROLL_COL,
    SCALE_COL,
    T_COLS,
    YAW_COL,
    DrivingTransform,
    Motion,
)

if TYPE_CHECKING:
    from .tracking import FaceTrack

KpInfo = Mapping[str, torch.Tensor]
FitMode = Literal["loop", "pingpong", "cut"]
DriveMode = Literal["relative", "absolute"]


# --------------------------------------------------------------------------- rotations


def pose_rotation(kp_info: KpInfo) -> torch.Tensor:
    """``R (B,3,3)`` (row-vector convention) of a kp_info's pitch/yaw/roll (degrees or bin logits)."""
    return get_rotation_matrix(*(headpose_pred_to_degree(kp_info[k]) for k in ("pitch", "yaw", "roll")))


# --------------------------------------------------------------------------- driving transforms


def _num_frames(kp_info: KpInfo) -> int:
    return int(kp_info["exp"].shape[0])


def relative_transform(source: KpInfo, driving: KpInfo, reference: int = 0) -> DrivingTransform:
    """LivePortrait's relative driving of the source by T driving frames (see the module docstring).

    ``source``: kp_info of the portrait (B = 1); ``driving``: kp_info of the T frames (B = T);
    ``reference``: the driving frame that maps onto the source pose (0 as LivePortrait). Returns a
    :class:`~kdtalker_core.motion.DrivingTransform`: ``scale (T,1,1)``, ``rotation (T,3,3)``,
    ``delta (T,21,3)``, ``translation (T,3)`` with z = 0, on the driving tensors' device/dtype.
    """
    frames = _num_frames(driving)
    if not -frames <= reference < frames:
        raise InputError(f"reference frame {reference} is outside the {frames} driving frames")
    ref = slice(reference, reference + 1) if reference >= 0 else slice(frames + reference, frames + reference + 1)
    rot_d = pose_rotation(driving)
    rot_s = pose_rotation(source).to(rot_d)
    rotation = rot_d @ rot_d[ref].transpose(1, 2) @ rot_s
    exp_d = driving["exp"].reshape(frames, NUM_KP, 3)
    delta = source["exp"].reshape(1, NUM_KP, 3).to(exp_d) + (exp_d - exp_d[ref])
    scale_d = driving["scale"].reshape(frames, 1, 1)
    scale = source["scale"].reshape(1, 1, 1).to(scale_d) * (scale_d / scale_d[ref])
    t_d = driving["t"].reshape(frames, 3)
    translation = source["t"].reshape(1, 3).to(t_d) + (t_d - t_d[ref])
    return DrivingTransform(scale=scale, rotation=rotation, delta=delta, translation=_zero_tz(translation))


def absolute_transform(source: KpInfo, driving: KpInfo) -> DrivingTransform:
    """Absolute driving: each frame's own rotation, expression and translation (z = 0), the
    SOURCE scale (LivePortrait's and KDTalker's default). Shapes as :func:`relative_transform`."""
    frames = _num_frames(driving)
    rotation = pose_rotation(driving)
    delta = driving["exp"].reshape(frames, NUM_KP, 3)
    scale = source["scale"].reshape(1, 1, 1).to(delta).expand(frames, 1, 1)
    translation = _zero_tz(driving["t"].reshape(frames, 3))
    return DrivingTransform(scale=scale, rotation=rotation, delta=delta, translation=translation)


def _zero_tz(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)


def apply_transform(kp: torch.Tensor, transform: DrivingTransform) -> torch.Tensor:
    """Driving keypoints ``x_d (T,21,3) = scale * (kp @ R + delta) + t`` of canonical ``kp``
    ``(1,63)`` or ``(1,21,3)`` (flat index ``3*k + j``: keypoint k, coordinate j)."""
    x_c = kp.reshape(1, NUM_KP, 3).to(transform.rotation)
    return transform.scale * (x_c @ transform.rotation + transform.delta) + transform.translation.unsqueeze(1)


def drive(source: KpInfo, driving: KpInfo, mode: DriveMode = "relative") -> DrivingTransform:
    """:func:`relative_transform` or :func:`absolute_transform` by name."""
    if mode == "relative":
        return relative_transform(source, driving)
    if mode == "absolute":
        return absolute_transform(source, driving)
    raise InputError(f"pose mode must be 'relative' or 'absolute', got {mode!r}")


# --------------------------------------------------------------------------- transform <-> Motion


def motion_from_transform(transform: DrivingTransform, fps: float = 25.0) -> Motion:
    """A :class:`Motion` (T,70) holding a driving transform: angles from the rotation
    (:func:`.keypoints.rotation_to_degrees`), ``t`` (z = 0), ``exp`` = delta, scale column = the transform's
    scale. Rendering it with the default absolute driving reproduces rotation, delta and t."""
    rot = transform.rotation
    frames = rot.shape[0]
    pitch, yaw, roll = rotation_to_degrees(rot)
    data = rot.new_zeros(frames, MOTION_DIM)
    data[:, SCALE_COL] = transform.scale.reshape(-1).expand(frames) if transform.scale.numel() == 1 \
        else transform.scale.reshape(frames)
    data[:, YAW_COL], data[:, PITCH_COL], data[:, ROLL_COL] = yaw, pitch, roll
    data[:, T_COLS] = transform.translation.reshape(frames, 3)
    data[:, EXP_COLS] = transform.delta.reshape(frames, 3 * NUM_KP)
    return Motion(data, fps)


def motion_rotation(motion: Motion) -> torch.Tensor:
    """``R (T,3,3)`` of a motion's pitch/yaw/roll (what the renderer applies)."""
    return get_rotation_matrix(motion.pitch, motion.yaw, motion.roll)


def driving_motion(source: KpInfo, driving: KpInfo, *, mode: DriveMode = "relative",
                   fps: float = 25.0) -> Motion:
    """Driving-frame kp_info -> a :class:`Motion` applied to the portrait ``source`` (see :func:`drive`)."""
    return motion_from_transform(drive(source, driving, mode), fps)


# --------------------------------------------------------------------------- video -> kp_info


def video_kp_info(
    motion_extractor: torch.nn.Module,
    crops: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 16,
    callback: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run M over face crops ``(T,256,256,3)`` (uint8, or float in [0,1]) in batches.

    Returns one kp_info with B = T (float32 on M's device): ``pitch/yaw/roll (T,1)`` degrees,
    ``t (T,3)``, ``exp (T,63)``, ``scale (T,1)``, ``kp (T,63)``. ``callback(done, total)``
    after each batch.
    """
    crops_t = torch.as_tensor(crops)
    if crops_t.ndim != 4 or crops_t.shape[-1] != 3 or crops_t.shape[0] < 1:
        raise InputError(f"face crops must be (T,H,W,3) with T >= 1, got {tuple(crops_t.shape)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    scale = 255.0 if crops_t.dtype == torch.uint8 else 1.0
    parts: list[dict[str, torch.Tensor]] = []
    total = crops_t.shape[0]
    for start in range(0, total, batch_size):
        chunk = crops_t[start:start + batch_size].permute(0, 3, 1, 2).float().div(scale)
        parts.append(get_kp_info(motion_extractor, chunk))
        if callback is not None:
            callback(min(start + batch_size, total), total)
    return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}


@dataclass
class DrivingVideo:
    """What :func:`extract_video_motion` found in a driving video.

    ``motion``: the Motion applied to the portrait (T frames at ``fps``); ``kp_info``: M's per-frame
    kp_info (B = T); ``crops (T,256,256,3)`` uint8 face crops M saw; ``track``: the face track
    (:class:`~kdtalker_core.tracking.FaceTrack`).
    """

    motion: Motion
    kp_info: dict[str, torch.Tensor]
    crops: np.ndarray
    track: FaceTrack


def extract_video_motion(
    motion_extractor: torch.nn.Module,
    frames: torch.Tensor | np.ndarray,
    source_kp_info: KpInfo,
    *,
    fps: float = 25.0,
    mode: DriveMode = "relative",
    crop_mode: str = "official",
    smoothing: float = 1.5,
    face_index: int = 0,
    batch_size: int = 16,
    callback: Callable[[int, int], None] | None = None,
) -> DrivingVideo:
    """Driving video ``frames (T,H,W,3)`` (uint8 or float [0,1]) -> :class:`DrivingVideo`.

    The face is tracked over the frames and cropped as a portrait is (``crop_mode``; the crop
    geometry is smoothed over time, ``smoothing`` frames of Gaussian standard deviation, see
    :func:`kdtalker_core.tracking.track_face`), M runs on every crop, and the per-frame keypoint
    info drives ``source_kp_info`` (the portrait's) in ``mode`` ("relative": LivePortrait's
    relative motion with the video's first frame as reference).
    """
    from .tracking import crop_track, track_face

    track = track_face(frames, face_index=face_index, smoothing=smoothing)
    crops = crop_track(frames, track, mode=crop_mode)
    info = video_kp_info(motion_extractor, crops, batch_size=batch_size, callback=callback)
    motion = driving_motion(source_kp_info, info, mode=mode, fps=fps)
    return DrivingVideo(motion=motion, kp_info=info, crops=crops, track=track)


def read_video(path: str | Path, *, max_seconds: float | None = None,
               max_side: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file -> ``(frames (T,H,W,3) uint8 RGB, fps)`` with PyAV.

    ``max_seconds``: stop after ``ceil(max_seconds * fps) + 1`` frames (e.g. the speech's length,
    so a long video is not decoded whole); ``max_side``: frames whose longer side exceeds it are downscaled
    (area filter) to keep memory bounded (a 256 px face crop needs no more than ~1024 px frames).
    Raises :class:`~kdtalker_core.errors.InputError` for an unreadable file or one without video.
    """
    import av

    path = Path(path)
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream: give a video file for the head pose")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25.0)
            max_frames = None if max_seconds is None else max(1, math.ceil(max_seconds * fps) + 1)
            for frame in container.decode(stream):
                if max_side is not None and max(frame.width, frame.height) > max_side:
                    k = max_side / max(frame.width, frame.height)
                    frame = frame.reformat(width=max(2, round(frame.width * k)),
                                           height=max(2, round(frame.height * k)), interpolation="AREA")
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"cannot read the video {path}: {exc}") from exc
    if not frames:
        raise InputError(f"{path} holds no video frames")
    return np.stack(frames), fps


def extract_video_motion_file(
    motion_extractor: torch.nn.Module,
    path: str | Path,
    source_kp_info: KpInfo,
    *,
    max_seconds: float | None = None,
    max_side: int | None = 1024,
    **kwargs: Any,
) -> DrivingVideo:
    """:func:`extract_video_motion` of a video file at its own frame rate (``kwargs`` as there, but
    ``fps`` comes from the file); ``max_seconds``/``max_side`` as in :func:`read_video`."""
    frames, fps = read_video(path, max_seconds=max_seconds, max_side=max_side)
    return extract_video_motion(motion_extractor, frames, source_kp_info, fps=fps, **kwargs)


# --------------------------------------------------------------------------- lengths and mixing


def frame_indices(num_source: int, num_frames: int, mode: FitMode = "loop") -> torch.Tensor:
    """Indices ``(num_frames,)`` int64 into a clip of ``num_source`` frames.

    A longer clip is cut; a shorter one is repeated: ``"loop"`` 0,1,..,n-1,0,1,..; ``"pingpong"``
    0,1,..,n-1,n-2,..,1,0,1,.. (no frame doubled at the turns); ``"cut"`` never repeats (the result
    is only ``min(num_source, num_frames)`` long).
    """
    if num_source < 1 or num_frames < 0:
        raise InputError(f"cannot fit {num_source} frames to {num_frames}")
    i = torch.arange(num_frames)
    if mode == "cut":
        return i[:num_source]
    if mode == "loop":
        return i % num_source
    if mode == "pingpong":
        if num_source == 1:
            return torch.zeros_like(i)
        period = 2 * (num_source - 1)
        k = i % period
        return torch.where(k < num_source, k, period - k)
    raise InputError(f"length mode must be 'loop', 'pingpong' or 'cut', got {mode!r}")


def fit_length(motion: Motion, num_frames: int, mode: FitMode = "loop") -> Motion:
    """``motion`` brought to ``num_frames`` frames by :func:`frame_indices` (same fps)."""
    idx = frame_indices(motion.num_frames, num_frames, mode).to(motion.device)
    if idx.numel() == 0:
        raise InputError("a motion needs at least one frame")
    return motion.with_data(motion.data.index_select(0, idx))


#: Column groups a mix weighs separately.
_POSE_FIELDS = {"rotation": slice(YAW_COL, ROLL_COL + 1), "translation": T_COLS, "scale": slice(0, 1)}


def mix_motion(
    pose: Motion,
    expression: Motion,
    *,
    rotation: float = 1.0,
    translation: float = 1.0,
    scale: float = 1.0,
    exp: float = 0.0,
    fit: FitMode = "loop",
) -> Motion:
    """Per-field blend of two motions: weight w takes ``(1 - w) * expression + w * pose``.

    The defaults give head pose (rotation, translation, scale) from ``pose`` (e.g. a driving video)
    and the expression (lips, eyes) from ``expression`` (e.g. the audio motion). The result has
    ``expression``'s length and fps; ``pose`` is first resampled to that fps when its own differs
    (:func:`kdtalker_core.retime.resample_motion`, e.g. a 30 fps video against 25 fps speech
    motion), then looped / ping-ponged / cut to it (``fit``; with "cut" a shorter pose motion
    shortens the result). Rotations blend as angles (fine for head poses, far from +-180 degrees).
    Weights must lie in [0, 1].
    """
    weights = {"rotation": rotation, "translation": translation, "scale": scale, "exp": exp}
    for name, w in weights.items():
        if not (math.isfinite(float(w)) and 0.0 <= float(w) <= 1.0):
            raise InputError(f"mix weight '{name}' must be within [0, 1], got {w}")
    if abs(pose.fps - expression.fps) > 1e-6 * max(pose.fps, expression.fps):
        from .retime import resample_motion

        pose = resample_motion(pose, expression.fps)
    fitted = fit_length(pose, expression.num_frames, fit)
    n = fitted.num_frames
    base = expression.data[:n]
    other = fitted.data.to(base)
    out = base.clone()
    for name, cols in {**_POSE_FIELDS, "exp": EXP_COLS}.items():
        out[:, cols] = torch.lerp(base[:, cols], other[:, cols], float(weights[name]))
    return expression.with_data(out)


def crops_as_image(crops: np.ndarray) -> torch.Tensor:
    """(T,H,W,3) uint8 crops -> float32 (T,H,W,3) in [0,1] on the CPU (ComfyUI IMAGE layout)."""
    return torch.from_numpy(np.ascontiguousarray(crops)).float().div(255.0)

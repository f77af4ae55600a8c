"""Resample a motion to another frame rate (24, 30, 50, 60 ... any positive fps).

KDTalker generates motion at 25 fps (the audio encoder's rate). To render at another rate the
motion is resampled in time:

* the head rotation is interpolated as a rotation: the (pitch, yaw, roll) of neighbouring frames
  become unit quaternions of :func:`~kdtalker_core.keypoints.get_rotation_matrix`'s matrix and are
  slerped along the shorter arc, then turned back into Euler angles in the same convention. The
  Euler solution is chosen next to the (unwrapped) linearly interpolated angles, so a yaw going from
  170 to -170 degrees passes through 180, never through 0, and the angles stay continuous;
* scale, translation and the 63 expression numbers are interpolated linearly.

Timing: frame ``i`` of a motion at ``fps`` is shown at ``i / fps`` seconds. The output has
``round(duration * new_fps)`` frames (``duration = T / fps``), so a clip keeps its length to within
half an output frame and the audio stays aligned: 2 s at 25 fps (50 frames) -> 60 frames at 30 fps.
Output frames that fall exactly on an input frame copy it bit for bit; frames past the last input
frame hold it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InputError
from .keypoints import get_rotation_matrix, rotation_to_degrees
from .motion import PITCH_COL, ROLL_COL, YAW_COL, Motion

__all__ = ["euler_from_rotation", "quaternion_from_rotation", "resample_motion", "resampled_length",
           "rotation_from_quaternion", "slerp"]


def resampled_length(num_frames: int, fps: float, new_fps: float) -> int:
    """``round(num_frames / fps * new_fps)`` (halves round up), at least 1."""
    if not (new_fps > 0 and math.isfinite(new_fps)):
        raise InputError(f"the frame rate must be a positive number, got {new_fps}")
    return max(1, int(math.floor(num_frames * float(new_fps) / float(fps) + 0.5 + 1e-9)))


# --------------------------------------------------------------------------- rotations


def quaternion_from_rotation(rot: torch.Tensor) -> torch.Tensor:
    """Row-vector rotation matrices ``(N,3,3)`` (``x @ R``) -> unit quaternions ``(N,4)`` as (w, x, y, z).

    The quaternion describes the column-vector matrix ``M = R^T`` (Shepperd's method: the largest of
    w, x, y, z is computed from the trace, the others from the off-diagonal terms, for stability).
    """
    m = rot.transpose(1, 2)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    cand = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], 1)
    best = cand.argmax(dim=1)
    q = torch.empty(rot.shape[0], 4, dtype=rot.dtype, device=rot.device)
    for k in range(4):
        sel = best == k
        if not bool(sel.any()):
            continue
        s = torch.sqrt(cand[sel, k].clamp_min(1e-30)) * 2  # = 4 * |component k|
        a = m[sel]
        d21, d02, d10 = a[:, 2, 1] - a[:, 1, 2], a[:, 0, 2] - a[:, 2, 0], a[:, 1, 0] - a[:, 0, 1]
        s21, s02, s10 = a[:, 2, 1] + a[:, 1, 2], a[:, 0, 2] + a[:, 2, 0], a[:, 1, 0] + a[:, 0, 1]
        if k == 0:
            q[sel] = torch.stack([s / 4, d21 / s, d02 / s, d10 / s], 1)
        elif k == 1:
            q[sel] = torch.stack([d21 / s, s / 4, s10 / s, s02 / s], 1)
        elif k == 2:
            q[sel] = torch.stack([d02 / s, s10 / s, s / 4, s21 / s], 1)
        else:
            q[sel] = torch.stack([d10 / s, s02 / s, s21 / s, s / 4], 1)
    return q / q.norm(dim=1, keepdim=True)


def rotation_from_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(N,4)`` (w, x, y, z) -> row-vector rotation matrices ``(N,3,3)``."""
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    m = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], 1).reshape(-1, 3, 3)
    return m.transpose(1, 2)


def slerp(q0: torch.Tensor, q1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit quaternions ``(N,4)`` at fractions ``u (N,)`` along the shorter arc."""
    dot = (q0 * q1).sum(1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)  # q and -q are the same rotation: take the short way round
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin_t = torch.sin(theta)
    u = u.reshape(-1, 1).to(q0)
    near = sin_t < 1e-6
    safe = torch.where(near, torch.ones_like(sin_t), sin_t)
    w0 = torch.where(near, 1 - u, torch.sin((1 - u) * theta) / safe)
    w1 = torch.where(near, u, torch.sin(u * theta) / safe)
    out = w0 * q0 + w1 * q1
    return out / out.norm(dim=1, keepdim=True)


def _wrap_near(angle: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``angle + 360 k`` closest to ``ref`` (degrees)."""
    return ref + torch.remainder(angle - ref + 180.0, 360.0) - 180.0


def euler_from_rotation(rot: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Row-vector rotation matrices ``(N,3,3)`` -> ``(N,3)`` degrees (pitch, yaw, roll) such that
    ``get_rotation_matrix(pitch, yaw, roll)`` gives the matrix back.

    Every rotation has two Euler solutions (yaw and 180 - yaw); each is shifted by multiples of 360
    degrees next to ``reference (N,3)`` (pitch, yaw, roll) and the closer one is returned. Without a
    reference the solution with yaw in [-90, 90] and pitch, roll in (-180, 180] is returned.
    """
    pitch, yaw, roll = rotation_to_degrees(rot)
    first = torch.stack([pitch, yaw, roll], 1)
    if reference is None:
        return first
    second = torch.stack([pitch + 180.0, 180.0 - yaw, roll + 180.0], 1)
    ref = reference.to(first)
    first = _wrap_near(first, ref)
    second = _wrap_near(second, ref)
    closer = ((second - ref) ** 2).sum(1, keepdim=True) < ((first - ref) ** 2).sum(1, keepdim=True)
    return torch.where(closer, second, first)


# --------------------------------------------------------------------------- motion


def resample_motion(motion: Motion, fps: float) -> Motion:
    """``motion`` resampled to ``fps`` -> a new :class:`Motion` with ``round(duration * fps)`` frames.

    Rotations are slerped, everything else is interpolated linearly (see the module docstring). The
    same frame rate returns a copy of the data, bit for bit. Computed in float64, returned in the
    input's dtype on its device.
    """
    fps = float(fps)
    n_out = resampled_length(motion.num_frames, motion.fps, fps)
    if abs(fps - motion.fps) <= 1e-9 * motion.fps:
        return Motion(motion.data.clone(), fps)
    src = motion.data.detach().to("cpu", torch.float64)
    frames = src.shape[0]
    # position of each output frame on the input's frame axis (exact integer arithmetic where possible)
    pos = torch.arange(n_out, dtype=torch.float64) * (motion.fps / fps)
    pos = pos.clamp(max=frames - 1)
    i0 = pos.floor().long().clamp(max=frames - 1)
    i1 = (i0 + 1).clamp(max=frames - 1)
    u = pos - i0.to(torch.float64)
    out = torch.lerp(src[i0], src[i1], u[:, None])

    angle_cols = [PITCH_COL, YAW_COL, ROLL_COL]
    angles = src[:, angle_cols]
    unwrapped = torch.from_numpy(np.unwrap(angles.numpy(), period=360.0, axis=0))
    reference = torch.lerp(unwrapped[i0], unwrapped[i1], u[:, None])
    quats = quaternion_from_rotation(get_rotation_matrix(angles[:, 0], angles[:, 1], angles[:, 2]))
    rot = rotation_from_quaternion(slerp(quats[i0], quats[i1], u))
    # continue the input's own angle branch: the reference sits next to the original angles
    reference = reference + (angles[i0] - unwrapped[i0])
    out[:, angle_cols] = euler_from_rotation(rot, reference)

    exact = u == 0
    out[exact] = src[i0[exact]]
    return Motion(out.to(device=motion.data.device, dtype=motion.data.dtype), fps)

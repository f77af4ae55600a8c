"""Head-pose and implicit-keypoint math (LivePortrait camera conventions).

Conventions: angles are in **degrees**; keypoints are row vectors rotated as ``x @ R`` where ``R`` is
what :func:`get_rotation_matrix` returns. Everything is batched, stays on the inputs' device and
dtype, and never synchronises with the host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

#: Number of head-pose bins the motion extractor predicts per angle (3 degrees each).
NUM_POSE_BINS = 66
#: Degrees per bin and the offset that centres bin expectations (LivePortrait's calibration).
_DEG_PER_BIN = 3.0
_DEG_OFFSET = 97.5


def _expected_bin(pred: torch.Tensor) -> torch.Tensor:
    """``pred (B,66)`` logits -> softmax expectation of the bin index, ``(B,)``."""
    idx = torch.arange(pred.shape[1], device=pred.device, dtype=pred.dtype)
    return (F.softmax(pred, dim=1) * idx).sum(dim=1)


def headpose_pred_to_degree(pred: torch.Tensor) -> torch.Tensor:
    """Head-pose bin logits -> degrees.

    ``pred (B,66)`` -> ``(B,)`` degrees: ``E[bin index] * 3 - 97.5`` under a softmax over the bins.
    Any other shape (e.g. ``(B,1)`` degrees) is returned unchanged, so applying it to values that are
    already degrees is a no-op.
    """
    if pred.ndim > 1 and pred.shape[1] == NUM_POSE_BINS:
        return _expected_bin(pred) * _DEG_PER_BIN - _DEG_OFFSET
    return pred


def get_rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Euler angles in degrees, each ``(N,)`` or ``(N,1)`` -> ``R (N,3,3)`` for row vectors.

    Builds ``M = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (column-vector convention) and returns ``M^T``, so
    a keypoint row vector ``x (…,3)`` is rotated by ``x @ R``.
    """
    angles = torch.stack([a.reshape(-1) for a in (pitch, yaw, roll)], dim=0) / 180 * math.pi  # (3,N)
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[0]), torch.zeros_like(c[0])
    (cx, cy, cz), (sx, sy, sz) = c, s
    rot_x = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], dim=-1)
    rot_y = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=-1)
    rot_z = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], dim=-1)
    n = angles.shape[1]
    rot = rot_z.view(n, 3, 3) @ rot_y.view(n, 3, 3) @ rot_x.view(n, 3, 3)
    return rot.transpose(1, 2)


def transform_keypoint(kp_info: dict[str, torch.Tensor]) -> torch.Tensor:
    """Posed keypoints ``x = scale * (kp @ R + exp) + [tx, ty, 0]`` -> ``(B,N,3)`` (N = 21).

    ``kp_info``: ``kp``/``exp`` ``(B,3N)`` or ``(B,N,3)``; ``pitch/yaw/roll`` either ``(B,1)`` / ``(B,)``
    degrees or ``(B,66)`` logits (converted with :func:`headpose_pred_to_degree`); ``t (B,3)`` (t_z is
    ignored); ``scale (B,1)``. The inputs are not modified.
    """
    kp, exp = kp_info["kp"], kp_info["exp"]
    bsz = kp.shape[0]
    rot = get_rotation_matrix(*(headpose_pred_to_degree(kp_info[k]) for k in ("pitch", "yaw", "roll")))
    x = kp.reshape(bsz, -1, 3) @ rot + exp.reshape(bsz, -1, 3)
    x = x * kp_info["scale"].reshape(bsz, 1, 1)
    t = kp_info["t"].reshape(bsz, 1, -1)
    return torch.cat([x[..., :2] + t[..., :2], x[..., 2:]], dim=-1)


def get_kp_info(motion_extractor: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the motion extractor and refine its outputs into a kp_info dict (no gradients).

    ``image (B,3,H,W)`` RGB in [0,1], moved to the extractor's device and dtype. Returns float32
    tensors on that device: ``pitch/yaw/roll (B,1)`` degrees, ``kp (B,63)``, ``exp (B,63)``,
    ``t (B,3)``, ``scale (B,1)``. (A reduced-precision extractor's outputs are cast to float32 before
    the softmax, as LivePortrait does for half precision.)
    """
    param = next(motion_extractor.parameters())
    with torch.no_grad():
        raw = motion_extractor(image.to(device=param.device, dtype=param.dtype))
    raw = {k: v.float() for k, v in raw.items()}
    bsz = raw["kp"].shape[0]
    info = {k: headpose_pred_to_degree(raw[k]).reshape(bsz, 1) for k in ("pitch", "yaw", "roll")}
    info.update(
        t=raw["t"],
        exp=raw["exp"].reshape(bsz, -1),
        scale=raw["scale"],
        kp=raw["kp"].reshape(bsz, -1),
    )
    return info


def rotation_to_degrees(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`get_rotation_matrix`: ``R (N,3,3)`` -> pitch, yaw,
    roll, each ``(N,)`` degrees, in ``R``'s dtype and device.

    ``R = M^T`` with ``M = Rz(roll) Ry(yaw) Rx(pitch)``, so ``M[2,0] = -sin(yaw)``,
    ``M[2,1:] = cos(yaw) (sin, cos)(pitch)`` and ``M[:2,0] = cos(yaw) (cos, sin)(roll)``. Yaw is
    taken in [-90, 90] degrees (the branch a head pose lives on); computed in float64.
    """
    if rotation.ndim != 3 or rotation.shape[1:] != (3, 3):
        raise InputError(f"rotation must be (N,3,3), got {tuple(rotation.shape)}")
    m = rotation.double().transpose(1, 2)
    cos_yaw = torch.hypot(m[:, 2, 1], m[:, 2, 2])
    yaw = torch.atan2(-m[:, 2, 0], cos_yaw)
    pitch = torch.atan2(m[:, 2, 1], m[:, 2, 2])
    roll = torch.atan2(m[:, 1, 0], m[:, 0, 0])
    # gimbal lock (|yaw| = 90): pitch and roll are not separable; put everything into roll
    lock = cos_yaw < 1e-9
    if bool(lock.any()):
        pitch = torch.where(lock, torch.zeros_like(pitch), pitch)
        roll = torch.where(lock, torch.atan2(-m[:, 0, 1], m[:, 1, 1]), roll)
    to_deg = 180.0 / math.pi
    return tuple((a * to_deg).to(rotation.dtype) for a in (pitch, yaw, roll))  # type: ignore[return-value]

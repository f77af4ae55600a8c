"""Golden check ``lp_relative_motion``: LivePortrait's video-driven relative (and absolute) motion,
through :mod:`kdtalker_core.driving` (the code the pose-from-video feature runs).

M's raw outputs are the fixture inputs; :func:`kdtalker_core.keypoints.get_kp_info` refines them
exactly as it refines M's outputs in the product (M is stood in for by a module returning the
stored outputs, as in the fixture generator). Beyond the fixture outputs, ``x_d[motion]`` renders
the relative drive through the Motion route of the feature (rotation -> pitch/yaw/roll -> rotation,
the Motion's scale column), compared with ``x_d`` at its tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..driving import absolute_transform, apply_transform, motion_from_transform, motion_rotation, relative_transform
from ..golden_checks._common import CheckResult, compare, compare_outputs, load_fixture, tolerance
from ..keypoints import get_kp_info, get_rotation_matrix, transform_keypoint

_ANGLES = ("pitch", "yaw", "roll")
_FIELDS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


class _StoredOutputs(nn.Module):
    """Stands in for M: returns the stored raw outputs whatever the image."""

    def __init__(self, raw: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.raw = raw
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.raw


def _kp_info(x: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The fixture's raw M outputs under ``prefix`` -> a kp_info via :func:`get_kp_info`.

    Angles are ``<prefix>_<angle>_logits`` (66 bins; ``<prefix>_<angle>`` degrees are accepted too).
    """
    raw: dict[str, torch.Tensor] = {}
    for f in _FIELDS:
        for key in (f"{prefix}_{f}_logits", f"{prefix}_{f}"):
            if key in x:
                raw[f] = x[key]
                break
    frames = raw["exp"].shape[0]
    if "kp" not in raw:  # the driving frames' canonical keypoints are not used (not a fixture input)
        raw["kp"] = torch.zeros_like(raw["exp"])
    return get_kp_info(_StoredOutputs(raw), torch.zeros(frames, 3, 1, 1))


def _actual_outputs(x: dict[str, torch.Tensor], reference: int = 0) -> dict[str, torch.Tensor]:
    """Compute every output the fixture format defines from its inputs."""
    src = _kp_info(x, "source")
    drv = _kp_info(x, "driving")
    rel = relative_transform(src, drv, reference=reference)
    frames = rel.rotation.shape[0]
    out = {f"source_{a}": src[a].reshape(-1) for a in _ANGLES}
    out.update({f"driving_{a}": drv[a].reshape(-1) for a in _ANGLES})
    out.update(
        R_s=get_rotation_matrix(src["pitch"], src["yaw"], src["roll"]),
        R_d=get_rotation_matrix(drv["pitch"], drv["yaw"], drv["roll"]),
        x_s=transform_keypoint(src),
        R_new=rel.rotation,
        delta_new=rel.delta,
        scale_new=rel.scale.reshape(frames, 1),
        t_new=rel.translation,
        x_d=apply_transform(src["kp"], rel),
        x_d_absolute=apply_transform(src["kp"], absolute_transform(src, drv)),
    )
    return out


def _motion_route(x: dict[str, torch.Tensor], reference: int = 0) -> torch.Tensor:
    """``x_d`` of the relative drive after storing it in a Motion (angles) and reading it back."""
    src = _kp_info(x, "source")
    motion = motion_from_transform(relative_transform(src, _kp_info(x, "driving"), reference=reference))
    rotation = motion_rotation(motion)
    x_c = src["kp"].reshape(1, -1, 3)
    scale = motion.scale.reshape(-1, 1, 1)
    return scale * (x_c @ rotation + motion.exp) + motion.t.unsqueeze(1)


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Compare every output in ``outputs.safetensors`` (a missing or unknown one is a FAIL)."""
    fx = load_fixture(Path(fixture_dir), meta)
    inputs = {k: v.float() for k, v in fx.inputs.items()}
    reference = int(meta.get("config", {}).get("reference_frame", 0))
    results = compare_outputs(fx, _actual_outputs(inputs, reference))
    if "x_d" in fx.outputs:
        results.append(compare(fx.name, "x_d[motion]", _motion_route(inputs, reference), fx.outputs["x_d"],
                               *tolerance(fx.meta, "x_d")))
    return results

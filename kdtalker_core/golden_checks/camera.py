"""Golden check ``lp_camera_keypoints``: rotation matrices, bin-logit -> degree conversion (pipeline
and the unused inference.py variant) and keypoint transformation, via :mod:`kdtalker_core.keypoints`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..golden_checks._common import CheckResult, compare_outputs, load_fixture
from ..keypoints import (
    get_rotation_matrix,
    headpose_pred_to_degree,
    headpose_pred_to_degree_legacy,
    transform_keypoint,
)

_ANGLES = ("pitch", "yaw", "roll")


def _actual_outputs(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Compute every output the fixture format defines from its inputs."""
    flat = {a: x[a].reshape(-1) for a in _ANGLES}
    common = {"kp": x["kp"], "exp": x["exp"], "t": x["t"], "scale": x["scale"]}
    out = {
        "rotation": get_rotation_matrix(x["pitch"], x["yaw"], x["roll"]),
        "rotation_1d_inputs": get_rotation_matrix(flat["pitch"], flat["yaw"], flat["roll"]),
        "degree_passthrough": headpose_pred_to_degree(x["deg_pitch"]),
        "degree_pitch_inference_py_variant": headpose_pred_to_degree_legacy(x["logits_pitch"]),
        "transform_keypoint_degrees": transform_keypoint({**common, **{a: x[f"deg_{a}"] for a in _ANGLES}}),
        "transform_keypoint_logits": transform_keypoint({**common, **{a: x[f"logits_{a}"] for a in _ANGLES}}),
    }
    out.update({f"degree_{a}": headpose_pred_to_degree(x[f"logits_{a}"]) for a in _ANGLES})
    return out


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Compare every output in ``outputs.safetensors`` (a missing or unknown one is a FAIL)."""
    fx = load_fixture(Path(fixture_dir), meta)
    actual = _actual_outputs({k: v.float() for k, v in fx.inputs.items()})
    return compare_outputs(fx, actual)

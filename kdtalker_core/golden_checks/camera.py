"""Golden check ``lp_camera_keypoints``: rotation matrices, bin-logit -> degree conversion (pipeline
and the unused inference.py variant) and keypoint transformation, via :mod:`kdtalker_core.keypoints`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..golden_checks._common import CheckResult, compare_outputs, load_fixture
from ..keypoints import NUM_POSE_BINS, get_rotation_matrix, headpose_pred_to_degree, transform_keypoint

_ANGLES = ("pitch", "yaw", "roll")


def headpose_pred_to_degree_legacy(pred: torch.Tensor) -> torch.Tensor:
    """KDTalker inference.py's own, never-called conversion: ``pred (B,66)`` logits -> ``(B,)`` degrees.

    ``E[bin index] * 3 - 99`` under a softmax over the bins (the pipeline's
    :func:`~kdtalker_core.keypoints.headpose_pred_to_degree` subtracts 97.5). Only this checker needs
    it, to reproduce the fixture's ``degree_pitch_inference_py_variant``; it requires 2-D logits.
    """
    if pred.ndim != 2 or pred.shape[1] != NUM_POSE_BINS:
        raise ValueError(f"expected (B,{NUM_POSE_BINS}) logits, got shape {tuple(pred.shape)}")
    bins = torch.arange(NUM_POSE_BINS, device=pred.device, dtype=pred.dtype)
    return (torch.softmax(pred, dim=1) * bins).sum(dim=1) * 3.0 - 99.0


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

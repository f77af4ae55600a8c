"""Golden checker for kind ``motion_pipeline``: inference.py's whole motion glue.

Source kp_info -> normalised tokens -> wrap-around padded audio windows -> windowed DDIM (small
denoiser, injected noise) -> denormalise -> Kalman smoothing -> rotations and driving keypoints,
all through the product functions of :mod:`kdtalker_core.motion` and :mod:`kdtalker_core.keypoints`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..golden_checks._common import CheckResult, compare, load_fixture, tolerance
from ..keypoints import get_rotation_matrix, transform_keypoint
from ..motion import (
    NUM_KP,
    WINDOW,
    NormStats,
    denormalize,
    driving_keypoints,
    driving_transform,
    generate_motion_normalized,
    normalize_source,
    smooth_motion,
)
from ..networks.denoiser import MotionDenoiser

#: Outputs in degrees: the meta tolerance note asks for atol 1e-3 on these.
_DEGREE_OUTPUTS = frozenset({"yaw", "pitch", "roll", "raw_yaw", "raw_pitch", "raw_roll"})
_DEGREE_ATOL = 1e-3
_SOURCE_KEYS = ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")


def _denoiser(meta: dict[str, Any], weights: dict[str, torch.Tensor]) -> MotionDenoiser:
    """The fixture's small denoiser (``config.denoiser`` dim/num_layers; heads follow from dim)."""
    cfg = meta.get("config", {}).get("denoiser", {})
    kwargs = {k: int(cfg[k]) for k in ("dim", "num_layers") if k in cfg}
    model = MotionDenoiser(**kwargs).float().eval()
    model.load_state_dict(weights, strict=True)
    return model


def _actual_outputs(fixture_dir: Path, meta: dict[str, Any], fx: Any) -> dict[str, torch.Tensor]:
    """Every output the fixture format defines, computed from its inputs."""
    cfg = meta.get("config", {})
    stats = NormStats.from_dict(load_file(str(fixture_dir / "norm.safetensors")))
    src = {k: fx.inputs[f"src_{k}"].float() for k in _SOURCE_KEYS}
    model = _denoiser(meta, fx.weights)
    input_x, ori_kp = normalize_source(src, stats)
    with torch.inference_mode():
        motion_norm, extras = generate_motion_normalized(
            model, input_x, ori_kp, fx.inputs["aud_feat"].float(),
            steps=int(cfg.get("ddim_steps", 50)), eta=float(cfg.get("eta", 0.0)),
            init_noise=fx.inputs["init_noise"].float(), return_intermediates=True,
            window=int(cfg.get("sample_frame", WINDOW)),
        )
    raw = denormalize(motion_norm, stats)
    smooth = smooth_motion(raw)
    relative = bool(cfg.get("flag_relative_motion", False))
    out: dict[str, torch.Tensor] = {"input_x": input_x, "ori_kp": ori_kp, "motion_norm": motion_norm}
    out.update(extras)
    for prefix, mo in (("raw_", raw), ("", smooth)):
        out[prefix + "scale"] = mo.scale
        out[prefix + "yaw"] = mo.yaw[:, None]
        out[prefix + "pitch"] = mo.pitch[:, None]
        out[prefix + "roll"] = mo.roll[:, None]
        out[prefix + "t"] = mo.t
        out[prefix + "exp"] = mo.exp.reshape(mo.num_frames, -1)
    out["R_d"] = get_rotation_matrix(smooth.pitch, smooth.yaw, smooth.roll)
    out["t_new"] = driving_transform(smooth, src, relative=relative).translation
    out["x_d"] = driving_keypoints(smooth, src, relative=relative)
    out["x_c_s"] = src["kp"].reshape(NUM_KP, 3)
    out["x_s"] = transform_keypoint(src)[0]
    out["R_s"] = get_rotation_matrix(src["pitch"], src["yaw"], src["roll"])[0]
    return out


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Compare every output in ``outputs.safetensors`` (a missing or unknown one is a FAIL)."""
    fixture_dir = Path(fixture_dir)
    fx = load_fixture(fixture_dir, meta)
    actual = _actual_outputs(fixture_dir, meta, fx)
    results = []
    for name, expected in fx.outputs.items():
        if name not in actual:
            results.append(CheckResult(fx.name, name, False, float("nan"), "unknown output"))
            continue
        atol, rtol = tolerance(meta, name)
        tol = meta.get("tolerance", {})
        if name in _DEGREE_OUTPUTS and not isinstance(tol.get(name), dict):
            atol = max(atol, _DEGREE_ATOL)
        results.append(compare(fx.name, name, actual[name], expected, atol, rtol))
    return results

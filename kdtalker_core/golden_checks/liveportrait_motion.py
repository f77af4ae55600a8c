"""Golden checks for LivePortrait's motion side: M (``lp_motion_extractor``) and the stitching /
retargeting MLPs (``lp_stitching_retargeting``). Both run the package's own modules and functions."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..golden_checks._common import CheckResult, Fixture, compare_outputs, load_fixture
from ..keypoints import get_kp_info
from ..networks.motion_extractor import MotionExtractor
from ..networks.stitching import (
    STITCHING_ROLES,
    load_stitching_networks,
    retarget_eye,
    retarget_lip,
    stitch,
    stitch_delta,
)


def _check_motion_extractor(fx: Fixture) -> list[CheckResult]:
    cfg = fx.meta["config"]["ConvNeXtV2"]
    model = MotionExtractor(
        num_kp=cfg.get("num_kp", fx.meta["config"].get("motion_extractor", {}).get("num_kp", 21)),
        depths=tuple(cfg["depths"]),
        dims=tuple(cfg["dims"]),
        num_bins=cfg.get("num_bins", 66),
    ).float().eval()
    model.load_state_dict(fx.weights, strict=True)
    image = fx.inputs["image"].float()
    with torch.no_grad():
        raw = model(image)
    kp_info = get_kp_info(model, image)
    actual = {f"raw_{k}": v for k, v in raw.items()}
    actual.update({f"kp_info_{k}": v for k, v in kp_info.items()})
    return compare_outputs(fx, actual)


def _check_stitching(fx: Fixture) -> list[CheckResult]:
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in fx.weights.items():
        group, _, stored_key = key.partition(".")
        groups[group][stored_key] = value
    configs = {STITCHING_ROLES[role]: cfg for role, cfg in fx.meta["config"].items()}
    if set(groups) != set(configs):
        raise KeyError(f"weight groups {sorted(groups)} != configured groups {sorted(configs)}")
    nets = load_stitching_networks(groups, configs)
    shoulder = nets[STITCHING_ROLES["stitching"]]
    eye = nets[STITCHING_ROLES["eye"]]
    lip = nets[STITCHING_ROLES["lip"]]
    x = {k: v.float() for k, v in fx.inputs.items()}
    with torch.no_grad():
        actual = {
            "stitch_delta": stitch_delta(shoulder, x["kp_source"], x["kp_driving"]),
            "kp_driving_stitched": stitch(shoulder, x["kp_source"], x["kp_driving"]),
            "eye_delta": retarget_eye(eye, x["kp_source"], x["eye_close_ratio"]),
            "lip_delta": retarget_lip(lip, x["kp_source"], x["lip_close_ratio"]),
        }
    return compare_outputs(fx, actual)


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Run an ``lp_motion_extractor`` or ``lp_stitching_retargeting`` fixture."""
    fx = load_fixture(Path(fixture_dir), meta)
    kind = meta.get("kind")
    if kind == "lp_motion_extractor":
        return _check_motion_extractor(fx)
    if kind == "lp_stitching_retargeting":
        return _check_stitching(fx)
    return [CheckResult(fx.name, "kind", False, float("nan"), f"liveportrait_motion cannot check {kind!r}")]

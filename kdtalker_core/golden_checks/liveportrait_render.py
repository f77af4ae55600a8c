"""Golden checks for LivePortrait's rendering side: appearance extractor F
(``lp_appearance_feature_extractor``), warping network W (``lp_warping_network``) and SPADE
decoder G (``lp_spade_decoder``). Each builds the package's module from ``meta['config']``, loads
the fixture weights strictly, and compares every stored output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..golden_checks._common import CheckResult, Fixture, compare_outputs, load_fixture
from ..networks.appearance import AppearanceFeatureExtractor
from ..networks.spade import SPADEDecoder, winograd_convolutions
from ..networks.warping import WarpingNetwork


def _load(model: torch.nn.Module, fx: Fixture) -> torch.nn.Module:
    model = model.float().eval()
    model.load_state_dict(fx.weights, strict=True)
    return model


def _check_appearance(fx: Fixture) -> list[CheckResult]:
    model = _load(AppearanceFeatureExtractor(**fx.meta["config"]), fx)
    with torch.inference_mode():
        feature = model(fx.inputs["image"].float())
    return compare_outputs(fx, {"feature_3d": feature})


def _check_warping(fx: Fixture) -> list[CheckResult]:
    model = _load(WarpingNetwork(**fx.meta["config"]), fx)
    with torch.inference_mode():
        out = model(fx.inputs["feature_3d"].float(), fx.inputs["kp_driving"].float(),
                    fx.inputs["kp_source"].float())
    actual = {
        "out": out["out"],
        "occlusion_map": out.get("occlusion_map"),
        "deformation": out["deformation"],
        "mask_sum_over_depth": out["mask"].sum(dim=2),
        "mask": out["mask"],
    }
    return compare_outputs(fx, {k: v for k, v in actual.items() if v is not None})


def _check_spade(fx: Fixture) -> list[CheckResult]:
    model = _load(SPADEDecoder(**fx.meta["config"]), fx)
    feature = fx.inputs["feature"].float()
    with torch.inference_mode():
        image = model(feature)
        fused = model.fuse_spectral_norm()(feature)  # the inference path render.py uses
        results = compare_outputs(fx, {"image": image}) + compare_outputs(fx, {"image": fused}, "[fused_spectral_norm]")
        with winograd_convolutions() as active:  # render.py's default for float32 on CPU
            if active:
                results += compare_outputs(fx, {"image": model(feature)}, "[winograd]")
    return results


_CHECKERS = {
    "lp_appearance_feature_extractor": _check_appearance,
    "lp_warping_network": _check_warping,
    "lp_spade_decoder": _check_spade,
}


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Run one F / W / G fixture through the package's networks."""
    fx = load_fixture(fixture_dir, meta)
    return _CHECKERS[meta["kind"]](fx)

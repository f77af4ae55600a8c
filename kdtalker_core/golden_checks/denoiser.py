"""Golden checker for kind ``denoiser``: one forward of the motion denoiser plus its intermediates.

``out`` is checked for the fused fast path (:meth:`MotionDenoiser.forward`) and, as ``out[reference]``,
for the plain modules of :mod:`kdtalker_core.networks.denoiser_blocks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..golden_checks._common import CheckResult, compare, compare_exact, load_fixture, tolerance
from ..networks.denoiser import MotionDenoiser
from ..networks.denoiser_blocks import relative_position_bucket


def build_denoiser(config: dict[str, Any], weights: dict) -> MotionDenoiser:
    """A float32 MotionDenoiser sized by a fixture's ``config``, loaded strictly with its weights."""
    model = MotionDenoiser(
        dim=int(config["dim"]),
        num_layers=int(config["num_layers"]),
        in_channels=int(config.get("in_channels", 70)),
        out_channels=config.get("out_channels"),
        context_dim=int(config.get("context_dim", 512)),
        timestep_embed_dim=int(config.get("timestep_embed_dim", 256)),
        heads=config.get("heads"),
        rotary_dim=config.get("rotary_dim"),
        num_buckets=int(config.get("rel_pos_num_buckets", 32)),
        max_distance=int(config.get("rel_pos_max_distance", 128)),
    ).float()
    model.load_state_dict(weights, strict=True)
    return model.eval()


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Compare ``out`` (fast and reference paths) and the intermediates ``time_emb``, ``rel_pos_bias``,
    ``rel_pos_bucket``."""
    fx = load_fixture(fixture_dir, meta)
    cfg = meta["config"]
    model = build_denoiser(cfg, fx.weights)
    x, timesteps, context = fx.inputs["x"], fx.inputs["timesteps"], fx.inputs["context"]
    num_frames = x.shape[1]
    actual = {
        "out": model(x, timesteps, context),
        "time_emb": model.time_embedding(timesteps),
        "rel_pos_bias": model.relative_position_bias(num_frames),
    }
    results = []
    for name, value in actual.items():
        if name in fx.outputs:
            atol, rtol = tolerance(meta, name)
            results.append(compare(fx.name, name, value, fx.outputs[name], atol, rtol))
    if "out" in fx.outputs:
        atol, rtol = tolerance(meta, "out")
        reference = model.reference_forward(x, timesteps, context)
        results.append(compare(fx.name, "out[reference]", reference, fx.outputs["out"], atol, rtol))
    if "rel_pos_bucket" in fx.outputs:
        bucket = relative_position_bucket(
            num_frames, int(cfg.get("rel_pos_num_buckets", 32)), int(cfg.get("rel_pos_max_distance", 128))
        )
        results.append(compare_exact(fx.name, "rel_pos_bucket", bucket, fx.outputs["rel_pos_bucket"]))
    return results

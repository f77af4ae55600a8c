"""Golden checker for kind ``ddim_sampling``: a whole DDIM window on the small denoiser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..golden_checks._common import CheckResult, compare, compare_exact, load_fixture, tolerance
from ..golden_checks.denoiser import build_denoiser
from ..sampling import ddim_timesteps, linear_alphas_cumprod, sample_ddim


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Sample from the stored initial noise; compare x0, the trajectory, timesteps and alphas_cumprod."""
    fx = load_fixture(fixture_dir, meta)
    cfg = meta["config"]
    model = build_denoiser(cfg["denoiser"], fx.weights)
    alphas = linear_alphas_cumprod(
        float(cfg["beta_start"]), float(cfg["beta_end"]), int(cfg["num_train_timesteps"])
    )
    timesteps = ddim_timesteps(int(cfg["num_inference_steps"]), int(cfg["num_train_timesteps"]))
    keep = set(int(i) for i in meta.get("trajectory_step_indices", []))
    saved: dict[int, torch.Tensor] = {}

    def record(step: int, _t: int, x: torch.Tensor) -> None:
        if step in keep:
            saved[step] = x[0].clone()

    inp = fx.inputs
    eps_fn = model.window_eps_fn(inp["ori_kps"], inp["ref_kps"], inp["aud_feat"])
    x0 = sample_ddim(eps_fn, inp["init_noise"], alphas, timesteps, eta=float(cfg.get("eta", 0.0)),
                     callback=record)
    actual: dict[str, torch.Tensor] = {"x0": x0, "alphas_cumprod": alphas}
    if keep:
        order = [int(i) for i in meta["trajectory_step_indices"]]
        actual["trajectory"] = torch.stack([saved[i] for i in order])
    results = []
    for name, value in actual.items():
        if name in fx.outputs:
            atol, rtol = tolerance(meta, name)
            results.append(compare(fx.name, name, value, fx.outputs[name], atol, rtol))
    if "timesteps" in fx.outputs:
        results.append(compare_exact(fx.name, "timesteps", timesteps, fx.outputs["timesteps"]))
    return results

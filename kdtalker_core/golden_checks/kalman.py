"""Golden checker for kind ``kalman``: pykalman RTS smoothing with the official settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..golden_checks._common import CheckResult, compare, load_fixture, tolerance
from ..smoothing import kalman_smooth


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Smooth every ``seq_<n>d`` input and compare with the matching ``smoothed_<n>d`` output."""
    fx = load_fixture(fixture_dir, meta)
    cfg = meta.get("config", {})
    q = _identity_multiple(cfg.get("transition_covariance", "0.05*I"))
    r = _identity_multiple(cfg.get("observation_covariance", "0.001*I"))
    results: list[CheckResult] = []
    for name, seq in sorted(fx.inputs.items()):
        if not name.startswith("seq_"):
            continue
        out_name = "smoothed_" + name[len("seq_"):]
        if out_name not in fx.outputs:
            continue
        actual = kalman_smooth(seq.float(), transition_cov=q, observation_cov=r)
        atol, rtol = tolerance(meta, out_name)
        results.append(compare(fx.name, out_name, actual, fx.outputs[out_name], atol, rtol))
    return results


def _identity_multiple(text: Any) -> float:
    """``"0.05*I"`` -> 0.05 (meta.json spells covariances as multiples of the identity)."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(\*\s*I)?\s*", str(text))
    if m is None:
        raise ValueError(f"cannot read covariance {text!r} from meta.json")
    return float(m.group(1))

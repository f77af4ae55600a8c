"""Shared helpers for golden checkers: fixture loading and tolerance comparison."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


@dataclass
class CheckResult:
    """One compared output of one fixture."""

    fixture: str
    output: str
    ok: bool
    max_abs_err: float
    note: str = ""

    def line(self) -> str:
        """The printed line: ``PASS|FAIL <fixture> <output> max_abs_err=<x> [note]``."""
        status = "PASS" if self.ok else "FAIL"
        text = f"{status} {self.fixture} {self.output} max_abs_err={self.max_abs_err:.3e}"
        return f"{text} {self.note}" if self.note else text


@dataclass
class Fixture:
    """A loaded fixture: meta, inputs, expected outputs and float32 weights (may be empty)."""

    path: Path
    meta: dict[str, Any]
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return self.meta.get("fixture", self.path.name)


def load_fixture(path: Path, meta: dict[str, Any]) -> Fixture:
    """Load inputs/outputs and the weights (own file or ``meta['weights_file']``), floats cast to fp32."""
    inputs = load_file(str(path / "inputs.safetensors")) if (path / "inputs.safetensors").exists() else {}
    outputs = load_file(str(path / "outputs.safetensors")) if (path / "outputs.safetensors").exists() else {}
    wfile = path / meta.get("weights_file", "weights.safetensors")
    weights: dict[str, torch.Tensor] = {}
    if wfile.exists():
        weights = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(wfile)).items()}
    return Fixture(path, meta, inputs, outputs, weights)


def tolerance(meta: dict[str, Any], output: str | None = None) -> tuple[float, float]:
    """(atol, rtol) from meta['tolerance']: a per-output entry if present, else the global one."""
    tol = meta.get("tolerance", {})
    entry = tol.get(output) if output is not None and isinstance(tol.get(output), dict) else tol
    atol = float(entry.get("atol", tol.get("atol", 1e-4) if isinstance(tol, dict) else 1e-4))
    rtol = float(entry.get("rtol", tol.get("rtol", 0.0) if isinstance(tol, dict) else 0.0))
    return atol, rtol


def compare(
    fixture: str,
    output: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    atol: float,
    rtol: float = 0.0,
) -> CheckResult:
    """Compare like torch.testing.assert_close (|a-e| <= atol + rtol*|e|), shapes must match exactly."""
    actual = torch.as_tensor(actual).detach().cpu()
    expected = torch.as_tensor(expected).detach().cpu()
    if tuple(actual.shape) != tuple(expected.shape):
        return CheckResult(
            fixture, output, False, float("nan"),
            f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}",
        )
    if actual.numel() == 0:
        return CheckResult(fixture, output, True, 0.0)
    a = actual.double()
    e = expected.double()
    if not torch.isfinite(a).all():
        return CheckResult(fixture, output, False, float("nan"), "non-finite values")
    err = (a - e).abs()
    ok = bool((err <= atol + rtol * e.abs()).all())
    max_err = float(err.max())
    return CheckResult(fixture, output, ok, max_err if not math.isnan(max_err) else float("nan"))


def compare_exact(fixture: str, output: str, actual: Any, expected: torch.Tensor) -> CheckResult:
    """Exact equality (integer outputs such as boxes, landmarks, uint8 images)."""
    return compare(fixture, output, torch.as_tensor(actual).to(expected.dtype).double(),
                   expected.double(), atol=0.0, rtol=0.0)


def compare_outputs(fx: Fixture, actual: dict[str, torch.Tensor], suffix: str = "") -> list[CheckResult]:
    """Compare every expected output of ``fx`` with ``actual`` at the fixture's tolerances.

    An expected output missing from ``actual`` is a FAIL; ``suffix`` labels a variant run
    (e.g. ``"[fused]"``) while the tolerance is still looked up under the plain output name.
    """
    results = []
    for name, expected in fx.outputs.items():
        label = f"{name}{suffix}"
        if name not in actual:
            results.append(CheckResult(fx.name, label, False, float("nan"), "not produced by the checker"))
            continue
        results.append(compare(fx.name, label, actual[name], expected, *tolerance(fx.meta, name)))
    return results

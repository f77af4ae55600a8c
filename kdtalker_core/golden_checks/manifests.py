"""Golden checker for kind ``manifests``: our full-size networks against every official checkpoint layout.

For each ``<file>.json`` in ``meta['files']`` the networks that hold that file's weights (rows
of the table :data:`kdtalker_core.weights.NETWORKS` the product loads with, grouped by file in
:data:`~kdtalker_core.weights.CHECKPOINT_FILES`) are built on the meta device, their state dicts
are put into the file's key layout (:func:`kdtalker_core.weights.official_file_layout`) and
compared key by key, in order, shape and dtype with the manifest. One result per manifest file:
max_abs_err 0 when identical, else FAIL with the first mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import weights
from ..golden_checks._common import CheckResult


def _manifest_layout(data: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Manifest ``keys`` -> key: (shape, dtype) in file order."""
    return {k: (tuple(int(s) for s in v["shape"]), str(v["dtype"])) for k, v in data["keys"].items()}


def check_manifest(fixture: str, path: Path) -> CheckResult:
    """Compare one manifest file with the layout our networks give for that checkpoint file."""
    name = path.name
    file_name = name[: -len(".json")] if name.endswith(".json") else name
    try:
        data = json.loads(path.read_text())
        expected = _manifest_layout(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CheckResult(fixture, name, False, float("nan"), f"unreadable manifest: {exc}")
    if file_name not in weights.CHECKPOINT_FILES:
        return CheckResult(fixture, name, False, float("nan"),
                           f"no network registered for {file_name!r} in weights.CHECKPOINT_FILES")
    try:
        ours = weights.official_file_layout(file_name)
    except Exception as exc:  # noqa: BLE001 - a network that cannot be built is this file's failure
        return CheckResult(fixture, name, False, float("nan"),
                           f"cannot build our network: {type(exc).__name__}: {exc}")
    problems = weights.layout_problems(ours, expected, check_order=True, limit=1)
    if problems:
        return CheckResult(fixture, name, False, float("nan"), problems[0])
    return CheckResult(fixture, name, True, 0.0, f"{len(expected)} tensors")


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """One result per manifest file listed in ``meta['files']``."""
    fixture = meta.get("fixture", fixture_dir.name)
    return [check_manifest(fixture, fixture_dir / f) for f in meta.get("files", [])]

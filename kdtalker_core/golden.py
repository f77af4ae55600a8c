"""Run golden fixtures (made by the official implementation) through the product code.

Usage::

    python -m kdtalker_core.golden PATH [PATH ...]

PATH is a fixture folder (it has ``meta.json``), a folder of fixture folders, or the
``manifests`` folder. Each fixture is dispatched on ``meta["kind"]`` to a checker module in
:mod:`kdtalker_core.golden_checks`; an unknown kind is a FAIL. Every compared output prints
one line ``PASS|FAIL <fixture> <output> max_abs_err=<x>`` and the last line is exactly
``N passed, M failed``. The exit status is 0 only when nothing failed.

The checkers call the same functions the product uses; they hold no second implementation.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

from .golden_checks._common import CheckResult

#: meta.json ``kind`` -> checker module under kdtalker_core.golden_checks (each exposes ``check``).
KIND_MODULES: dict[str, str] = {
    "manifests": "manifests",
    "denoiser": "denoiser",
    "ddim_sampling": "ddim_sampling",
    "motion_pipeline": "motion_pipeline",
    "kalman": "kalman",
    "audio_mel": "audio_mel",
    "audio_encoder": "audio_encoder",
    "lp_appearance_feature_extractor": "liveportrait_render",
    "lp_warping_network": "liveportrait_render",
    "lp_spade_decoder": "liveportrait_render",
    "lp_motion_extractor": "liveportrait_motion",
    "lp_stitching_retargeting": "liveportrait_motion",
    "lp_camera_keypoints": "camera",
    "crop": "crop",
    "lp_relative_motion": "relative_motion",
}


def find_fixtures(paths: Iterable[str | Path]) -> list[Path]:
    """Expand PATH arguments into fixture folders (folders holding a meta.json), sorted per argument."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if (p / "meta.json").is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(q.parent for q in p.glob("*/meta.json")))
        elif p.is_file():
            continue  # a stray file next to the fixtures (e.g. README.md from a shell glob)
        else:
            found.append(p)  # missing path: reported as a FAIL by run_fixture
    return found


def run_fixture(fixture: Path) -> list[CheckResult]:
    """Run one fixture folder and return its results (errors become FAIL results)."""
    name = fixture.name
    meta_path = fixture / "meta.json"
    if not meta_path.is_file():
        return [CheckResult(name, "meta.json", False, float("nan"), f"no meta.json in {fixture}")]
    meta = json.loads(meta_path.read_text())
    name = meta.get("fixture", name)
    kind = meta.get("kind")
    module_name = KIND_MODULES.get(kind or "")
    if module_name is None:
        return [CheckResult(name, "kind", False, float("nan"), f"unknown fixture kind {kind!r}")]
    try:
        module = importlib.import_module(f"{__package__ or 'kdtalker_core'}.golden_checks.{module_name}")
        results = list(module.check(fixture, meta))
    except Exception as exc:  # a crash is a failure of this fixture, not of the run
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return [CheckResult(name, "error", False, float("nan"), detail)]
    if not results:
        return [CheckResult(name, "outputs", False, float("nan"), "checker compared nothing")]
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m kdtalker_core.golden FIXTURE_DIR [FIXTURE_DIR ...]", file=sys.stderr)
        return 2
    passed = failed = 0
    for fixture in find_fixtures(argv):
        for r in run_fixture(fixture):
            print(r.line(), flush=True)
            passed += r.ok
            failed += not r.ok
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

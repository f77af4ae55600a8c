"""Make the bundled ``kdtalker_core`` library importable from inside ComfyUI.

ComfyUI imports this package from its own path (``custom_nodes/ComfyUI-KDTalker``) without putting
that folder on ``sys.path``, and the library imports itself absolutely (``kdtalker_core.x``). We
therefore register the bundled copy under its own name, and only that name: adding the package
folder to ``sys.path`` would let our ``nodes`` folder shadow ComfyUI's ``nodes`` module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def ensure_kdtalker_core() -> None:
    """Import ``kdtalker_core`` (an already-imported copy wins; else the one next to this package)."""
    if "kdtalker_core" in sys.modules:
        return
    init = PACKAGE_ROOT / "kdtalker_core" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "kdtalker_core", init, submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:  # pragma: no cover - broken install
        raise ImportError(f"cannot load kdtalker_core from {init}; reinstall ComfyUI-KDTalker")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kdtalker_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["kdtalker_core"]
        raise


ensure_kdtalker_core()

from kdtalker_core import attention, checkpoints, errors, face, motion_edit, pipeline  # noqa: E402 - after the bootstrap

__all__ = ["PACKAGE_ROOT", "attention", "checkpoints", "errors", "face", "motion_edit", "pipeline",
           "ensure_kdtalker_core"]

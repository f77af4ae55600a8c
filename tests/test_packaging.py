"""The repository is an installable Python package (the library only) and a ComfyUI custom-node folder.

Builds the wheel the way ``pip install <clone>`` does (without network: the build backend of this
environment) and checks what would be installed: ``kdtalker_core`` with its bundled assets and the
``kdtalker`` console script, never a top-level ``nodes`` (it would shadow ComfyUI's own module),
``tests``, ``bench`` or ``workflows``; runtime dependencies are exactly requirements.txt.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools", minversion="70.1")
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the clone (setuptools writes build/ and *.egg-info into the source folder).
    src = tmp_path_factory.mktemp("src") / "clone"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                               "golden", "models", "out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(out), str(src)], check=True, cwd=src)
    (whl,) = out.glob("*.whl")
    return zipfile.ZipFile(whl)


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return sorted(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))


def test_wheel_installs_only_the_library_with_its_assets(wheel):
    names = wheel.namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"kdtalker_core"}
    for asset in ("sample_portrait.jpg", "sample_speech.wav", "norm.npz"):
        assert f"kdtalker_core/assets/{asset}" in names
    assert "kdtalker_core/weights/__init__.py" in names and "kdtalker_core/networks/denoiser.py" in names


def test_wheel_declares_the_console_script_and_requirements_txt(wheel):
    dist = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    entry_points = wheel.read(f"{dist}/entry_points.txt").decode()
    assert "kdtalker = kdtalker_core.cli:main" in entry_points
    metadata = wheel.read(f"{dist}/METADATA").decode().splitlines()
    requires = sorted(line.split(":", 1)[1].strip() for line in metadata if line.startswith("Requires-Dist:")
                      and "extra ==" not in line)
    assert requires == _requirements()
    assert not any(r.split(">")[0].split("=")[0].strip() == "torch" for r in requires)


def test_every_declared_dependency_is_imported():
    """requirements.txt holds only what the library imports (distribution name -> import name)."""
    import_names = {"numpy": "numpy", "safetensors": "safetensors", "einops": "einops", "pillow": "PIL",
                    "av": "av", "soxr": "soxr", "dlib-bin": "dlib", "face-recognition-models": None}
    source = "\n".join(p.read_text() for p in (ROOT / "kdtalker_core").rglob("*.py"))
    for req in _requirements():
        dist = req.split(">")[0].split("=")[0].split("<")[0].strip()
        assert dist in import_names, f"{dist} is declared but this test does not know its import name"
        module = import_names[dist]
        if module is None:  # data-only package (the dlib landmark model), found by path
            assert "face_recognition_models" in source
            continue
        assert f"import {module}" in source or f"from {module}" in source, f"{dist} is declared but never imported"

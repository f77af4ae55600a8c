"""Shared pytest configuration: deterministic, small thread pool, paths to fixtures and data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
ASSETS = ROOT / "kdtalker_core" / "assets"

torch.manual_seed(0)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """tests/golden: fixtures produced by the official implementation."""
    return GOLDEN


@pytest.fixture(scope="session")
def sample_speech() -> Path:
    """A real (synthetic-voice) English speech clip shipped with the package, 16 kHz mono, 5.3 s."""
    return ASSETS / "sample_speech.wav"


@pytest.fixture(scope="session")
def sample_portrait() -> Path:
    """skimage's astronaut photo (public-domain NASA portrait), 512x512 RGB JPEG."""
    return ASSETS / "sample_portrait.jpg"


sys.path.insert(0, str(ROOT / "tests"))  # shared test helpers (tests/model_files.py)


@pytest.fixture(scope="session")
def official_models_dir(tmp_path_factory) -> Path:
    """A models folder with random FULL-size weights in the official layouts (written once)."""
    from model_files import write_official_models

    return write_official_models(tmp_path_factory.mktemp("official_models"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (faster, steadier on shared cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


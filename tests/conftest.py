"""Shared pytest configuration: deterministic, small thread pool, paths to fixtures and data."""

from __future__ import annotations

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

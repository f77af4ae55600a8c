"""Checker for the ``audio_encoder`` fixture: Wav2Lip AudioEncoder on per-frame mel windows.

Loads the fixture's wav2lip-layout weights strictly (prefix ``module.audio_encoder.`` removed) and
compares the plain forward and the BatchNorm-fused encoder run in chunks to the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..golden_checks._common import CheckResult, compare, load_fixture, tolerance
from ..networks.audio_encoder import AudioEncoder, audio_encoder_state_dict


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Run the audio_encoder fixture through kdtalker_core.networks.audio_encoder."""
    fx = load_fixture(fixture_dir, meta)
    encoder = AudioEncoder()
    encoder.load_state_dict(audio_encoder_state_dict(fx.weights), strict=True)
    encoder.eval()
    windows = fx.inputs["indiv_mels"]
    expected = fx.outputs["audio_features"]
    atol, rtol = tolerance(meta, "audio_features")
    with torch.no_grad():
        plain = encoder(windows)
    chunk = max(1, windows.shape[0] // 3)
    fused_chunked = encoder.fused().encode_in_chunks(windows, chunk=chunk)
    return [
        compare(fx.name, "audio_features", plain, expected, atol, rtol),
        compare(fx.name, "audio_features[bn_fused,chunked]", fused_chunked, expected, atol, rtol),
    ]

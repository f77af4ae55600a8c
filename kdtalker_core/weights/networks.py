"""The table of networks: which class holds which official checkpoint's weights, as data.

Every network the product loads is one row of :data:`NETWORKS`: the module and class under
:mod:`kdtalker_core.networks`, the constructor arguments of the official full-size configuration,
the official file holding its weights with the key prefix they carry there, and a description
quoted in errors. :func:`load_network` (the product) and :func:`official_file_layout` (the
``manifests`` golden checker, the test model writer) read this one table.
"""

from __future__ import annotations

import functools
import importlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..networks.stitching import STITCHING_CONFIGS
from .names import LIVEPORTRAIT_BASE, STITCHING_GROUPS, STITCHING_NAME
from .validation import PathLike, validate_state_dict

Layout = OrderedDict[str, tuple[tuple[int, ...], str]]


@dataclass(frozen=True)
class NetworkSpec:
    """One network: ``kdtalker_core.networks.<module>.<cls>(**config)`` holds the weights found in
    the official ``file`` under key ``prefix``; ``description`` names it in messages."""

    module: str
    cls: str
    file: str
    description: str
    prefix: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)


_LIVEPORTRAIT = {
    "appearance_feature_extractor": ("appearance", "AppearanceFeatureExtractor",
                                     "LivePortrait appearance feature extractor (F)"),
    "motion_extractor": ("motion_extractor", "MotionExtractor", "LivePortrait motion extractor (M)"),
    "warping_module": ("warping", "WarpingNetwork", "LivePortrait warping network (W)"),
    "spade_generator": ("spade", "SPADEDecoder", "LivePortrait SPADE decoder (G)"),
}

#: Network name -> where its class, full-size configuration and official weights are.
#: The stitching file holds one sub-dict per group: its keys are written ``<group>/module.<key>``.
NETWORKS: dict[str, NetworkSpec] = {
    "denoiser": NetworkSpec("denoiser", "MotionDenoiser", "KDTalker.pth", "KDTalker motion denoiser"),
    "audio_encoder": NetworkSpec("audio_encoder", "AudioEncoder", "wav2lip.pth", "Wav2Lip audio encoder",
                                 prefix="module.audio_encoder."),
    **{name: NetworkSpec(module, cls, f"{name}.pth", text)
       for name in LIVEPORTRAIT_BASE for module, cls, text in [_LIVEPORTRAIT[name]]},
    **{group: NetworkSpec("stitching", "StitchingRetargetingNetwork", f"{STITCHING_NAME}.pth",
                          f"LivePortrait stitching/retargeting MLP {group} (S)", prefix=f"{group}/module.",
                          config=STITCHING_CONFIGS[group])
       for group in STITCHING_GROUPS},
}

#: Official checkpoint file -> its parts as (key prefix in the file's layout, network name), in file order.
CHECKPOINT_FILES: dict[str, tuple[tuple[str, str], ...]] = {}
for _name, _spec in NETWORKS.items():
    CHECKPOINT_FILES[_spec.file] = (*CHECKPOINT_FILES.get(_spec.file, ()), (_spec.prefix, _name))
del _name, _spec


def _spec(name: str) -> NetworkSpec:
    if name not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    return NETWORKS[name]


def build_network(name: str, device: str | torch.device | None = None) -> torch.nn.Module:
    """Instantiate network ``name`` of :data:`NETWORKS` (full size) on ``device``
    (``"meta"`` builds it without memory, for its key layout)."""
    spec = _spec(name)
    cls = getattr(importlib.import_module(f"..networks.{spec.module}", __package__), spec.cls)
    if device is None:
        return cls(**spec.config)
    with torch.device(device):
        return cls(**spec.config)


@functools.cache
def _layout(name: str) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    module = build_network(name, "meta")
    return tuple((k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
                 for k, v in module.state_dict().items())


def expected_layout(name: str) -> Layout:
    """Key -> (shape, dtype) of network ``name``'s state dict, in order (built on the meta device)."""
    return OrderedDict((k, (shape, dtype)) for k, shape, dtype in _layout(name))


def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of network ``name``'s state dict (what :func:`validate_state_dict` expects)."""
    return {k: shape for k, shape, _ in _layout(name)}


def official_file_layout(file_name: str) -> Layout:
    """Key -> (shape, dtype) that our networks give for an official file, in that file's key layout.

    ``file_name`` is a key of :data:`CHECKPOINT_FILES` (``"KDTalker.pth"``, ``"wav2lip.pth"``, ...).
    """
    layout: Layout = OrderedDict()
    for prefix, name in CHECKPOINT_FILES[file_name]:
        for key, value in expected_layout(name).items():
            layout[prefix + key] = value
    return layout


def load_network(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    *,
    file: PathLike | None = None,
    what: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
) -> torch.nn.Module:
    """Build network ``name`` on ``device``, validate ``state_dict`` against it, load it strictly.

    ``what`` names the weights in errors (default: the table's description). Floating-point
    parameters/buffers end up in ``dtype`` (None keeps the file's); the module is returned in eval mode.
    """
    # Built on the meta device and given uninitialised storage: the strict load below writes
    # every parameter and buffer (the networks keep no other tensors), so the random
    # initialisation the constructors would run is skipped (all models: 1.62 -> 1.40 s on Zen 5).
    module = build_network(name, "meta")
    validate_state_dict(state_dict, {k: tuple(v.shape) for k, v in module.state_dict().items()},
                        file=file, what=what or _spec(name).description)
    module.to_empty(device=device)
    module.load_state_dict(dict(state_dict), strict=True)
    if dtype is not None:
        module.to(dtype)
    return module.eval()

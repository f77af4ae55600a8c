"""Writing our safetensors files: the single ``kdtalker.safetensors`` and Kijai-layout LivePortrait files.

Every write goes through a temporary file in the target folder and ``os.replace``, so an interrupted
conversion never leaves a half-written file under the final name. Tensors keep their dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import publish, temp_beside
from .files import default_models_dir, find_model_files
from .kdtalker import check_norm, load_kdtalker_bundle
from .liveportrait import load_liveportrait
from .names import BUNDLE_FORMAT, BUNDLE_NAME, BUNDLE_PREFIXES, STITCHING_GROUPS, STITCHING_NAME
from .networks import expected_shapes
from .validation import PathLike, validate_state_dict


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: PathLike,
                            metadata: Mapping[str, str] | None = None) -> Path:
    """Write a safetensors file through a temporary file in the same folder + ``os.replace``."""
    from safetensors.torch import save_file

    out = Path(path)
    tmp = temp_beside(out)
    try:
        # clone: safetensors refuses tensors that share memory (e.g. the denoiser's shared rotary freqs)
        data = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
        save_file(data, str(tmp), metadata=dict(metadata or {}))
        publish(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def save_kdtalker_safetensors(
    path: PathLike,
    denoiser_sd: Mapping[str, torch.Tensor],
    audio_encoder_sd: Mapping[str, torch.Tensor],
    norm: Mapping[str, Any],
) -> Path:
    """Write our single ``kdtalker.safetensors``: ``denoiser.*``, ``audio_encoder.*``, ``norm.*`` (atomic).

    Tensors keep their dtype; norm arrays are stored as tensors of their numpy dtype.
    """
    check_norm(norm, "norm statistics")
    tensors: dict[str, torch.Tensor] = {}
    for part, sd in (("denoiser", denoiser_sd), ("audio_encoder", audio_encoder_sd)):
        tensors.update((BUNDLE_PREFIXES[part] + k, v) for k, v in sd.items())
    tensors.update((BUNDLE_PREFIXES["norm"] + k, torch.as_tensor(np.asarray(v))) for k, v in norm.items())
    return atomic_save_safetensors(tensors, path, {"format": "pt", "kdtalker_format": BUNDLE_FORMAT})


def convert_liveportrait_to_safetensors(root: PathLike, out_dir: PathLike) -> list[Path]:
    """Write Kijai-layout safetensors (flat; stitching as ``<group>_module.<key>``) of a LivePortrait folder.

    Returns the written paths.
    """
    weights = load_liveportrait(root)
    out = Path(out_dir)
    written = []
    for name, sd in weights.items():
        if sd is None:
            continue
        if name == STITCHING_NAME:
            flat = {f"{group}_module.{k}": v for group in STITCHING_GROUPS for k, v in sd[group].items()}
        else:
            flat = dict(sd)
        written.append(atomic_save_safetensors(flat, out / f"{name}.safetensors", {"format": "pt"}))
    return written


def convert_all(models_dir: PathLike | None = None, out_dir: PathLike | None = None,
                use_ema: bool = False) -> list[Path]:
    """Convert the official files of a models folder into our safetensors files; returns the paths.

    Writes ``<out>/kdtalker/kdtalker.safetensors`` (validated against our networks) and, for an
    original LivePortrait tree, Kijai-layout ``<out>/liveportrait/*.safetensors``. ``out_dir``
    defaults to the models folder itself (the converted files are found first afterwards).
    """
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    out = Path(out_dir) if out_dir is not None else root
    paths = find_model_files(root, need_liveportrait=False)
    written: list[Path] = []
    if not paths.kdtalker_is_bundle:
        bundle = load_kdtalker_bundle(paths, use_ema=use_ema)
        validate_state_dict(bundle.denoiser, expected_shapes("denoiser"), file=bundle.denoiser_file,
                            what="KDTalker motion denoiser")
        written.append(save_kdtalker_safetensors(out / "kdtalker" / BUNDLE_NAME,
                                                 bundle.denoiser, bundle.audio_encoder, bundle.norm))
    lp_files = [f for f in paths.liveportrait.values() if f is not None]
    if lp_files and any(f.suffix == ".pth" for f in lp_files) and paths.liveportrait_dir is not None:
        written += convert_liveportrait_to_safetensors(paths.liveportrait_dir, out / "liveportrait")
    return written

"""The KDTalker-side weights in our layouts: KDTalker.pth, wav2lip.pth, norm.npz, kdtalker.safetensors.

* ``KDTalker.pth``: the official training checkpoint; the denoiser is ``ckpt['model']``
  (``ckpt['model_ema']`` on request). Its pickled omegaconf ``cfg`` is read as an inert placeholder.
* ``wav2lip.pth``: the whole Wav2Lip generator; only ``module.audio_encoder.*`` is kept.
* ``norm.npz``: the motion normalisation statistics (a copy ships in ``assets/norm.npz``).
* ``kdtalker.safetensors``: our single file (``denoiser.*``, ``audio_encoder.*``, ``norm.*``).

Tensors keep the dtype they were stored in; the caller casts when it loads them into a module.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelFileError
from .files import ModelPaths
from .names import BUNDLE_PREFIXES, DOWNLOAD_HINTS, NORM_KEYS, PACKAGED_NORM, WAV2LIP_PREFIXES
from .networks import expected_shapes
from .reading import LoadedStateDict, corrupt, read_safetensors, read_torch_file, require_file, tensor_dict
from .validation import PathLike, describe, sample_keys, short, validate_state_dict

log = logging.getLogger(__name__)

REBUILD_HINT = "or rebuild it with `python -m kdtalker_core convert`"


def load_kdtalker_checkpoint(path: PathLike, use_ema: bool = False) -> LoadedStateDict:
    """The motion denoiser state dict of an official ``KDTalker.pth`` (keys ``point_model.model.*``).

    ``ckpt['model']`` by default (what the official inference loads); ``ckpt['model_ema']`` when
    ``use_ema`` and present (otherwise a warning and ``model``). A bare state dict is accepted too,
    and so is our ``kdtalker.safetensors``. The returned dict's ``source`` says which entry was used.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        return load_kdtalker_safetensors(p)["denoiser"]
    ckpt = read_torch_file(p, hint=DOWNLOAD_HINTS["kdtalker"])
    if isinstance(ckpt, Mapping) and "model" in ckpt:
        entry = "model"
        if use_ema:
            if isinstance(ckpt.get("model_ema"), Mapping) and ckpt["model_ema"]:
                entry = "model_ema"
            else:
                log.warning("%s has no 'model_ema' weights; using 'model'", p)
        sd = tensor_dict(ckpt[entry], file=p, what="KDTalker denoiser", entry=entry)
    elif isinstance(ckpt, Mapping) and ckpt and all(str(k).startswith("point_model.") for k in ckpt):
        sd = tensor_dict(ckpt, file=p, what="KDTalker denoiser")
    else:
        raise ModelFileError(
            f"{p} is not a KDTalker checkpoint: expected a training checkpoint with a 'model' entry "
            f"(keys 'point_model.model.*'), found {describe(ckpt)}. Download "
            f"{DOWNLOAD_HINTS['kdtalker']}."
        )
    log.info("KDTalker denoiser weights: %s", sd.source)
    return sd


def _fill_num_batches_tracked(sd: dict[str, torch.Tensor], expected: Iterable[str]) -> list[str]:
    filled = []
    for key in expected:
        if key not in sd and key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0, dtype=torch.long)
            filled.append(key)
    return filled


def load_wav2lip_audio_encoder(
    path: PathLike, expected: Mapping[str, Sequence[int]] | None = None,
) -> LoadedStateDict:
    """The audio encoder state dict of an official ``wav2lip.pth`` (prefix ``module.audio_encoder.`` removed).

    Only ``ckpt['state_dict']`` keys under ``module.audio_encoder.`` (or ``audio_encoder.``) are
    kept; the rest of the Wav2Lip generator is ignored. Missing ``num_batches_tracked`` buffers
    (old checkpoints) are filled with ``tensor(0)``; any other missing or extra key, or a wrong
    shape, is a :class:`ModelFileError`. ``expected`` defaults to our AudioEncoder's layout.
    """
    p = Path(path)
    hint = DOWNLOAD_HINTS["wav2lip"]
    ckpt = read_torch_file(p, hint=hint)
    container = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else ckpt
    entry = "state_dict" if container is not ckpt else ""
    full = tensor_dict(container, file=p, what="Wav2Lip", entry=entry)
    sd = LoadedStateDict()
    for prefix in WAV2LIP_PREFIXES:
        sd.update((k[len(prefix):], v) for k, v in full.items() if k.startswith(prefix))
        if sd:
            break
    if not sd:
        raise ModelFileError(
            f"{p} has no Wav2Lip audio encoder weights (no key starts with 'module.audio_encoder.'); "
            f"found {sample_keys(full.keys())}. This is not wav2lip.pth: download {hint}."
        )
    exp = dict(expected) if expected is not None else expected_shapes("audio_encoder")
    filled = _fill_num_batches_tracked(sd, exp)
    if filled:
        log.info("%s: %d BatchNorm num_batches_tracked buffers absent, set to 0", p, len(filled))
    # keep our key order
    ordered = LoadedStateDict((k, sd[k]) for k in exp if k in sd)
    ordered.update((k, v) for k, v in sd.items() if k not in ordered)
    validate_state_dict(ordered, exp, file=p, what="Wav2Lip audio encoder")
    ordered.source = f"{p} [state_dict: module.audio_encoder.*]"
    return ordered


def load_norm_stats(path: PathLike | None = None) -> dict[str, np.ndarray]:
    """Motion normalisation statistics from a ``norm.npz`` (``<key>_mean``/``<key>_std`` float arrays).

    ``None`` reads the copy shipped with the package. Read with ``allow_pickle=False``; the keys of
    :data:`NORM_KEYS` must be present with matching mean/std shapes.
    """
    p = require_file(Path(path) if path is not None else PACKAGED_NORM, DOWNLOAD_HINTS["norm"])
    try:
        with np.load(p, allow_pickle=False) as data:
            stats = {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise corrupt(p, f"invalid .npz ({short(exc)})", DOWNLOAD_HINTS["norm"]) from exc
    check_norm(stats, p)
    return stats


def check_norm(stats: Mapping[str, Any], where: PathLike) -> None:
    """Raise :class:`ModelFileError` unless ``stats`` has every ``<key>_mean``/``<key>_std`` pair of
    :data:`NORM_KEYS` with equal shapes."""
    missing = [f"{k}_{s}" for k in NORM_KEYS for s in ("mean", "std") if f"{k}_{s}" not in stats]
    if missing:
        raise ModelFileError(f"{where} is not KDTalker's norm.npz: missing {missing}; found "
                             f"{sample_keys(stats.keys())}. Delete it to use the copy shipped with the package.")
    for k in NORM_KEYS:
        mean, std = np.asarray(stats[f"{k}_mean"]), np.asarray(stats[f"{k}_std"])
        if mean.shape != std.shape:
            raise ModelFileError(f"{where}: {k}_mean {mean.shape} and {k}_std {std.shape} differ in shape")


def load_kdtalker_safetensors(path: PathLike) -> dict[str, Any]:
    """Read our ``kdtalker.safetensors``.

    Returns ``{'denoiser': state dict, 'audio_encoder': state dict, 'norm': {key: ndarray}}``.
    """
    p = Path(path)
    tensors = read_safetensors(p, hint=REBUILD_HINT)
    parts: dict[str, Any] = {"denoiser": LoadedStateDict(), "audio_encoder": LoadedStateDict(), "norm": {}}
    other = []
    for key, value in tensors.items():
        for part, prefix in BUNDLE_PREFIXES.items():
            if key.startswith(prefix):
                parts[part][key[len(prefix):]] = value
                break
        else:
            other.append(key)
    if other or not parts["denoiser"] or not parts["audio_encoder"] or not parts["norm"]:
        raise ModelFileError(
            f"{p} is not a kdtalker.safetensors bundle (expected keys 'denoiser.*', 'audio_encoder.*', "
            f"'norm.*'; found {sample_keys(tensors.keys())}). Rebuild it with `python -m kdtalker_core convert` "
            "from KDTalker.pth and wav2lip.pth."
        )
    parts["norm"] = {k: v.numpy() for k, v in parts["norm"].items()}
    check_norm(parts["norm"], p)
    parts["denoiser"].source = f"{p} [denoiser.*]"
    parts["audio_encoder"].source = f"{p} [audio_encoder.*]"
    return parts


@dataclass
class KDTalkerBundle:
    """The KDTalker-side weights: denoiser and audio encoder state dicts, norm statistics, sources."""

    denoiser: LoadedStateDict
    audio_encoder: LoadedStateDict
    norm: dict[str, np.ndarray]
    denoiser_file: Path
    audio_encoder_file: Path
    norm_file: Path | None


def load_kdtalker_bundle(paths: ModelPaths, use_ema: bool = False) -> KDTalkerBundle:
    """Load denoiser, audio encoder and norm statistics from whatever :func:`find_model_files` found.

    With ``kdtalker.safetensors`` everything comes from it (``use_ema`` does not apply); otherwise
    from KDTalker.pth + wav2lip.pth + norm.npz (or the packaged norm).
    """
    if paths.kdtalker is None:
        raise ModelFileError(f"no KDTalker checkpoint given. Download {DOWNLOAD_HINTS['kdtalker']}.")
    if paths.kdtalker_is_bundle:
        parts = load_kdtalker_safetensors(paths.kdtalker)
        if use_ema:
            log.warning("%s holds one set of denoiser weights; use_ema ignored", paths.kdtalker)
        return KDTalkerBundle(parts["denoiser"], parts["audio_encoder"], parts["norm"],
                              paths.kdtalker, paths.kdtalker, paths.kdtalker)
    if paths.wav2lip is None:
        raise ModelFileError(f"wav2lip.pth not given. Download {DOWNLOAD_HINTS['wav2lip']}.")
    denoiser = load_kdtalker_checkpoint(paths.kdtalker, use_ema=use_ema)
    audio = load_wav2lip_audio_encoder(paths.wav2lip)
    norm = load_norm_stats(paths.norm)
    return KDTalkerBundle(denoiser, audio, norm, paths.kdtalker, paths.wav2lip, paths.norm or PACKAGED_NORM)

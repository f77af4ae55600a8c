"""Find, safely read, validate and convert the KDTalker + LivePortrait checkpoints users bring.

Supported files (every loader returns state dicts in OUR module layouts, tensors in the dtype they
were stored in; the caller casts when it loads them into a module):

* ``kdtalker/KDTalker.pth``: the official training checkpoint; the denoiser is ``ckpt['model']``
  (``ckpt['model_ema']`` on request). Its pickled omegaconf ``cfg`` is read with the restricted
  unpickler of :mod:`kdtalker_core.weights.safe_unpickle` (nothing in the pickle is ever executed).
* ``kdtalker/wav2lip.pth``: the whole Wav2Lip generator; only ``module.audio_encoder.*`` is kept.
* ``kdtalker/norm.npz``: the motion normalisation statistics (a copy ships in ``assets/norm.npz``).
* ``kdtalker/kdtalker.safetensors``: our single file (``denoiser.*``, ``audio_encoder.*``, ``norm.*``).
* ``liveportrait/``: the official tree (``base_models/*.pth``,
  ``retargeting_models/stitching_retargeting_module.pth``) or Kijai's flat ``*.safetensors``
  (``Kijai/LivePortrait_safetensors``, shared with ComfyUI-LivePortraitKJ), float16 or float32.

:data:`NETWORK_BUILDERS` / :data:`CHECKPOINT_FILES` map every network and official file to the
class that holds its weights; the product's loading and the ``manifests`` golden checker both use
them. Every failure raises :class:`~kdtalker_core.errors.ModelFileError` saying what to do.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelFileError
from . import safe_unpickle

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

# ----------------------------------------------------------------------------------------- sources

KDTALKER_HF = "https://huggingface.co/ChaolongYang/KDTalker"
LIVEPORTRAIT_HF = "https://huggingface.co/KwaiVGI/LivePortrait"
LIVEPORTRAIT_KIJAI_HF = "https://huggingface.co/Kijai/LivePortrait_safetensors"

#: Where each file comes from, quoted in "not found" and "corrupt" messages.
DOWNLOAD_HINTS: dict[str, str] = {
    "kdtalker": f"KDTalker.pth from {KDTALKER_HF} (file ckpts/KDTalker.pth) into <models>/kdtalker/",
    "wav2lip": f"wav2lip.pth from {KDTALKER_HF} (file ckpts/wav2lip.pth) into <models>/kdtalker/",
    "norm": "norm.npz from the KDTalker GitHub repository (dataset_process/norm.npz) into <models>/kdtalker/ "
            "(optional: a copy ships with this package)",
    "liveportrait": (f"the LivePortrait weights: either the *.safetensors files of {LIVEPORTRAIT_KIJAI_HF} "
                     f"into <models>/liveportrait/, or liveportrait/base_models/*.pth and "
                     f"liveportrait/retargeting_models/stitching_retargeting_module.pth of {LIVEPORTRAIT_HF} "
                     "into <models>/liveportrait/base_models/ and <models>/liveportrait/retargeting_models/"),
}
DOWNLOAD_COMMAND = "or run `python -m kdtalker_core download --models-dir <models>`"

#: The norm.npz shipped with the package (dataset_process/norm.npz of the official repository).
PACKAGED_NORM = Path(__file__).resolve().parent.parent / "assets" / "norm.npz"

#: Keys norm.npz must hold (``<name>_mean`` / ``<name>_std``); c_lip/c_eye are optional.
NORM_KEYS: tuple[str, ...] = ("scale", "yaw", "pitch", "roll", "t", "exp", "kp")

LIVEPORTRAIT_BASE: tuple[str, ...] = (
    "appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator",
)
STITCHING_NAME = "stitching_retargeting_module"
STITCHING_GROUPS: tuple[str, ...] = ("retarget_shoulder", "retarget_mouth", "retarget_eye")

LIVEPORTRAIT_TITLES: dict[str, str] = {
    "appearance_feature_extractor": "LivePortrait appearance feature extractor (F)",
    "motion_extractor": "LivePortrait motion extractor (M)",
    "warping_module": "LivePortrait warping network (W)",
    "spade_generator": "LivePortrait SPADE decoder (G)",
    STITCHING_NAME: "LivePortrait stitching/retargeting MLPs (S)",
}

WAV2LIP_PREFIXES: tuple[str, ...] = ("module.audio_encoder.", "audio_encoder.")
BUNDLE_PREFIXES = {"denoiser": "denoiser.", "audio_encoder": "audio_encoder.", "norm": "norm."}
BUNDLE_FORMAT = "kdtalker-bundle-1"


class LoadedStateDict(OrderedDict):
    """A state dict (key -> tensor) that remembers where it came from (``source``: file + entry)."""

    source: str = ""


# ----------------------------------------------------------------------------------------- reading


def _hint_for(path: Path, hint: str | None) -> str:
    return f" Download {hint}." if hint else " Download the file again."


def _sniff(path: Path) -> str | None:
    """A reason the file cannot be a checkpoint at all (HTML page, git-lfs pointer, empty), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(b"version https://git-lfs"):
        return "is a git-lfs pointer file, not the weights (clone with git-lfs or download the file itself)"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "is an HTML page (a failed or login-walled download), not the weights"
    return None


def _corrupt(path: Path, detail: str, hint: str | None) -> ModelFileError:
    return ModelFileError(
        f"cannot read {path}: {detail}. The file is probably truncated or corrupt (an interrupted "
        f"download?): delete it and download it again.{_hint_for(path, hint)}"
    )


def _require_file(path: PathLike, hint: str | None) -> Path:
    p = Path(path)
    if not p.is_file():
        where = "it is a folder" if p.is_dir() else "no such file"
        raise ModelFileError(f"model file not found: {p} ({where}).{_hint_for(p, hint)}")
    reason = _sniff(p)
    if reason is not None:
        raise ModelFileError(f"{p} {reason}.{_hint_for(p, hint)}")
    return p


def read_torch_file(path: PathLike, *, hint: str | None = None) -> Any:
    """Read a ``.pth`` file (zip or legacy format) on the CPU without executing pickled code.

    First ``torch.load(weights_only=True)``; if that refuses the file (e.g. KDTalker.pth's omegaconf
    ``cfg``), the restricted unpickler of :mod:`kdtalker_core.weights.safe_unpickle` (unknown classes become
    inert placeholders; names that could run code abort the load). TorchScript archives are refused.
    ``hint`` says where to download the file; it is quoted in errors.
    """
    p = _require_file(path, hint)
    is_zip = zipfile.is_zipfile(p)
    if is_zip:
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise _corrupt(p, f"broken zip archive ({exc})", hint) from exc
        if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) or any(
                "/code/" in n for n in names):
            raise ModelFileError(f"{p} is a TorchScript archive, not a checkpoint of weights; "
                                 f"use the original .pth file.{_hint_for(p, hint)}")
    mmap = bool(is_zip)
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - refused globals, or a corrupt file (retried below)
        first_error: BaseException = exc
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False, pickle_module=safe_unpickle, mmap=mmap)
    except safe_unpickle.UnsafePickleError as exc:
        raise ModelFileError(
            f"refusing to load {p}: {exc}. This is not a genuine checkpoint (or it was tampered with); "
            f"delete it and download the official file.{_hint_for(p, hint)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001
        detail = f"{type(exc).__name__}: {_short(exc)}"
        if not isinstance(first_error, pickle.UnpicklingError):
            detail = f"{type(first_error).__name__}: {_short(first_error)}"
        raise _corrupt(p, detail, hint) from exc
    stubs = safe_unpickle.placeholder_names(obj)
    if stubs:
        log.info("%s: %d non-tensor classes read as inert placeholders: %s", p, len(stubs), sorted(stubs))
    return obj


def read_safetensors(path: PathLike, *, hint: str | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of a ``.safetensors`` file on the CPU (errors name the file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = _require_file(path, hint)
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _corrupt(p, f"invalid safetensors file ({_short(exc)})", hint) from exc


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _sample(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} in all)"


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {_sample(map(str, obj.keys()))}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _tensor_dict(obj: Any, *, file: PathLike, what: str, entry: str = "") -> LoadedStateDict:
    """Check that ``obj`` is a flat str -> Tensor mapping and return it as a LoadedStateDict."""
    where = f"{file}" + (f" [{entry}]" if entry else "")
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{where} should hold the {what} weights as a dict of tensors, found "
                             f"{_describe(obj)}; this is not the right file.")
    out = LoadedStateDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{where}: entry {key!r} is {_describe(value)}, not a tensor; this is not "
                                 f"a {what} state dict (wrong file?).")
        out[key] = value
    out.source = where
    return out


# ----------------------------------------------------------------------------------------- validation


def layout_problems(
    found: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    check_order: bool = False,
    limit: int = 8,
) -> list[str]:
    """Differences between two key -> shape layouts, most telling first ([] when they agree).

    Values are shapes (tuples, ``torch.Size``) or ``(shape, dtype)`` pairs; when both sides give a
    dtype it is compared too. ``check_order`` also requires the same key order.
    """
    problems: list[str] = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing keys {_sample(missing, limit)}")
    if unexpected:
        problems.append(f"unexpected keys {_sample(unexpected, limit)}")
    for key in expected:
        if key not in found:
            continue
        e_shape, e_dtype = _shape_dtype(expected[key])
        f_shape, f_dtype = _shape_dtype(found[key])
        if e_shape != f_shape:
            problems.append(f"shape mismatch for {key!r}: expected {e_shape}, found {f_shape}")
        elif e_dtype is not None and f_dtype is not None and e_dtype != f_dtype:
            problems.append(f"dtype mismatch for {key!r}: expected {e_dtype}, found {f_dtype}")
        if len(problems) >= limit:
            break
    if check_order and not missing and not unexpected:
        for i, (fk, ek) in enumerate(zip(found, expected)):
            if fk != ek:
                problems.append(f"key order differs at position {i}: expected {ek!r}, found {fk!r}")
                break
    return problems


def _shape_dtype(value: Any) -> tuple[tuple[int, ...], str | None]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), str(value.dtype).replace("torch.", "")
    if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], int) and (
            value[1] is None or isinstance(value[1], (str, torch.dtype))):
        dtype = value[1]
        return tuple(int(s) for s in value[0]), (None if dtype is None else str(dtype).replace("torch.", ""))
    return tuple(int(s) for s in value), None


def validate_state_dict(
    sd: Mapping[str, Any],
    expected: Mapping[str, Sequence[int]],
    *,
    file: PathLike | None = None,
    what: str = "model",
) -> None:
    """Raise :class:`ModelFileError` unless ``sd`` has exactly the keys and shapes of ``expected``.

    ``expected`` maps key -> shape, normally ``{k: tuple(v.shape) for k, v in module.state_dict().items()}``.
    When fewer than half of the expected keys are present the file is reported as the wrong model
    (with a sample of the keys expected and found); otherwise missing keys, unexpected keys and the
    first shape mismatches are named. dtypes are not checked (loading casts them).
    """
    where = str(file) if file is not None else "the checkpoint"
    exp_keys = list(expected)
    found_keys = list(sd)
    common = sum(1 for k in exp_keys if k in sd)
    if exp_keys and common < max(1, len(exp_keys) // 2):
        raise ModelFileError(
            f"{where} does not contain the {what} weights: expected keys like {_sample(exp_keys)}, "
            f"found {_sample(found_keys)}. Check that the right file is in this place."
        )
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else v for k, v in sd.items()}
    problems = layout_problems(shapes, {k: tuple(v) for k, v in expected.items()})
    if problems:
        raise ModelFileError(
            f"{where} does not match the {what}: " + "; ".join(problems)
            + ". The file may come from another version or another model: download the official file."
        )


# ----------------------------------------------------------------------------------------- registry


def _build_denoiser() -> torch.nn.Module:
    from ..networks.denoiser import MotionDenoiser

    return MotionDenoiser()


def _build_audio_encoder() -> torch.nn.Module:
    from ..networks.audio_encoder import AudioEncoder

    return AudioEncoder()


def _build_appearance() -> torch.nn.Module:
    from ..networks.appearance import AppearanceFeatureExtractor

    return AppearanceFeatureExtractor()


def _build_motion_extractor() -> torch.nn.Module:
    from ..networks.motion_extractor import MotionExtractor

    return MotionExtractor()


def _build_warping() -> torch.nn.Module:
    from ..networks.warping import WarpingNetwork

    return WarpingNetwork()


def _build_spade() -> torch.nn.Module:
    from ..networks.spade import SPADEDecoder

    return SPADEDecoder()


def _stitching_builder(group: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from ..networks.stitching import STITCHING_CONFIGS, StitchingRetargetingNetwork

        return StitchingRetargetingNetwork(**STITCHING_CONFIGS[group])

    return build


#: Network name -> constructor of the full-size official configuration (our classes).
NETWORK_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "denoiser": _build_denoiser,
    "audio_encoder": _build_audio_encoder,
    "appearance_feature_extractor": _build_appearance,
    "motion_extractor": _build_motion_extractor,
    "warping_module": _build_warping,
    "spade_generator": _build_spade,
    **{group: _stitching_builder(group) for group in STITCHING_GROUPS},
}

#: Official checkpoint file -> its parts as (key prefix in the file's layout, network name).
#: The stitching file is listed as ``<group>/module.<key>`` (one sub-dict per group).
CHECKPOINT_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "KDTalker.pth": (("", "denoiser"),),
    "wav2lip.pth": (("module.audio_encoder.", "audio_encoder"),),
    **{f"{name}.pth": (("", name),) for name in LIVEPORTRAIT_BASE},
    f"{STITCHING_NAME}.pth": tuple((f"{group}/module.", group) for group in STITCHING_GROUPS),
}


def build_network(name: str, device: str | torch.device | None = None) -> torch.nn.Module:
    """Instantiate network ``name`` of :data:`NETWORK_BUILDERS` (full size) on ``device``
    (``"meta"`` builds it without memory, for its key layout)."""
    if name not in NETWORK_BUILDERS:
        raise KeyError(f"unknown network {name!r}; known: {sorted(NETWORK_BUILDERS)}")
    if device is None:
        return NETWORK_BUILDERS[name]()
    with torch.device(device):
        return NETWORK_BUILDERS[name]()


@functools.cache
def _layout(name: str) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    module = build_network(name, "meta")
    return tuple((k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
                 for k, v in module.state_dict().items())


def expected_layout(name: str) -> OrderedDict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) of network ``name``'s state dict, in order (built on the meta device)."""
    return OrderedDict((k, (shape, dtype)) for k, shape, dtype in _layout(name))


def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of network ``name``'s state dict (what :func:`validate_state_dict` expects)."""
    return {k: shape for k, shape, _ in _layout(name)}


def official_file_layout(file_name: str) -> OrderedDict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) that our networks give for an official file, in that file's key layout.

    ``file_name`` is a key of :data:`CHECKPOINT_FILES` (``"KDTalker.pth"``, ``"wav2lip.pth"``, ...).
    """
    layout: OrderedDict[str, tuple[tuple[int, ...], str]] = OrderedDict()
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
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Build network ``name`` on ``device``, validate ``state_dict`` against it, load it strictly.

    Floating-point parameters/buffers end up in ``dtype``; the module is returned in eval mode.
    """
    module = build_network(name, device)
    validate_state_dict(state_dict, {k: tuple(v.shape) for k, v in module.state_dict().items()},
                        file=file, what=what or name)
    module.load_state_dict(dict(state_dict), strict=True)
    if dtype is not None:
        module.to(dtype)
    return module.eval()


# ----------------------------------------------------------------------------------------- KDTalker


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
        sd = _tensor_dict(ckpt[entry], file=p, what="KDTalker denoiser", entry=entry)
    elif isinstance(ckpt, Mapping) and ckpt and all(str(k).startswith("point_model.") for k in ckpt):
        sd = _tensor_dict(ckpt, file=p, what="KDTalker denoiser")
    else:
        raise ModelFileError(
            f"{p} is not a KDTalker checkpoint: expected a training checkpoint with a 'model' entry "
            f"(keys 'point_model.model.*'), found {_describe(ckpt)}. Download "
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
    full = _tensor_dict(container, file=p, what="Wav2Lip", entry=entry)
    sd = LoadedStateDict()
    for prefix in WAV2LIP_PREFIXES:
        sd.update((k[len(prefix):], v) for k, v in full.items() if k.startswith(prefix))
        if sd:
            break
    if not sd:
        raise ModelFileError(
            f"{p} has no Wav2Lip audio encoder weights (no key starts with 'module.audio_encoder.'); "
            f"found {_sample(full.keys())}. This is not wav2lip.pth: download {hint}."
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
    p = Path(path) if path is not None else PACKAGED_NORM
    p = _require_file(p, DOWNLOAD_HINTS["norm"])
    try:
        with np.load(p, allow_pickle=False) as data:
            stats = {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _corrupt(p, f"invalid .npz ({_short(exc)})", DOWNLOAD_HINTS["norm"]) from exc
    _check_norm(stats, p)
    return stats


def _check_norm(stats: Mapping[str, Any], where: PathLike) -> None:
    missing = [f"{k}_{s}" for k in NORM_KEYS for s in ("mean", "std") if f"{k}_{s}" not in stats]
    if missing:
        raise ModelFileError(f"{where} is not KDTalker's norm.npz: missing {missing}; found "
                             f"{_sample(stats.keys())}. Delete it to use the copy shipped with the package.")
    for k in NORM_KEYS:
        mean, std = np.asarray(stats[f"{k}_mean"]), np.asarray(stats[f"{k}_std"])
        if mean.shape != std.shape:
            raise ModelFileError(f"{where}: {k}_mean {mean.shape} and {k}_std {std.shape} differ in shape")


# ----------------------------------------------------------------------------------------- bundle


def _atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: PathLike,
                             metadata: Mapping[str, str] | None = None) -> Path:
    """Write a safetensors file through a temporary file in the same folder + ``os.replace``."""
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    try:
        # clone: safetensors refuses tensors that share memory (e.g. the denoiser's shared rotary freqs)
        data = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
        save_file(data, tmp, metadata=dict(metadata or {}))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    _check_norm(norm, "norm statistics")
    tensors: dict[str, torch.Tensor] = {}
    for k, v in denoiser_sd.items():
        tensors[BUNDLE_PREFIXES["denoiser"] + k] = v
    for k, v in audio_encoder_sd.items():
        tensors[BUNDLE_PREFIXES["audio_encoder"] + k] = v
    for k, v in norm.items():
        tensors[BUNDLE_PREFIXES["norm"] + k] = torch.as_tensor(np.asarray(v))
    return _atomic_save_safetensors(tensors, path, {"format": "pt", "kdtalker_format": BUNDLE_FORMAT})


def load_kdtalker_safetensors(path: PathLike) -> dict[str, Any]:
    """Read our ``kdtalker.safetensors``.

    Returns ``{'denoiser': state dict, 'audio_encoder': state dict, 'norm': {key: ndarray}}``.
    """
    p = Path(path)
    tensors = read_safetensors(p, hint="or rebuild it with `python -m kdtalker_core convert`")
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
            f"'norm.*'; found {_sample(tensors.keys())}). Rebuild it with `python -m kdtalker_core convert` "
            "from KDTalker.pth and wav2lip.pth."
        )
    parts["norm"] = {k: v.numpy() for k, v in parts["norm"].items()}
    _check_norm(parts["norm"], p)
    parts["denoiser"].source = f"{p} [denoiser.*]"
    parts["audio_encoder"].source = f"{p} [audio_encoder.*]"
    return parts


# ----------------------------------------------------------------------------------------- LivePortrait


class LivePortraitWeights(dict):
    """name -> state dict (``stitching_retargeting_module``: {group: state dict} or None);
    ``files`` maps the same names to the file each came from."""

    files: dict[str, Path | None]


def liveportrait_roots(directory: PathLike) -> list[Path]:
    """Folders under a LivePortrait models folder that may hold the files (in search order)."""
    d = Path(directory)
    return [d, d / "liveportrait", d / "LivePortrait_safetensors"]


def liveportrait_candidates(name: str, directory: PathLike) -> list[Path]:
    """Every path checked for LivePortrait file ``name`` under ``directory`` (safetensors first)."""
    sub = "retargeting_models" if name == STITCHING_NAME else "base_models"
    out: list[Path] = []
    for root in liveportrait_roots(directory):
        out += [root / f"{name}.safetensors", root / sub / f"{name}.safetensors",
                root / sub / f"{name}.pth", root / f"{name}.pth"]
    return out


def find_liveportrait_files(
    directories: PathLike | Sequence[PathLike],
) -> tuple[dict[str, Path | None], list[Path]]:
    """(name -> first existing file or None, every path checked) over one or more folders."""
    dirs = [directories] if isinstance(directories, (str, os.PathLike)) else list(directories)
    found: dict[str, Path | None] = {}
    searched: list[Path] = []
    for name in (*LIVEPORTRAIT_BASE, STITCHING_NAME):
        found[name] = None
        for d in dirs:
            for cand in liveportrait_candidates(name, d):
                searched.append(cand)
                if cand.is_file():
                    found[name] = cand
                    break
            if found[name] is not None:
                break
    return found, searched


def _strip_module(key: str) -> str:
    return key.replace("module.", "")


def _read_stitching(path: Path) -> dict[str, LoadedStateDict]:
    hint = DOWNLOAD_HINTS["liveportrait"]
    groups: dict[str, LoadedStateDict] = {}
    if path.suffix == ".safetensors":
        flat = read_safetensors(path, hint=hint)
        for key, value in flat.items():
            group = next((g for g in STITCHING_GROUPS if key.startswith(g + "_") or key.startswith(g + ".")),
                         None)
            if group is None:
                continue
            rest = key[len(group) + 1:]
            groups.setdefault(group, LoadedStateDict())[_strip_module(rest)] = value
    else:
        ckpt = read_torch_file(path, hint=hint)
        if not isinstance(ckpt, Mapping):
            raise ModelFileError(f"{path} should be a dict of the groups {list(STITCHING_GROUPS)}, found "
                                 f"{_describe(ckpt)}. Download {hint}.")
        for group in STITCHING_GROUPS:
            if group in ckpt:
                sd = _tensor_dict(ckpt[group], file=path, what="stitching/retargeting", entry=group)
                groups[group] = LoadedStateDict((_strip_module(k), v) for k, v in sd.items())
    missing = [g for g in STITCHING_GROUPS if g not in groups]
    if missing:
        raise ModelFileError(
            f"{path} is not LivePortrait's stitching_retargeting_module: groups {missing} are missing "
            f"(expected {list(STITCHING_GROUPS)}). Download {hint}."
        )
    for group, sd in groups.items():
        sd.source = f"{path} [{group}]"
    return groups


def read_liveportrait_file(name: str, path: PathLike) -> Any:
    """One LivePortrait file (.pth or .safetensors) in our layout; the stitching file -> {group: sd}."""
    p = Path(path)
    if name == STITCHING_NAME:
        return _read_stitching(p)
    hint = DOWNLOAD_HINTS["liveportrait"]
    if p.suffix == ".safetensors":
        obj: Any = read_safetensors(p, hint=hint)
    else:
        obj = read_torch_file(p, hint=hint)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    sd = _tensor_dict(obj, file=p, what=LIVEPORTRAIT_TITLES[name])
    if sd and all(k.startswith("module.") for k in sd):
        sd = LoadedStateDict((k[len("module."):], v) for k, v in sd.items())
        sd.source = str(p)
    return sd


def load_liveportrait(
    root: PathLike | Sequence[PathLike] | Mapping[str, PathLike | None],
    *,
    names: Sequence[str] = (*LIVEPORTRAIT_BASE, STITCHING_NAME),
) -> LivePortraitWeights:
    """LivePortrait state dicts from the original tree or Kijai's flat safetensors under ``root``.

    ``root``: a LivePortrait folder (or several, searched in order) or a ``{name: file}`` mapping
    such as :attr:`ModelPaths.liveportrait`.

    Returns :class:`LivePortraitWeights`: ``appearance_feature_extractor``, ``motion_extractor``,
    ``warping_module``, ``spade_generator`` (state dicts) and ``stitching_retargeting_module``
    ({group: state dict, ``module.`` removed} or None when the file is absent: it is optional).
    A missing base model raises :class:`ModelFileError` listing every path checked.
    """
    if isinstance(root, Mapping):
        found = {n: (Path(root[n]) if root.get(n) is not None else None) for n in names}
        searched = [p for p in found.values() if p is not None]
    else:
        found, searched = find_liveportrait_files(root)
    missing = [n for n in names if n != STITCHING_NAME and found.get(n) is None]
    if missing:
        if isinstance(root, Mapping):
            raise ModelFileError(f"LivePortrait files not given: {', '.join(missing)}. "
                                 f"Download {DOWNLOAD_HINTS['liveportrait']}.")
        raise _liveportrait_not_found(missing, searched)
    out = LivePortraitWeights()
    out.files = {}
    for name in names:
        path = found.get(name)
        out.files[name] = path
        out[name] = None if path is None else read_liveportrait_file(name, path)
    return out


def convert_liveportrait_to_safetensors(root: PathLike, out_dir: PathLike) -> list[Path]:
    """Write Kijai-layout safetensors (flat; stitching as ``<group>_module.<key>``) of a LivePortrait folder.

    Tensors keep their dtype. Returns the written paths (atomic writes).
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
        written.append(_atomic_save_safetensors(flat, out / f"{name}.safetensors", {"format": "pt"}))
    return written


# ----------------------------------------------------------------------------------------- finding


@dataclass
class ModelPaths:
    """Where every model file was found.

    ``kdtalker``: KDTalker.pth or our kdtalker.safetensors (a bundle with the audio encoder and norm
    statistics inside: then ``wav2lip``/``norm`` may be None). ``norm``: a user norm.npz or the
    packaged copy. ``liveportrait``: name -> file (stitching may be None); ``liveportrait_dir``: the
    folder they were found in. ``searched``: every path checked.
    """

    kdtalker: Path | None = None
    wav2lip: Path | None = None
    norm: Path | None = None
    liveportrait: dict[str, Path | None] = field(default_factory=dict)
    liveportrait_dir: Path | None = None
    searched: list[Path] = field(default_factory=list)

    @property
    def kdtalker_is_bundle(self) -> bool:
        """True when ``kdtalker`` is our single safetensors file."""
        return self.kdtalker is not None and self.kdtalker.suffix == ".safetensors"


def default_models_dir() -> Path:
    """``$KDTALKER_MODELS_DIR`` if set, else ``./models``."""
    env = os.environ.get("KDTALKER_MODELS_DIR")
    return Path(env) if env else Path("models")


def _not_found(
    what: Sequence[str],
    searched: Sequence[Path],
    sources: Sequence[str],
    stems: Iterable[str] | None = None,
) -> ModelFileError:
    """"Not found" error listing every path checked for the missing files, grouped by folder.

    ``stems``: only paths whose file name (without suffix) is one of these are listed.
    """
    keep = None if stems is None else {s.lower() for s in stems}
    by_folder: dict[str, list[str]] = {}
    for p in dict.fromkeys(searched):
        if keep is None or Path(p).stem.lower() in keep:
            by_folder.setdefault(str(Path(p).parent), []).append(Path(p).name)
    places = "\n".join(f"  {folder}{os.sep} : {', '.join(names)}" for folder, names in by_folder.items())
    hints = "; ".join(DOWNLOAD_HINTS[s] for s in dict.fromkeys(sources))
    return ModelFileError(
        f"model files not found: {', '.join(what)}. Searched (folder : file names):\n{places}\n"
        f"Download {hints} ({DOWNLOAD_COMMAND})."
    )


def _liveportrait_not_found(missing: Sequence[str], searched: Sequence[Path]) -> ModelFileError:
    """"Not found" error for LivePortrait files: the name patterns and every folder they were tried in."""
    roots: dict[str, None] = {}
    for p in searched:
        if Path(p).stem in missing:
            parent = Path(p).parent
            root = parent.parent if parent.name in ("base_models", "retargeting_models") else parent
            roots[f"  {root}{os.sep}"] = None
    return ModelFileError(
        f"LivePortrait model files not found: {', '.join(missing)}. For each NAME, looked for "
        "NAME.safetensors, base_models/NAME.safetensors, base_models/NAME.pth and NAME.pth in:\n"
        + "\n".join(roots) + f"\nDownload {DOWNLOAD_HINTS['liveportrait']} ({DOWNLOAD_COMMAND})."
    )


KDTALKER_NAMES = ("kdtalker.safetensors", "KDTalker.pth", "kdtalker.pth")


def find_model_files(
    models_dir: PathLike | None = None,
    search_dirs: Sequence[PathLike] | None = None,
    *,
    kdtalker_dirs: Sequence[PathLike] = (),
    liveportrait_dirs: Sequence[PathLike] = (),
    need_liveportrait: bool = True,
) -> ModelPaths:
    """Locate KDTalker, Wav2Lip, norm statistics and LivePortrait files.

    Models roots are ``models_dir`` (default :func:`default_models_dir`) then ``search_dirs``; each
    root is searched in ``<root>/kdtalker`` (also its ``ckpts/`` subfolder, the layout of the
    official Hugging Face repository) for ``kdtalker.safetensors`` (preferred) or ``KDTalker.pth``,
    ``wav2lip.pth`` and ``norm.npz``, and in ``<root>/liveportrait`` (then
    ``<root>/kdtalker/pretrained_weights/liveportrait``) for either LivePortrait layout
    (see :func:`liveportrait_candidates`). ``kdtalker_dirs``/``liveportrait_dirs`` are folders
    searched first (e.g. ComfyUI's registered model folders). norm.npz falls back to the packaged
    copy. Raises :class:`ModelFileError` naming every path checked when a required file is missing.
    """
    roots = [Path(models_dir) if models_dir is not None else default_models_dir()]
    roots += [Path(d) for d in (search_dirs or ())]
    kd_dirs = [Path(d) for d in kdtalker_dirs]
    for r in roots:
        kd_dirs += [r / "kdtalker", r / "kdtalker" / "ckpts"]
    lp_dirs = [Path(d) for d in liveportrait_dirs] + [r / "liveportrait" for r in roots]
    # a snapshot of the KDTalker Hugging Face repository also carries pretrained_weights/liveportrait/
    lp_dirs += [r / "kdtalker" / "pretrained_weights" / "liveportrait" for r in roots]

    paths = ModelPaths()
    searched: list[Path] = []

    def first(names: Sequence[str]) -> Path | None:
        for d in kd_dirs:
            for n in names:
                cand = d / n
                searched.append(cand)
                if cand.is_file():
                    return cand
        return None

    paths.kdtalker = first(KDTALKER_NAMES)
    paths.wav2lip = first(("wav2lip.pth",))
    paths.norm = first(("norm.npz",)) or (PACKAGED_NORM if PACKAGED_NORM.is_file() else None)
    missing, sources, stems = [], [], []
    if paths.kdtalker is None:
        missing.append("KDTalker.pth (or kdtalker.safetensors)")
        sources.append("kdtalker")
        stems += ["kdtalker"]
    if paths.wav2lip is None and not paths.kdtalker_is_bundle:
        missing.append("wav2lip.pth")
        sources.append("wav2lip")
        stems += ["wav2lip"]
    if missing:
        raise _not_found(missing, searched, sources, stems=stems)
    if paths.norm is None and not paths.kdtalker_is_bundle:
        raise _not_found(["norm.npz"], searched, ["norm"], stems=["norm"])

    found, lp_searched = find_liveportrait_files(lp_dirs)
    searched += lp_searched
    paths.liveportrait = found
    lp_missing = [n for n in LIVEPORTRAIT_BASE if found[n] is None]
    if lp_missing and need_liveportrait:
        raise _liveportrait_not_found(lp_missing, lp_searched)
    for d in lp_dirs:  # the top folder that holds the first base model
        first_file = next((f for f in found.values() if f is not None), None)
        if first_file is not None and d in first_file.parents:
            paths.liveportrait_dir = d
            break
    paths.searched = searched
    return paths


# ----------------------------------------------------------------------------------------- high level


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
        written.append(save_kdtalker_safetensors(out / "kdtalker" / "kdtalker.safetensors",
                                                 bundle.denoiser, bundle.audio_encoder, bundle.norm))
    lp_files = [f for f in paths.liveportrait.values() if f is not None]
    if lp_files and any(f.suffix == ".pth" for f in lp_files) and paths.liveportrait_dir is not None:
        written += convert_liveportrait_to_safetensors(paths.liveportrait_dir, out / "liveportrait")
    return written

"""Safe reading of checkpoint files: safetensors, ``torch.load(weights_only=True)``, restricted unpickler.

Nothing a file contains is ever executed: ``.pth`` files go through ``weights_only`` loading first
and, if that refuses them, through :mod:`kdtalker_core.weights.safe_unpickle` (unknown classes
become inert placeholders; names that could run code abort the load). Files that cannot be
weights at all (empty, HTML pages, git-lfs pointers, TorchScript) are named and explained.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError
from . import safe_unpickle
from .validation import PathLike, describe, short

log = logging.getLogger(__name__)


class LoadedStateDict(OrderedDict):
    """A state dict (key -> tensor) that remembers where it came from (``source``: file + entry)."""

    source: str = ""


def hint_text(hint: str | None) -> str:
    """The download advice appended to every message about a file."""
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


def corrupt(path: Path, detail: str, hint: str | None) -> ModelFileError:
    """The error for a file that exists but cannot be parsed (truncated, broken)."""
    return ModelFileError(
        f"cannot read {path}: {detail}. The file is probably truncated or corrupt (an interrupted "
        f"download?): delete it and download it again.{hint_text(hint)}"
    )


def require_file(path: PathLike, hint: str | None) -> Path:
    """``path`` as a Path if it is a plausible weights file, else a :class:`ModelFileError` saying why."""
    p = Path(path)
    if not p.is_file():
        where = "it is a folder" if p.is_dir() else "no such file"
        raise ModelFileError(f"model file not found: {p} ({where}).{hint_text(hint)}")
    reason = _sniff(p)
    if reason is not None:
        raise ModelFileError(f"{p} {reason}.{hint_text(hint)}")
    return p


def read_torch_file(path: PathLike, *, hint: str | None = None) -> Any:
    """Read a ``.pth`` file (zip or legacy format) on the CPU without executing pickled code.

    First ``torch.load(weights_only=True)``; if that refuses the file (e.g. KDTalker.pth's omegaconf
    ``cfg``), the restricted unpickler of :mod:`kdtalker_core.weights.safe_unpickle`. TorchScript
    archives are refused. ``hint`` says where to download the file; it is quoted in errors.
    """
    p = require_file(path, hint)
    is_zip = zipfile.is_zipfile(p)
    if is_zip:
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise corrupt(p, f"broken zip archive ({exc})", hint) from exc
        if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) or any(
                "/code/" in n for n in names):
            raise ModelFileError(f"{p} is a TorchScript archive, not a checkpoint of weights; "
                                 f"use the original .pth file.{hint_text(hint)}")
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
            f"delete it and download the official file.{hint_text(hint)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001
        detail = f"{type(exc).__name__}: {short(exc)}"
        if not isinstance(first_error, pickle.UnpicklingError):
            detail = f"{type(first_error).__name__}: {short(first_error)}"
        raise corrupt(p, detail, hint) from exc
    stubs = safe_unpickle.placeholder_names(obj)
    if stubs:
        log.info("%s: %d non-tensor classes read as inert placeholders: %s", p, len(stubs), sorted(stubs))
    return obj


def read_safetensors(path: PathLike, *, hint: str | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of a ``.safetensors`` file on the CPU (errors name the file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = require_file(path, hint)
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise corrupt(p, f"invalid safetensors file ({short(exc)})", hint) from exc


def read_weights_file(path: PathLike, *, hint: str | None = None) -> Any:
    """A ``.safetensors`` file's tensors, or a ``.pth`` file's content (both read safely)."""
    if Path(path).suffix == ".safetensors":
        return read_safetensors(path, hint=hint)
    return read_torch_file(path, hint=hint)


def tensor_dict(obj: Any, *, file: PathLike, what: str, entry: str = "") -> LoadedStateDict:
    """Check that ``obj`` is a flat str -> Tensor mapping and return it as a LoadedStateDict."""
    where = f"{file}" + (f" [{entry}]" if entry else "")
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{where} should hold the {what} weights as a dict of tensors, found "
                             f"{describe(obj)}; this is not the right file.")
    out = LoadedStateDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{where}: entry {key!r} is {describe(value)}, not a tensor; this is not "
                                 f"a {what} state dict (wrong file?).")
        out[key] = value
    out.source = where
    return out

"""The LivePortrait weights in our layouts, from the original tree or Kijai's flat safetensors.

Original tree (``KwaiVGI/LivePortrait``): ``base_models/<name>.pth`` and
``retargeting_models/stitching_retargeting_module.pth`` ({group: {``module.<key>``: tensor}}).
Kijai (``Kijai/LivePortrait_safetensors``): ``<name>.safetensors``, the stitching file flattened to
``<group>_module.<key>``. Either may be float16 or float32; tensors keep their stored dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelFileError
from .files import find_liveportrait_files, liveportrait_not_found
from .names import DOWNLOAD_HINTS, LIVEPORTRAIT_BASE, STITCHING_GROUPS, STITCHING_NAME
from .networks import NETWORKS
from .reading import LoadedStateDict, read_safetensors, read_torch_file, read_weights_file, tensor_dict
from .validation import PathLike, describe

HINT = DOWNLOAD_HINTS["liveportrait"]


class LivePortraitWeights(dict):
    """name -> state dict (``stitching_retargeting_module``: {group: state dict} or None);
    ``files`` maps the same names to the file each came from."""

    files: dict[str, Path | None]


def _strip_module(key: str) -> str:
    return key.replace("module.", "")


def _stitching_groups_flat(path: Path) -> dict[str, LoadedStateDict]:
    """Kijai's flat stitching file: ``<group>_module.<key>`` -> {group: {key: tensor}}."""
    groups: dict[str, LoadedStateDict] = {}
    for key, value in read_safetensors(path, hint=HINT).items():
        group = next((g for g in STITCHING_GROUPS if key.startswith((g + "_", g + "."))), None)
        if group is not None:
            groups.setdefault(group, LoadedStateDict())[_strip_module(key[len(group) + 1:])] = value
    return groups


def _stitching_groups_nested(path: Path) -> dict[str, LoadedStateDict]:
    """The official stitching file: {group: {``module.<key>``: tensor}} -> {group: {key: tensor}}."""
    ckpt = read_torch_file(path, hint=HINT)
    if not isinstance(ckpt, Mapping):
        raise ModelFileError(f"{path} should be a dict of the groups {list(STITCHING_GROUPS)}, found "
                             f"{describe(ckpt)}. Download {HINT}.")
    groups: dict[str, LoadedStateDict] = {}
    for group in STITCHING_GROUPS:
        if group in ckpt:
            sd = tensor_dict(ckpt[group], file=path, what="stitching/retargeting", entry=group)
            groups[group] = LoadedStateDict((_strip_module(k), v) for k, v in sd.items())
    return groups


def _read_stitching(path: Path) -> dict[str, LoadedStateDict]:
    groups = _stitching_groups_flat(path) if path.suffix == ".safetensors" else _stitching_groups_nested(path)
    missing = [g for g in STITCHING_GROUPS if g not in groups]
    if missing:
        raise ModelFileError(
            f"{path} is not LivePortrait's stitching_retargeting_module: groups {missing} are missing "
            f"(expected {list(STITCHING_GROUPS)}). Download {HINT}."
        )
    for group, sd in groups.items():
        sd.source = f"{path} [{group}]"
    return groups


def read_liveportrait_file(name: str, path: PathLike) -> Any:
    """One LivePortrait file (.pth or .safetensors) in our layout; the stitching file -> {group: sd}."""
    p = Path(path)
    if name == STITCHING_NAME:
        return _read_stitching(p)
    obj = read_weights_file(p, hint=HINT)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    sd = tensor_dict(obj, file=p, what=NETWORKS[name].description)
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
            raise ModelFileError(f"LivePortrait files not given: {', '.join(missing)}. Download {HINT}.")
        raise liveportrait_not_found(missing, searched)
    out = LivePortraitWeights()
    out.files = {}
    for name in names:
        path = found.get(name)
        out.files[name] = path
        out[name] = None if path is None else read_liveportrait_file(name, path)
    return out

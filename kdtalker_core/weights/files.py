"""Finding the model files: which folders are searched, in which order, and the "not found" message.

Models roots (``--models-dir``, ComfyUI's models folder, ...) hold ``kdtalker/`` and
``liveportrait/``; callers such as the ComfyUI nodes may also give explicit folders (every folder
registered under a name) and explicit files (a picker's choice). Whatever is missing is reported by
one message that lists every path checked, grouped by folder, and where to download the files.
Nothing here reads a file's content.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFileError
from ..model_locations import default_models_dir
from .names import (
    DOWNLOAD_COMMAND,
    DOWNLOAD_HINTS,
    KDTALKER_NAMES,
    LIVEPORTRAIT_BASE,
    LIVEPORTRAIT_SUBFOLDERS,
    NORM_NAME,
    PACKAGED_NORM,
    STITCHING_NAME,
    WAV2LIP_NAME,
)
from .validation import PathLike

__all__ = [
    "ModelPaths", "default_models_dir", "liveportrait_roots", "liveportrait_candidates",
    "find_liveportrait_files", "complete_liveportrait_folders", "liveportrait_not_found", "find_model_files",
]


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


# ----------------------------------------------------------------------------------------- LivePortrait


def liveportrait_roots(directory: PathLike) -> list[Path]:
    """Folders under a LivePortrait models folder that may hold the files (in search order)."""
    d = Path(directory)
    return [d, d / "liveportrait", d / "LivePortrait_safetensors"]


def liveportrait_candidates(name: str, directory: PathLike) -> list[Path]:
    """Every path checked for LivePortrait file ``name`` under ``directory`` (safetensors first)."""
    sub = LIVEPORTRAIT_SUBFOLDERS[1] if name == STITCHING_NAME else LIVEPORTRAIT_SUBFOLDERS[0]
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
        for cand in (c for d in dirs for c in liveportrait_candidates(name, d)):
            searched.append(cand)
            if cand.is_file():
                found[name] = cand
                break
    return found, searched


def complete_liveportrait_folders(roots: Iterable[PathLike]) -> list[Path]:
    """Every folder holding all LivePortrait base models: each root and its direct subfolders
    (e.g. Kijai's ``LivePortrait_safetensors``), in order; folders that resolve to the same files
    are listed once."""
    out: list[Path] = []
    seen: set[tuple[str, ...]] = set()
    for root in map(Path, roots):
        subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for d in [root, *subdirs]:
            if d.name in LIVEPORTRAIT_SUBFOLDERS:
                continue
            found, _ = find_liveportrait_files([d])
            if any(found[n] is None for n in LIVEPORTRAIT_BASE):
                continue
            key = tuple(sorted(str(p) for p in found.values() if p is not None))
            if key not in seen:
                seen.add(key)
                out.append(d)
    return out


def liveportrait_not_found(missing: Sequence[str], searched: Sequence[Path]) -> ModelFileError:
    """"Not found" error for LivePortrait files: the name patterns and every folder they were tried in."""
    roots: dict[str, None] = {}
    for p in searched:
        if Path(p).stem in missing:
            parent = Path(p).parent
            root = parent.parent if parent.name in LIVEPORTRAIT_SUBFOLDERS else parent
            roots[f"  {root}{os.sep}"] = None
    return ModelFileError(
        f"LivePortrait model files not found: {', '.join(missing)}. For each NAME, looked for "
        "NAME.safetensors, base_models/NAME.safetensors, base_models/NAME.pth and NAME.pth in:\n"
        + "\n".join(roots) + f"\nDownload {DOWNLOAD_HINTS['liveportrait']} ({DOWNLOAD_COMMAND})."
    )


# ----------------------------------------------------------------------------------------- KDTalker


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


class _KDTalkerSearch:
    """First-match search of file names over the kdtalker folders (each also with its ``ckpts/``
    subfolder, the layout of the official Hugging Face repository), recording every path checked."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = list(dict.fromkeys(folders))
        self.searched: list[Path] = []

    def first(self, candidates: Iterable[Path]) -> Path | None:
        for cand in candidates:
            self.searched.append(cand)
            if cand.is_file():
                return cand
        return None

    def by_name(self, names: Sequence[str]) -> Path | None:
        """The first of ``names`` in the first folder that has one (folders in order, then names)."""
        return self.first(d / n for folder in self.folders for d in (folder, folder / "ckpts") for n in names)

    def chosen(self, choice: PathLike) -> Path | None:
        """An explicit file: an absolute path as is, a relative one (a picker's entry) in each folder."""
        p = Path(choice)
        return self.first([p] if p.is_absolute() else [folder / p for folder in self.folders])


def _search_folders(
    models_dir: PathLike | None,
    search_dirs: Sequence[PathLike] | None,
    kdtalker_dirs: Sequence[PathLike],
    liveportrait_dirs: Sequence[PathLike],
) -> tuple[list[Path], list[Path]]:
    """(kdtalker folders, liveportrait folders) in search order, explicit folders first, no repeats."""
    roots = [Path(models_dir) if models_dir is not None else default_models_dir()]
    roots += [Path(d) for d in (search_dirs or ())]
    kd_dirs = [Path(d) for d in kdtalker_dirs] + [r / "kdtalker" for r in roots]
    lp_dirs = [Path(d) for d in liveportrait_dirs] + [r / "liveportrait" for r in roots]
    # a snapshot of the KDTalker Hugging Face repository also carries pretrained_weights/liveportrait/
    lp_dirs += [r / "kdtalker" / "pretrained_weights" / "liveportrait" for r in roots]
    return list(dict.fromkeys(kd_dirs)), list(dict.fromkeys(lp_dirs))


def find_model_files(
    models_dir: PathLike | None = None,
    search_dirs: Sequence[PathLike] | None = None,
    *,
    kdtalker_dirs: Sequence[PathLike] = (),
    liveportrait_dirs: Sequence[PathLike] = (),
    kdtalker_file: PathLike | None = None,
    wav2lip_file: PathLike | None = None,
    liveportrait_dir: PathLike | None = None,
    need_liveportrait: bool = True,
) -> ModelPaths:
    """Locate KDTalker, Wav2Lip, norm statistics and LivePortrait files.

    Models roots are ``models_dir`` (default :func:`default_models_dir`) then ``search_dirs``; each
    root is searched in ``<root>/kdtalker`` (also its ``ckpts/`` subfolder) for
    ``kdtalker.safetensors`` (preferred) or ``KDTalker.pth``, ``wav2lip.pth`` and ``norm.npz``, and
    in ``<root>/liveportrait`` (then ``<root>/kdtalker/pretrained_weights/liveportrait``) for either
    LivePortrait layout (see :func:`liveportrait_candidates`). ``kdtalker_dirs``/``liveportrait_dirs``
    are folders searched first (e.g. ComfyUI's registered model folders).

    Explicit choices replace the search for one item: ``kdtalker_file``/``wav2lip_file`` (absolute,
    or relative to a kdtalker folder as ComfyUI's pickers list them) and ``liveportrait_dir`` (the
    only folder searched for LivePortrait). norm.npz falls back to the packaged copy. Raises
    :class:`ModelFileError` naming every path checked when a required file is missing.
    """
    kd_dirs, lp_dirs = _search_folders(models_dir, search_dirs, kdtalker_dirs, liveportrait_dirs)
    if liveportrait_dir is not None:
        lp_dirs = [Path(liveportrait_dir)]
    kd = _KDTalkerSearch(kd_dirs)
    paths = ModelPaths()
    paths.kdtalker = kd.by_name(KDTALKER_NAMES) if kdtalker_file is None else kd.chosen(kdtalker_file)
    paths.wav2lip = kd.by_name((WAV2LIP_NAME,)) if wav2lip_file is None else kd.chosen(wav2lip_file)
    paths.norm = kd.by_name((NORM_NAME,)) or (PACKAGED_NORM if PACKAGED_NORM.is_file() else None)
    missing, sources, stems = [], [], []
    if paths.kdtalker is None:
        missing.append("KDTalker.pth (or kdtalker.safetensors)" if kdtalker_file is None else str(kdtalker_file))
        sources.append("kdtalker")
        stems += ["kdtalker"] if kdtalker_file is None else [Path(kdtalker_file).stem]
    if paths.wav2lip is None and (wav2lip_file is not None or not paths.kdtalker_is_bundle):
        missing.append(WAV2LIP_NAME if wav2lip_file is None else str(wav2lip_file))
        sources.append("wav2lip")
        stems += [Path(wav2lip_file or WAV2LIP_NAME).stem]
    if missing:
        raise _not_found(missing, kd.searched, sources, stems=stems)
    if paths.norm is None and not paths.kdtalker_is_bundle:
        raise _not_found([NORM_NAME], kd.searched, ["norm"], stems=["norm"])

    found, lp_searched = find_liveportrait_files(lp_dirs)
    paths.liveportrait = found
    lp_missing = [n for n in LIVEPORTRAIT_BASE if found[n] is None]
    if lp_missing and need_liveportrait:
        raise liveportrait_not_found(lp_missing, lp_searched)
    first_file = next((f for f in found.values() if f is not None), None)
    if first_file is not None:  # the search folder that holds the first file
        paths.liveportrait_dir = next((d for d in lp_dirs if d in first_file.parents), first_file.parent)
    paths.searched = kd.searched + lp_searched
    return paths

"""Explicit, opt-in download of the official weights (never called implicitly).

Sources: the official KDTalker release on Hugging Face (``ChaolongYang/KDTalker``: KDTalker.pth,
wav2lip.pth) and Kijai's LivePortrait safetensors (``Kijai/LivePortrait_safetensors``). Files land
in ``<models_dir>/kdtalker`` and ``<models_dir>/liveportrait``; huggingface_hub resumes partial
downloads, and every file is checked against the size and sha256 the hub publishes.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import InputError, KDTalkerError
from .model_locations import KDTALKER_REPO, LIVEPORTRAIT_KIJAI_REPO

KDTALKER_FILES = ("KDTalker.pth", "wav2lip.pth")
LIVEPORTRAIT_FILES = (
    "appearance_feature_extractor.safetensors",
    "motion_extractor.safetensors",
    "warping_module.safetensors",
    "spade_generator.safetensors",
    "stitching_retargeting_module.safetensors",
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(repo: str, names: Iterable[str], dest: Path) -> list[Path]:
    """Download the repo files whose base name is in ``names`` into ``dest`` (flat), verified."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError as exc:
        raise KDTalkerError("download needs huggingface_hub: pip install huggingface_hub "
                            "(or place the files by hand, see README 'Models')") from exc
    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except Exception as exc:
        raise KDTalkerError(f"cannot reach Hugging Face for {repo} ({type(exc).__name__}); you seem to be "
                            f"offline: download the files elsewhere and copy them into {dest}") from exc
    wanted = set(names)
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for sib in info.siblings or []:
        base = Path(sib.rfilename).name
        if base not in wanted:
            continue
        target = dest / base
        sha = getattr(getattr(sib, "lfs", None), "sha256", None)
        if target.is_file() and (sib.size is None or target.stat().st_size == sib.size) and (
                sha is None or _sha256(target) == sha):
            out.append(target)
            wanted.discard(base)
            continue
        cached = Path(hf_hub_download(repo, sib.rfilename))
        if sib.size is not None and cached.stat().st_size != sib.size:
            raise KDTalkerError(f"{repo}/{sib.rfilename}: size {cached.stat().st_size} != {sib.size}; "
                                "run download again")
        if sha is not None and _sha256(cached) != sha:
            raise KDTalkerError(f"{repo}/{sib.rfilename}: sha256 mismatch; run download again")
        tmp = target.with_suffix(target.suffix + ".part")
        shutil.copyfile(cached, tmp)
        tmp.replace(target)
        out.append(target)
        wanted.discard(base)
    if wanted:
        raise KDTalkerError(f"{repo} does not list {sorted(wanted)}; download them by hand (README 'Models')")
    return out


def download(models_dir: str | Path, what: str = "all") -> list[Path]:
    """Download the weights into ``models_dir`` (``what``: all, kdtalker, liveportrait)."""
    if what not in ("all", "kdtalker", "liveportrait"):
        raise InputError(f"unknown download set {what!r}: use 'all', 'kdtalker' or 'liveportrait'")
    root = Path(models_dir)
    got: list[Path] = []
    if what in ("all", "kdtalker"):
        got += _fetch(KDTALKER_REPO, KDTALKER_FILES, root / "kdtalker")
    if what in ("all", "liveportrait"):
        got += _fetch(LIVEPORTRAIT_KIJAI_REPO, LIVEPORTRAIT_FILES, root / "liveportrait")
    return got

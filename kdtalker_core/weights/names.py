"""The names of the model files users bring, what they hold, and where to download them.

Only names and strings live here (no search, no reading), so every other module of the package
and the node layer quote the same file names and the same download advice.
"""

from __future__ import annotations

from pathlib import Path

from ..model_locations import (
    KDTALKER_REPO,
    LIVEPORTRAIT_KIJAI_REPO,
    LIVEPORTRAIT_REPO,
    hub_url,
)

KDTALKER_HF = hub_url(KDTALKER_REPO)
LIVEPORTRAIT_HF = hub_url(LIVEPORTRAIT_REPO)
LIVEPORTRAIT_KIJAI_HF = hub_url(LIVEPORTRAIT_KIJAI_REPO)

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

#: KDTalker checkpoint names in order of preference (our bundle first).
KDTALKER_NAMES: tuple[str, ...] = ("kdtalker.safetensors", "KDTalker.pth", "kdtalker.pth")
WAV2LIP_NAME = "wav2lip.pth"
NORM_NAME = "norm.npz"
BUNDLE_NAME = "kdtalker.safetensors"

#: The norm.npz shipped with the package (dataset_process/norm.npz of the official repository).
PACKAGED_NORM = Path(__file__).resolve().parent.parent / "assets" / "norm.npz"

#: Keys norm.npz must hold (``<name>_mean`` / ``<name>_std``); c_lip/c_eye are optional.
NORM_KEYS: tuple[str, ...] = ("scale", "yaw", "pitch", "roll", "t", "exp", "kp")

#: The four LivePortrait networks every render needs (file stem = network name).
LIVEPORTRAIT_BASE: tuple[str, ...] = (
    "appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator",
)
#: The optional LivePortrait file with one small MLP per group.
STITCHING_NAME = "stitching_retargeting_module"
STITCHING_GROUPS: tuple[str, ...] = ("retarget_shoulder", "retarget_mouth", "retarget_eye")
#: Subfolders of the original LivePortrait tree.
LIVEPORTRAIT_SUBFOLDERS: tuple[str, ...] = ("base_models", "retargeting_models")

#: Key prefixes of the audio encoder inside wav2lip.pth (DDP-wrapped first).
WAV2LIP_PREFIXES: tuple[str, ...] = ("module.audio_encoder.", "audio_encoder.")
#: Key prefixes of the parts of our kdtalker.safetensors, and its format tag.
BUNDLE_PREFIXES = {"denoiser": "denoiser.", "audio_encoder": "audio_encoder.", "norm": "norm."}
BUNDLE_FORMAT = "kdtalker-bundle-1"

"""Where model files live and come from, without importing torch (the CLI and ``download`` use it).

``default_models_dir`` is the folder the CLI searches when ``--models-dir`` is not given; the
repository ids are the Hugging Face sources quoted in "not found" messages and used by ``download``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The official KDTalker release (ckpts/KDTalker.pth, ckpts/wav2lip.pth).
KDTALKER_REPO = "ChaolongYang/KDTalker"
#: The official LivePortrait release (original tree of .pth files).
LIVEPORTRAIT_REPO = "KwaiVGI/LivePortrait"
#: Kijai's flat float16 safetensors of LivePortrait (shared with ComfyUI-LivePortraitKJ).
LIVEPORTRAIT_KIJAI_REPO = "Kijai/LivePortrait_safetensors"

MODELS_DIR_ENV = "KDTALKER_MODELS_DIR"


def hub_url(repo: str) -> str:
    """The web address of a Hugging Face model repository."""
    return f"https://huggingface.co/{repo}"


def default_models_dir() -> Path:
    """``$KDTALKER_MODELS_DIR`` if set (and not empty), else ``./models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")

"""Find, safely read, validate and convert the KDTalker + LivePortrait checkpoints users bring.

One job per module; this package re-exports the public names:

* :mod:`.names`: file names, what they hold, download hints (strings only).
* :mod:`.files`: finding the files (:func:`find_model_files`, :class:`ModelPaths`) and the
  "not found" message listing every path checked.
* :mod:`.reading` (+ :mod:`.safe_unpickle`): reading ``.pth`` / ``.safetensors`` without ever
  executing pickled code; files that cannot be weights are explained.
* :mod:`.validation`: key / shape checks with errors naming the file.
* :mod:`.networks`: the table of networks (class, configuration, official file layout) as data;
  :func:`load_network` and :func:`official_file_layout` read it.
* :mod:`.kdtalker` / :mod:`.liveportrait`: each official file (and ours) in our module layouts.
* :mod:`.convert`: writing our single-file safetensors.

Every failure raises :class:`~kdtalker_core.errors.ModelFileError` saying what to do.
"""

from __future__ import annotations

from . import safe_unpickle
from .convert import (
    atomic_save_safetensors,
    convert_all,
    convert_liveportrait_to_safetensors,
    save_kdtalker_safetensors,
)
from .files import (
    ModelPaths,
    complete_liveportrait_folders,
    default_models_dir,
    find_liveportrait_files,
    find_model_files,
    liveportrait_candidates,
    liveportrait_not_found,
    liveportrait_roots,
)
from .kdtalker import (
    KDTalkerBundle,
    check_norm,
    load_kdtalker_bundle,
    load_kdtalker_checkpoint,
    load_kdtalker_safetensors,
    load_norm_stats,
    load_wav2lip_audio_encoder,
)
from .liveportrait import LivePortraitWeights, load_liveportrait, read_liveportrait_file
from .names import (
    BUNDLE_FORMAT,
    BUNDLE_NAME,
    BUNDLE_PREFIXES,
    DOWNLOAD_COMMAND,
    DOWNLOAD_HINTS,
    KDTALKER_HF,
    KDTALKER_NAMES,
    LIVEPORTRAIT_BASE,
    LIVEPORTRAIT_HF,
    LIVEPORTRAIT_KIJAI_HF,
    NORM_KEYS,
    NORM_NAME,
    PACKAGED_NORM,
    STITCHING_GROUPS,
    STITCHING_NAME,
    WAV2LIP_NAME,
    WAV2LIP_PREFIXES,
)
from .networks import (
    CHECKPOINT_FILES,
    NETWORKS,
    NetworkSpec,
    build_network,
    expected_layout,
    expected_shapes,
    load_network,
    official_file_layout,
)
from .reading import LoadedStateDict, read_safetensors, read_torch_file, read_weights_file
from .validation import layout_problems, validate_state_dict

__all__ = [
    "BUNDLE_FORMAT", "BUNDLE_NAME", "BUNDLE_PREFIXES", "CHECKPOINT_FILES", "DOWNLOAD_COMMAND", "DOWNLOAD_HINTS",
    "KDTALKER_HF", "KDTALKER_NAMES", "LIVEPORTRAIT_BASE", "LIVEPORTRAIT_HF", "LIVEPORTRAIT_KIJAI_HF", "NETWORKS",
    "NORM_KEYS", "NORM_NAME", "PACKAGED_NORM", "STITCHING_GROUPS", "STITCHING_NAME", "WAV2LIP_NAME",
    "WAV2LIP_PREFIXES", "KDTalkerBundle", "LivePortraitWeights", "LoadedStateDict", "ModelPaths", "NetworkSpec",
    "atomic_save_safetensors", "build_network", "check_norm", "complete_liveportrait_folders", "convert_all",
    "convert_liveportrait_to_safetensors", "default_models_dir", "expected_layout", "expected_shapes",
    "find_liveportrait_files", "find_model_files", "layout_problems", "liveportrait_candidates",
    "liveportrait_not_found", "liveportrait_roots", "load_kdtalker_bundle", "load_kdtalker_checkpoint",
    "load_kdtalker_safetensors", "load_liveportrait", "load_network", "load_norm_stats",
    "load_wav2lip_audio_encoder", "official_file_layout", "read_liveportrait_file", "read_safetensors",
    "read_torch_file", "read_weights_file", "safe_unpickle", "save_kdtalker_safetensors", "validate_state_dict",
]

"""Load KDTalker Models: model folders registered with ComfyUI, file pickers, device handling.

Folders: ``models/kdtalker`` (KDTalker.pth or our kdtalker.safetensors, wav2lip.pth, norm.npz) and
``models/liveportrait`` (shared with ComfyUI-LivePortraitKJ / AdvancedLivePortrait), registered
through ``folder_paths`` so ``extra_model_paths.yaml`` entries named ``kdtalker`` and
``liveportrait`` are searched too. Finding, validating and loading the files is kdtalker_core's job
(:mod:`kdtalker_core.weights`); its errors name the expected files, the folders searched and
where to download them, and are passed through unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import folder_paths
import torch
from comfy_api.latest import io

from ..kdtalker_core import attention, errors, pipeline, weights
from . import types as t

KDTALKER_FOLDER = "kdtalker"
LIVEPORTRAIT_FOLDER = "liveportrait"
KDTALKER_EXTENSIONS = {".pth", ".pt", ".safetensors", ".npz"}
AUTO = "auto"

PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
ATTENTIONS = ["auto", "xformers", "sdpa", "math"]
DEVICES = ["auto", "cpu", "cuda"]


# ----------------------------------------------------------------------------------------- folders


def register_model_folders() -> None:
    """Register ``models/kdtalker`` and ``models/liveportrait`` with ComfyUI (idempotent).

    Folders that ``extra_model_paths.yaml`` already added stay first in the search order; the file
    extensions we read are added to whatever ComfyUI created for the name.
    """
    for name, exts in ((KDTALKER_FOLDER, KDTALKER_EXTENSIONS),
                       (LIVEPORTRAIT_FOLDER, set(folder_paths.supported_pt_extensions))):
        default = os.path.join(folder_paths.models_dir, name)
        folder_paths.add_model_folder_path(name, default)
        paths, known = folder_paths.folder_names_and_paths[name]
        if known:  # an empty set means "every file" in ComfyUI; keep it that way
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | exts)
        else:
            folder_paths.folder_names_and_paths[name] = (paths, set(exts))


def _kdtalker_dirs() -> list[Path]:
    register_model_folders()
    return [Path(p) for p in folder_paths.get_folder_paths(KDTALKER_FOLDER)]


def _liveportrait_dirs() -> list[Path]:
    register_model_folders()
    return [Path(p) for p in folder_paths.get_folder_paths(LIVEPORTRAIT_FOLDER)]


def kdtalker_choices() -> list[str]:
    """"auto" + the denoiser checkpoints in the kdtalker folders (not wav2lip, not norm files)."""
    register_model_folders()
    files = [f for f in folder_paths.get_filename_list(KDTALKER_FOLDER)
             if Path(f).suffix.lower() in {".pth", ".pt", ".safetensors"} and "wav2lip" not in f.lower()]
    return [AUTO, *files]


def wav2lip_choices() -> list[str]:
    """"auto" + the files in the kdtalker folders whose name mentions wav2lip."""
    register_model_folders()
    files = [f for f in folder_paths.get_filename_list(KDTALKER_FOLDER)
             if "wav2lip" in Path(f).name.lower() and Path(f).suffix.lower() in {".pth", ".pt"}]
    return [AUTO, *files]


def _folder_label(path: Path) -> str:
    models = Path(folder_paths.models_dir)
    try:
        return path.relative_to(models).as_posix()
    except ValueError:
        return str(path)


def liveportrait_folders() -> dict[str, Path]:
    """Label -> folder for every folder holding a complete set of LivePortrait base models.

    Looks at each registered liveportrait folder and its direct subfolders (e.g. Kijai's
    ``LivePortrait_safetensors``); folders that resolve to the same files are listed once.
    """
    out: dict[str, Path] = {}
    seen: set[tuple] = set()
    for root in _liveportrait_dirs():
        subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for d in [root, *subdirs]:
            if d.name in ("base_models", "retargeting_models"):
                continue
            found, _ = weights.find_liveportrait_files([d])
            if any(found[n] is None for n in weights.LIVEPORTRAIT_BASE):
                continue
            key = tuple(sorted(str(p) for p in found.values() if p is not None))
            if key not in seen:
                seen.add(key)
                out[_folder_label(d)] = d
    return out


def liveportrait_choices() -> list[str]:
    return [AUTO, *liveportrait_folders()]


# ----------------------------------------------------------------------------------------- resolving


def _find_in_kdtalker_folders(names: tuple[str, ...]) -> Path | None:
    for name in names:
        for rel in (name, f"ckpts/{name}"):
            full = folder_paths.get_full_path(KDTALKER_FOLDER, rel)
            if full is not None:
                return Path(full)
    return None


def _picked(choice: str, what: str) -> Path:
    full = folder_paths.get_full_path(KDTALKER_FOLDER, choice)
    if full is None:
        raise errors.ModelFileError(
            f"{what} {choice!r} is no longer in {', '.join(map(str, _kdtalker_dirs()))}: pick another file "
            "in Load KDTalker Models (or 'auto') and refresh the page.")
    return Path(full)


def resolve_model_paths(kdtalker: str = AUTO, wav2lip: str = AUTO, liveportrait: str = AUTO
                        ) -> weights.ModelPaths:
    """The picker choices -> :class:`kdtalker_core.weights.ModelPaths`.

    "auto" finds the files by their official names in every registered folder. Anything missing
    is reported by :func:`kdtalker_core.weights.find_model_files` (expected files, every path
    searched, download sources).
    """
    kd_dirs, lp_dirs = _kdtalker_dirs(), _liveportrait_dirs()

    def report_missing(**kw) -> weights.ModelPaths:
        # find_model_files raises the complete "not found" message; it only returns if the files
        # appeared in the meantime.
        return weights.find_model_files(folder_paths.models_dir, kdtalker_dirs=kd_dirs,
                                            liveportrait_dirs=lp_dirs, **kw)

    paths = weights.ModelPaths()
    paths.kdtalker = (_find_in_kdtalker_folders(weights.KDTALKER_NAMES) if kdtalker == AUTO
                      else _picked(kdtalker, "KDTalker checkpoint"))
    paths.wav2lip = (_find_in_kdtalker_folders(("wav2lip.pth",)) if wav2lip == AUTO
                     else _picked(wav2lip, "Wav2Lip checkpoint"))
    if paths.kdtalker is None or (paths.wav2lip is None and not paths.kdtalker_is_bundle):
        found = report_missing(need_liveportrait=False)
        paths.kdtalker = paths.kdtalker or found.kdtalker
        paths.wav2lip = paths.wav2lip or found.wav2lip
    paths.norm = _find_in_kdtalker_folders(("norm.npz",)) or weights.PACKAGED_NORM

    if liveportrait == AUTO:
        search = lp_dirs
    else:
        folders = liveportrait_folders()
        if liveportrait not in folders:
            raise errors.ModelFileError(
                f"LivePortrait folder {liveportrait!r} no longer holds the LivePortrait models: pick another "
                f"folder (or 'auto') in Load KDTalker Models. Folders searched: "
                f"{', '.join(map(str, lp_dirs))}. Download {weights.DOWNLOAD_HINTS['liveportrait']}.")
        search = [folders[liveportrait]]
    found, searched = weights.find_liveportrait_files(search)
    if any(found[n] is None for n in weights.LIVEPORTRAIT_BASE):
        weights.load_liveportrait(search)  # raises the "not found" message with every path checked
    paths.liveportrait = found
    first = next(p for p in found.values() if p is not None)
    paths.liveportrait_dir = next((d for d in search if d in first.parents), first.parent)
    paths.searched = searched
    return paths


# ----------------------------------------------------------------------------------------- devices


@dataclass
class ModelHandle:
    """What travels on a KDTALKER_MODELS socket: the networks plus where they run and rest.

    Nodes call :meth:`acquire` before computing (moves the networks to the compute device when
    they were offloaded) and the last stage calls :meth:`release` (moves them to ComfyUI's offload
    device, normally the CPU, and frees cached GPU memory).
    """

    models: pipeline.KDTalkerModels
    compute_device: torch.device
    offload_device: torch.device
    paths: weights.ModelPaths | None = None

    def acquire(self) -> pipeline.KDTalkerModels:
        # The attention backend is process-wide: re-apply this handle's choice (another Load Models
        # node may have set a different one since).
        attention.set_attention_backend(self.models.attention_backend)
        if self.models.device != self.compute_device:
            with outside_inference_mode():
                self.models.to(self.compute_device)
        return self.models

    def release(self) -> None:
        if self.offload_device != self.compute_device and self.models.device != self.offload_device:
            with outside_inference_mode():
                self.models.to(self.offload_device)
        mm.soft_empty_cache()


def outside_inference_mode() -> torch.inference_mode:
    """Context for creating or moving network parameters inside a node.

    ComfyUI executes every node under ``torch.inference_mode()``; parameters made there would be
    inference tensors, which track no version counter (kdtalker_core's cached tables read it) and
    cannot be updated in place later. Loading and device moves therefore leave inference mode.
    """
    return torch.inference_mode(False)


def compute_device(choice: str) -> torch.device:
    """"auto" follows ComfyUI (``--cpu``, the chosen GPU, ...); "cpu"/"cuda" force one."""
    if choice == AUTO:
        return torch.device(mm.get_torch_device())
    if choice == "cuda" and not torch.cuda.is_available():
        raise errors.InputError("device 'cuda' was chosen but PyTorch sees no CUDA GPU: "
                                "choose 'auto' or 'cpu'")
    return torch.device(choice)


def attention_backend(choice: str, device: torch.device) -> str:
    """"auto" respects ComfyUI's xformers switch (``--disable-xformers``) on CUDA."""
    if choice == AUTO and device.type == "cuda" and not mm.xformers_enabled():
        return "sdpa"
    return choice


class KDTalkerLoadModels(io.ComfyNode):
    """Load every KDTalker and LivePortrait network once; connect the output to the other nodes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KDTalkerLoadModels",
            display_name="Load KDTalker Models",
            category="KDTalker/loaders",
            description="Loads KDTalker (audio-to-motion diffusion), the Wav2Lip audio encoder and the "
                        "LivePortrait renderer from models/kdtalker and models/liveportrait. KDTalker "
                        "weights are CC BY-NC 4.0 (non-commercial).",
            inputs=[
                io.Combo.Input("kdtalker_checkpoint", options=kdtalker_choices(), default=AUTO,
                               tooltip="KDTalker.pth (official) or kdtalker.safetensors (converted) in "
                                       "models/kdtalker. auto: the first one found."),
                io.Combo.Input("wav2lip_checkpoint", options=wav2lip_choices(), default=AUTO,
                               tooltip="wav2lip.pth in models/kdtalker (only its audio encoder is used; not "
                                       "needed with kdtalker.safetensors). auto: found by name."),
                io.Combo.Input("liveportrait", options=liveportrait_choices(), default=AUTO,
                               tooltip="Folder with the LivePortrait models: the official tree "
                                       "(base_models/*.pth) or Kijai's LivePortrait_safetensors. auto: "
                                       "search models/liveportrait."),
                io.Combo.Input("precision", options=PRECISIONS, default=AUTO,
                               tooltip="Compute precision of rendering and sampling. auto: bf16 on GPUs "
                                       "that support it, else fp32. fp32 reproduces the official numbers."),
                io.Combo.Input("attention", options=ATTENTIONS, default=AUTO,
                               tooltip="Attention implementation of the motion model. auto picks the fastest "
                                       "available (xformers when ComfyUI enables it, else PyTorch SDPA)."),
                io.Combo.Input("device", options=DEVICES, default=AUTO,
                               tooltip="auto: ComfyUI's device (honours --cpu and the selected GPU)."),
                io.Boolean.Input("use_ema", default=False,
                                 tooltip="Use the EMA copy of the KDTalker weights stored in KDTalker.pth "
                                         "(the official inference uses the regular weights)."),
            ],
            outputs=[t.Models.Output("models", tooltip="Connect to every other KDTalker node.")],
        )

    @classmethod
    def execute(cls, kdtalker_checkpoint: str, wav2lip_checkpoint: str, liveportrait: str, precision: str,
                attention: str, device: str, use_ema: bool) -> io.NodeOutput:
        paths = resolve_model_paths(kdtalker_checkpoint, wav2lip_checkpoint, liveportrait)
        dev = compute_device(device)
        with outside_inference_mode():
            models = pipeline.load_models(paths=paths, device=dev, precision=precision,
                                          attention=attention_backend(attention, dev), use_ema=use_ema)
        offload = torch.device(mm.unet_offload_device()) if dev.type != "cpu" else dev
        return io.NodeOutput(ModelHandle(models, dev, offload, paths))

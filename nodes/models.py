"""Load KDTalker Models: model folders registered with ComfyUI, file pickers, device handling.

Folders: ``models/kdtalker`` (KDTalker.pth or our kdtalker.safetensors, wav2lip.pth, norm.npz) and
``models/liveportrait`` (shared with ComfyUI-LivePortraitKJ / AdvancedLivePortrait), registered
through ``folder_paths`` so ``extra_model_paths.yaml`` entries named ``kdtalker`` and
``liveportrait`` are searched too. Finding, validating and loading the files is kdtalker_core's job
(:mod:`kdtalker_core.weights`); its errors name the expected files, the folders searched and
where to download them, and are passed through unchanged.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..kdtalker_core import attention, errors, options, pipeline, weights
from . import types as t

KDTALKER_FOLDER = "kdtalker"
LIVEPORTRAIT_FOLDER = "liveportrait"
KDTALKER_EXTENSIONS = {".pth", ".pt", ".safetensors", ".npz"}
AUTO = "auto"

PRECISIONS = list(options.PRECISIONS)
ATTENTIONS = list(options.ATTENTION_BACKENDS)
DEVICES = list(options.DEVICES)


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

    The registered liveportrait folders and their direct subfolders (e.g. Kijai's
    ``LivePortrait_safetensors``), as :func:`kdtalker_core.weights.complete_liveportrait_folders` finds them.
    """
    return {_folder_label(d): d for d in weights.complete_liveportrait_folders(_liveportrait_dirs())}


def liveportrait_choices() -> list[str]:
    return [AUTO, *liveportrait_folders()]


# ----------------------------------------------------------------------------------------- resolving


def _label_folder(label: str) -> Path:
    """The folder a liveportrait picker label names (the inverse of :func:`_folder_label`)."""
    path = Path(label)
    return path if path.is_absolute() else Path(folder_paths.models_dir) / path


def resolve_model_paths(kdtalker: str = AUTO, wav2lip: str = AUTO, liveportrait: str = AUTO
                        ) -> weights.ModelPaths:
    """The picker choices -> :class:`kdtalker_core.weights.ModelPaths`.

    "auto" finds the files by their official names in every registered folder; a picked file or
    folder is used as chosen. The search, and the "not found" message (expected files, every path
    searched, download sources), are :func:`kdtalker_core.weights.find_model_files`'.
    """
    return weights.find_model_files(
        folder_paths.models_dir, kdtalker_dirs=_kdtalker_dirs(), liveportrait_dirs=_liveportrait_dirs(),
        kdtalker_file=None if kdtalker == AUTO else kdtalker,
        wav2lip_file=None if wav2lip == AUTO else wav2lip,
        liveportrait_dir=None if liveportrait == AUTO else _label_folder(liveportrait))


# ----------------------------------------------------------------------------------------- devices


@dataclass
class ModelHandle:
    """What travels on a KDTALKER_MODELS socket: the networks plus where they run and rest.

    The networks are one model in ComfyUI's memory management (a ``comfy.model_patcher.ModelPatcher``
    over all of them): their memory is counted, ComfyUI offloads them when another model needs the
    GPU and "Unload models" / ``/free`` moves them to the offload device. Nodes call :meth:`acquire`
    before computing (``load_models_gpu``: moves them back to the compute device if they were
    offloaded) and :meth:`release` when done (frees cached GPU memory; the weights stay loaded until
    ComfyUI needs the room, as ComfyUI's own models do).
    """

    models: pipeline.KDTalkerModels
    compute_device: torch.device
    offload_device: torch.device
    paths: weights.ModelPaths | None = None
    patcher: comfy.model_patcher.ModelPatcher | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.patcher is None:
            self.patcher = comfy.model_patcher.ModelPatcher(
                NetworkSet(self.models), load_device=self.compute_device, offload_device=self.offload_device)
        # When ComfyUI lets go of the networks ("Unload models" / POST /free), return their RAM to the OS.
        weakref.finalize(self.patcher.model, trim_heap_soon)
        if self.models.device == self.compute_device:
            # Loaded straight onto the compute device: count the memory from now on (no transfer).
            self._load()

    def _load(self) -> None:
        with outside_inference_mode():
            mm.load_models_gpu([self.patcher], force_full_load=True)
        self.models.device = self.compute_device

    def acquire(self) -> pipeline.KDTalkerModels:
        # The attention backend is process-wide: re-apply this handle's choice (another Load Models
        # node may have set a different one since).
        attention.set_attention_backend(self.models.attention_backend)
        self._load()
        return self.models

    def release(self) -> None:
        mm.soft_empty_cache()


def trim_heap_soon(delay_s: float = 1.0) -> None:
    """Hand the C heap's free pages back to the OS ``delay_s`` seconds from now (glibc only).

    Called when a set of networks is garbage-collected: glibc keeps freed weights (hundreds of MB,
    allocated in pieces below its mmap threshold) in the process heap, so without a trim the server's
    RSS does not go down after ``/free``. The delay lets the collection that triggered this finish
    freeing the tensors first.
    """
    if sys.platform.startswith("linux"):
        timer = threading.Timer(delay_s, _malloc_trim)
        timer.daemon = True
        timer.start()


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        pass


class NetworkSet(torch.nn.Module):
    """Every network of a :class:`~kdtalker_core.pipeline.KDTalkerModels` as one module (the same
    module objects, so moving this moves them), for ComfyUI's ModelPatcher to size and move."""

    def __init__(self, models: pipeline.KDTalkerModels):
        super().__init__()
        self.networks = torch.nn.ModuleDict(models.modules())
        self.device = models.device


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


def _comfy_args() -> Any:
    """ComfyUI's parsed command line (``comfy.cli_args.args``), or None where it is not importable."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return None
    return args


def attention_backend(choice: str, device: torch.device) -> str:
    """"auto" follows ComfyUI on CUDA: ``--use-pytorch-cross-attention`` or ``--disable-xformers``
    -> PyTorch SDPA; otherwise xformers when ComfyUI enables it (the library's own auto order)."""
    if choice != AUTO or device.type != "cuda":
        return choice
    if getattr(_comfy_args(), "use_pytorch_cross_attention", False) or not mm.xformers_enabled():
        return "sdpa"
    return choice


def model_precision(choice: str, device: torch.device) -> str:
    """"auto" follows ComfyUI's ``--force-fp32`` (-> fp32) and, on CUDA, ``--force-fp16`` (-> fp16);
    without those flags it is the library's policy (bf16 where native, else fp32)."""
    if choice != AUTO:
        return choice
    args = _comfy_args()
    if getattr(args, "force_fp32", False):
        return "fp32"
    if getattr(args, "force_fp16", False) and device.type == "cuda":
        return "fp16"
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
                io.Combo.Input("precision", options=PRECISIONS, default=options.MODEL_DEFAULTS.precision,
                               tooltip="Compute precision of rendering and sampling. auto: bf16 where the "
                                       "hardware has native bf16 (most GPUs, CPUs with AVX512-BF16 or AMX), "
                                       "else fp32. fp32 reproduces the official numbers."),
                io.Combo.Input("attention", options=ATTENTIONS, default=options.MODEL_DEFAULTS.attention,
                               tooltip="Attention implementation of the motion model. auto picks the fastest "
                                       "available (xformers when ComfyUI enables it, else PyTorch SDPA)."),
                io.Combo.Input("device", options=DEVICES, default=options.MODEL_DEFAULTS.device,
                               tooltip="auto: ComfyUI's device (honours --cpu and the selected GPU)."),
                io.Boolean.Input("use_ema", default=options.MODEL_DEFAULTS.use_ema,
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
            models = pipeline.load_models(paths=paths, device=dev, precision=model_precision(precision, dev),
                                          attention=attention_backend(attention, dev), use_ema=use_ema)
        offload = torch.device(mm.unet_offload_device()) if dev.type != "cpu" else dev
        return io.NodeOutput(ModelHandle(models, dev, offload, paths))

"""Stand-in for ``comfy.model_management``: devices, the loaded-model list, cache emptying, interrupts.

The device is the CPU. ``load_models_gpu`` / ``free_memory`` / ``unload_all_models`` keep
``current_loaded_models`` the way ComfyUI 0.33 does (most recently used first, a weak reference to each
ModelPatcher and to its module; an entry drops out when the module is gone), with full loads only.
Unlike ComfyUI, ``soft_empty_cache`` is counted even in CPU mode (ComfyUI returns at once there).
"""

from __future__ import annotations

import threading
import weakref

import torch

soft_empty_cache_calls = 0
load_models_gpu_calls = 0
_interrupt_lock = threading.RLock()
_interrupt = False


class InterruptProcessingException(BaseException):
    """Raised to cancel a prompt; a BaseException, so ``except Exception`` does not swallow it."""


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def get_all_torch_devices(exclude_current: bool = False) -> list[torch.device]:
    return [] if exclude_current else [get_torch_device()]


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def xformers_enabled() -> bool:
    return False


def soft_empty_cache(force: bool = False) -> None:
    global soft_empty_cache_calls
    soft_empty_cache_calls += 1


def interrupt_current_processing(value: bool = True) -> None:
    global _interrupt
    with _interrupt_lock:
        _interrupt = value


def processing_interrupted() -> bool:
    with _interrupt_lock:
        return _interrupt


def throw_exception_if_processing_interrupted() -> None:
    global _interrupt
    with _interrupt_lock:
        if _interrupt:
            _interrupt = False
            raise InterruptProcessingException()


# ----------------------------------------------------------------------------------------- loaded models


def module_size(module: torch.nn.Module) -> int:
    """Bytes of every tensor in the module's state dict."""
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class LoadedModel:
    """One entry of ``current_loaded_models``: a weak reference to a ModelPatcher and its load device."""

    def __init__(self, model):
        self._model = weakref.ref(model)
        self.device = model.load_device
        self.real_model = None
        self.currently_used = True
        self.model_finalizer = None

    @property
    def model(self):
        return self._model()

    def model_memory(self) -> int:
        return self.model.model_size()

    def model_loaded_memory(self) -> int:
        return self.model.loaded_size()

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        self.model.model_patches_to(self.device)
        self.model.partially_load(self.device, 1e32, force_patch_weights=force_patch_weights)
        real_model = self.model.model
        self.real_model = weakref.ref(real_model)
        self.model_finalizer = weakref.finalize(real_model, cleanup_models)
        self.model_finalizer.atexit = False
        return real_model

    def model_unload(self, memory_to_free=None, unpatch_weights=True) -> bool:
        self.model.detach(unpatch_weights)
        self.model_finalizer.detach()
        self.model_finalizer = None
        self.real_model = None
        return True

    def is_dead(self) -> bool:
        """ComfyUI's leak check: the ModelPatcher is gone but its module is still alive."""
        return self.real_model is not None and self.real_model() is not None and self.model is None

    def __eq__(self, other) -> bool:
        return self.model is other.model


current_loaded_models: list[LoadedModel] = []


def cleanup_models() -> None:
    """Drop entries whose module is gone (ComfyUI calls this from a finalizer on the module)."""
    current_loaded_models[:] = [m for m in current_loaded_models
                                if m.real_model is None or m.real_model() is not None]


def cleanup_models_gc() -> None:
    """ComfyUI garbage-collects when a ModelPatcher died before its module (a reference cycle)."""
    if any(m.is_dead() for m in current_loaded_models):
        import gc

        gc.collect()


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    """Load each ModelPatcher onto its load device (already loaded ones stay) and list it first."""
    global load_models_gpu_calls
    load_models_gpu_calls += 1
    cleanup_models_gc()
    for patcher in models:
        entry = LoadedModel(patcher)
        if entry in current_loaded_models:
            entry = current_loaded_models.pop(current_loaded_models.index(entry))
            entry.currently_used = True
        entry.model_load(force_patch_weights=force_patch_weights)
        current_loaded_models.insert(0, entry)


def load_model_gpu(model) -> None:
    return load_models_gpu([model])


def loaded_models(only_currently_used: bool = False) -> list:
    return [m.model for m in current_loaded_models if m.currently_used or not only_currently_used]


def free_memory(memory_required, device, keep_loaded=[], for_dynamic=False, pins_required=0,  # noqa: B006
                ram_required=0) -> list[LoadedModel]:  # ComfyUI 0.33's signature
    """Unload the models on ``device`` (all of them: there is no memory estimate here) except ``keep_loaded``."""
    cleanup_models_gc()
    unloaded = [m for m in current_loaded_models
                if (device is None or m.device == device) and m not in keep_loaded and not m.is_dead()]
    for m in unloaded:
        m.model_unload()
        current_loaded_models.remove(m)
    if unloaded:
        soft_empty_cache()
    return unloaded


def unload_all_models() -> None:
    """What ``/free`` with ``unload_models`` calls."""
    for device in get_all_torch_devices():
        free_memory(1e30, device)

"""Stand-in for ``comfy.model_patcher.ModelPatcher``: a model ComfyUI's memory manager can load and offload.

Same constructor and the methods ComfyUI 0.33's ``comfy.model_management`` calls (``model_size``,
``loaded_size``, ``is_dynamic``, ``model_patches_to``, ``model_dtype``, ``patch_model``, ``partially_load``,
``partially_unload``, ``loaded_ram_size``, ``detach``, ``is_clone``, ``model_patches_models``,
``current_loaded_device``). No weight patching (LoRA) and no low-VRAM partial loading: every load
here is a full load, as ``load_models_gpu(..., force_full_load=True)`` asks of ComfyUI.
"""

from __future__ import annotations

import torch

from . import model_management


class ModelPatcher:
    """``ModelPatcher(model, load_device, offload_device, size=0, weight_inplace_update=False)``."""

    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device,
                 size: int = 0, weight_inplace_update: bool = False):
        self.size = size
        self.model = model
        if getattr(self.model, "device", None) is None:  # missing or None, as in ComfyUI
            self.model.device = offload_device
        self.patches: dict = {}
        self.model_options: dict = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.parent = None
        for name, value in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                            ("model_lowvram", False), ("current_weight_patches_uuid", None),
                            ("model_offload_buffer_memory", 0)):
            if not hasattr(self.model, name):
                setattr(self.model, name, value)

    def is_dynamic(self) -> bool:
        return False

    def model_patches_to(self, device) -> None:
        """Moves attached patch models in ComfyUI; there are none here."""

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()
        return None

    def loaded_ram_size(self) -> int:
        return 0

    def model_size(self) -> int:
        if self.size > 0:
            return self.size
        self.size = model_management.module_size(self.model)
        return self.size

    def loaded_size(self) -> int:
        return self.model.model_loaded_weight_memory

    def lowvram_patch_counter(self) -> int:
        return self.model.lowvram_patch_counter

    def model_patches_models(self) -> list:
        return []

    def is_clone(self, other) -> bool:
        return hasattr(other, "model") and self.model is other.model

    def current_loaded_device(self) -> torch.device:
        return self.model.device

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        if load_weights and device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
            self.model.model_loaded_weight_memory = self.model_size()
        return self.model

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False) -> int:
        if self.model.model_loaded_weight_memory >= self.model_size() and self.model.device == device_to:
            return 0
        before = self.model.model_loaded_weight_memory
        self.patch_model(device_to)
        return self.model.model_loaded_weight_memory - before

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False) -> int:
        """No partial unloads here: everything or nothing (0 bytes freed makes ComfyUI detach fully)."""
        return 0

    def detach(self, unpatch_all: bool = True) -> torch.nn.Module:
        self.model.to(self.offload_device)
        self.model.device = self.offload_device
        self.model.model_loaded_weight_memory = 0
        return self.model

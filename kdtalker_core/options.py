"""Every user-facing default and choice list, defined once.

The CLI's argparse defaults and choices, the ComfyUI widgets and the library's keyword defaults
all read this module, so a default changes in one place. :class:`GenerateOptions` holds the knobs
of one photo + speech -> video job (what :func:`kdtalker_core.pipeline.generate` takes);
:class:`ModelOptions` the knobs of loading the networks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

from .attention import BACKENDS
from .errors import InputError
from .face import CropMode, FaceOrder
from .precision import PRECISION_CHOICES

#: Menus (the first entry of each is its default where the default is a menu entry).
PRECISIONS: tuple[str, ...] = PRECISION_CHOICES
ATTENTION_BACKENDS: tuple[str, ...] = BACKENDS
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
FACE_ORDERS: tuple[str, ...] = get_args(FaceOrder)
CROP_MODES: tuple[str, ...] = get_args(CropMode)

#: Limits shared by the CLI checks and the node widgets.
MAX_STEPS = 1000
MAX_SMOOTHING = 4.0
MAX_CHUNK_SIZE = 512
MIN_FPS, MAX_FPS = 1.0, 120.0


@dataclass(frozen=True)
class ModelOptions:
    """How the networks are loaded: compute precision, attention kernel, device, EMA weights.

    ``precision``: one of :data:`PRECISIONS` (``auto`` = :func:`kdtalker_core.precision.resolve_precision`);
    ``attention``: one of :data:`ATTENTION_BACKENDS`; ``device``: ``auto`` (CUDA when available),
    ``cpu``, ``cuda``, ``cuda:1``, ...
    """

    precision: str = "auto"
    attention: str = "auto"
    device: str = "auto"
    use_ema: bool = False


@dataclass(frozen=True)
class GenerateOptions:
    """The knobs of one photo + speech -> frames job (defaults: the official settings).

    Motion: ``seed``; ``steps`` DDIM steps per 64-frame window (official 50); ``eta`` DDIM noise
    (0 deterministic, official); ``smoothing`` Kalman strength (1 official, 0 off, > 1 smoother).
    Video: ``fps`` frames per second (KDTalker was trained at 25); ``chunk_size`` frames rendered per
    batch (memory, not results); ``paste_back`` blends the face into the full photo (else the
    512x512 crop). Face: ``face_index`` counted in ``face_order`` (:data:`FACE_ORDERS`), cropped
    with ``crop_mode`` (:data:`CROP_MODES`). Audio: skip ``start_seconds``, then use
    ``duration_seconds`` of speech (None: the rest).
    """

    seed: int = 0
    steps: int = 50
    eta: float = 0.0
    smoothing: float = 1.0
    fps: float = 25.0
    chunk_size: int = 8
    paste_back: bool = True
    face_index: int = 0
    face_order: str = "detector"
    crop_mode: str = "official"
    start_seconds: float = 0.0
    duration_seconds: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~kdtalker_core.errors.InputError` naming the first out-of-range option."""
        checks = (
            (1 <= self.steps <= MAX_STEPS, f"steps must be 1..{MAX_STEPS}, got {self.steps}"),
            (0.0 <= self.eta <= 1.0, f"eta must be in [0, 1], got {self.eta}"),
            (0.0 <= self.smoothing <= MAX_SMOOTHING,
             f"smoothing must be in [0, {MAX_SMOOTHING:g}] (1 official, 0 off), got {self.smoothing}"),
            (math.isfinite(self.fps) and MIN_FPS <= self.fps <= MAX_FPS,
             f"fps must be in [{MIN_FPS:g}, {MAX_FPS:g}], got {self.fps}"),
            (1 <= self.chunk_size <= MAX_CHUNK_SIZE, f"chunk_size must be 1..{MAX_CHUNK_SIZE}, got {self.chunk_size}"),
            (self.face_index >= 0, f"face_index must be >= 0, got {self.face_index}"),
            (self.face_order in FACE_ORDERS,
             f"face_order must be one of {', '.join(FACE_ORDERS)}, got {self.face_order!r}"),
            (self.crop_mode in CROP_MODES, f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}"),
            (math.isfinite(self.start_seconds) and self.start_seconds >= 0,
             f"start_seconds must be >= 0, got {self.start_seconds}"),
            (self.duration_seconds is None or (math.isfinite(self.duration_seconds) and self.duration_seconds > 0),
             f"duration_seconds must be positive (leave it out for the rest of the audio), "
             f"got {self.duration_seconds}"),
        )
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GenerateOptions:
        """Options from any mapping (e.g. ``vars(argparse_namespace)``, a batch job's JSON);
        keys that are not options are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes: Any) -> GenerateOptions:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


#: The defaults, for argparse and widget definitions.
DEFAULTS = GenerateOptions()
MODEL_DEFAULTS = ModelOptions()

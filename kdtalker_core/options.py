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
from typing import TYPE_CHECKING, Any, get_args

from .attention import BACKENDS
from .blink import DEFAULT_BLINK_DURATION
from .errors import InputError
from .face import CropMode, FaceOrder
from .precision import PRECISION_CHOICES

if TYPE_CHECKING:
    from .retarget import PerformanceOptions

#: Menus (the first entry of each is its default where the default is a menu entry).
PRECISIONS: tuple[str, ...] = PRECISION_CHOICES
ATTENTION_BACKENDS: tuple[str, ...] = BACKENDS
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def check_device(name: str) -> str:
    """``name`` if it is a device this package runs on: one of :data:`DEVICES`, or ``cuda:N``.

    Raises ValueError (argparse turns it into a usage error) naming the accepted forms.
    """
    base, _, index = name.partition(":")
    if name in DEVICES or (base == "cuda" and index.isdigit()):
        return name
    raise ValueError(f"unknown device {name!r}: use {', '.join(DEVICES)} or cuda:N")
FACE_ORDERS: tuple[str, ...] = get_args(FaceOrder)
CROP_MODES: tuple[str, ...] = get_args(CropMode)

#: Limits shared by the CLI checks and the node widgets.
MAX_STEPS = 1000
MAX_SMOOTHING = 4.0
MAX_CHUNK_SIZE = 512
MIN_FPS, MAX_FPS = 1.0, 120.0
#: Frame rate the motion model was trained at: motion is always sampled at this rate, then resampled.
MODEL_FPS = 25.0
#: Limits of the performance options (blinks per minute, seconds per blink, openness factors).
MAX_BLINK_RATE = 60.0
MIN_BLINK_DURATION, MAX_BLINK_DURATION = 0.05, 1.0
MAX_EYE_OPEN = 1.5
MAX_MOUTH_OPEN = 2.0
POSE_MODES: tuple[str, ...] = ("relative", "absolute")
POSE_FITS: tuple[str, ...] = ("loop", "pingpong", "cut")


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
    Video: ``fps`` output frames per second (the motion is always sampled at :data:`MODEL_FPS`, the
    model's rate, and resampled to ``fps``: ``round(duration * fps)`` frames); ``chunk_size`` frames
    rendered per batch (memory, not results); ``paste_back`` blends the face into the full photo (else
    the 512x512 crop). Face: ``face_index`` counted in ``face_order`` (:data:`FACE_ORDERS`), cropped
    with ``crop_mode`` (:data:`CROP_MODES`). Audio: skip ``start_seconds``, then use
    ``duration_seconds`` of speech (None: the rest).

    Performance (every default = the official output, bit for bit): ``blink_rate`` blinks per minute
    (0 off) of ``blink_duration`` seconds, timed by ``seed``; ``eye_open`` / ``mouth_open`` openness relative to the
    photo (1 unchanged); ``silence_calm`` in [0, 1] closes the mouth and calms the head in pauses of
    the speech (0 off); ``stitching`` applies LivePortrait's stitching network S (needs its file).
    Head pose from a video: ``pose_video`` (a file; None = the audio's own head motion) driving the
    portrait in ``pose_mode`` (:data:`POSE_MODES`), fitted to the speech by ``pose_fit``
    (:data:`POSE_FITS`); ``pose_expression`` in [0, 1] also takes that share of the expression
    from the video (0: lips and eyes from the speech only).
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
    blink_rate: float = 0.0
    blink_duration: float = DEFAULT_BLINK_DURATION
    eye_open: float = 1.0
    mouth_open: float = 1.0
    silence_calm: float = 0.0
    stitching: bool = False
    pose_video: str | None = None
    pose_mode: str = "relative"
    pose_fit: str = "loop"
    pose_expression: float = 0.0

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
            (_within(self.blink_rate, 0.0, MAX_BLINK_RATE),
             f"blink_rate must be in [0, {MAX_BLINK_RATE:g}] blinks per minute (0 off), got {self.blink_rate}"),
            (_within(self.blink_duration, MIN_BLINK_DURATION, MAX_BLINK_DURATION),
             f"blink_duration must be in [{MIN_BLINK_DURATION:g}, {MAX_BLINK_DURATION:g}] seconds, "
             f"got {self.blink_duration}"),
            (_within(self.eye_open, 0.0, MAX_EYE_OPEN),
             f"eye_open must be in [0, {MAX_EYE_OPEN:g}] (1 unchanged, 0 closed), got {self.eye_open}"),
            (_within(self.mouth_open, 0.0, MAX_MOUTH_OPEN),
             f"mouth_open must be in [0, {MAX_MOUTH_OPEN:g}] (1 unchanged), got {self.mouth_open}"),
            (_within(self.silence_calm, 0.0, 1.0), f"silence_calm must be in [0, 1] (0 off), got {self.silence_calm}"),
            (self.pose_mode in POSE_MODES,
             f"pose_mode must be one of {', '.join(POSE_MODES)}, got {self.pose_mode!r}"),
            (self.pose_fit in POSE_FITS, f"pose_fit must be one of {', '.join(POSE_FITS)}, got {self.pose_fit!r}"),
            (_within(self.pose_expression, 0.0, 1.0),
             f"pose_expression must be in [0, 1] (0: expression from the speech only), got {self.pose_expression}"),
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

    def performance(self) -> PerformanceOptions:
        """The render-time knobs (blinks, eye / mouth openness, stitching) as
        :class:`~kdtalker_core.retarget.PerformanceOptions` (the blink schedule follows ``seed``)."""
        from .retarget import PerformanceOptions

        return PerformanceOptions(blink_rate=self.blink_rate, blink_duration=self.blink_duration,
                                  blink_seed=self.seed, eye_open=self.eye_open, mouth_open=self.mouth_open,
                                  stitching=self.stitching)


def _within(value: Any, low: float, high: float) -> bool:
    """``low <= value <= high`` for a finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and low <= v <= high


#: The defaults, for argparse and widget definitions.
DEFAULTS = GenerateOptions()
MODEL_DEFAULTS = ModelOptions()

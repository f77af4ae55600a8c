"""Per-frame head motion: the :class:`Motion` type, normalisation, the windowed diffusion sampler,
Kalman smoothing of the result and the driving keypoints it produces.

A motion frame is 70 numbers in the order the KDTalker denoiser uses::

    [scale, yaw, pitch, roll, tx, ty, tz, exp(63)]      (angles in degrees)

Pipeline (KDTalker inference, ``Inferencer.generate_with_audio_img``)::

    source kp_info --normalize_source--> input_x (1,70), ori_kp (1,70)
    audio features (T,512) --pad_audio_features--> ceil(T/64)*64 rows (wrap-around)
    64-frame windows, each DDIM-sampled and conditioned on the last frame of the previous one
        --generate_motion_normalized--> (T,70) normalised
    --denormalize--> Motion --smooth_motion--> Motion --driving_keypoints--> x_d (T,21,3)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import AudioError, InputError, ModelFileError
from .keypoints import get_rotation_matrix
from .sampling import ddim_timesteps, linear_alphas_cumprod, sample_ddim
from .smoothing import kalman_smooth

#: Frames per diffusion window (the length the denoiser was trained on).
WINDOW = 64
#: Numbers per motion frame.
MOTION_DIM = 70
#: Implicit keypoints per face.
NUM_KP = 21
#: (name, width) of the motion vector's fields, in order.
MOTION_FIELDS: tuple[tuple[str, int], ...] = (
    ("scale", 1), ("yaw", 1), ("pitch", 1), ("roll", 1), ("t", 3), ("exp", 3 * NUM_KP),
)
#: Normalisation statistics that must be present (``<key>_mean`` / ``<key>_std``) and their sizes.
NORM_KEYS: dict[str, int] = {"scale": 1, "yaw": 1, "pitch": 1, "roll": 1, "t": 3, "exp": 63, "kp": 63}

SCALE_COL = 0
YAW_COL, PITCH_COL, ROLL_COL = 1, 2, 3
T_COLS = slice(4, 7)
EXP_COLS = slice(7, MOTION_DIM)
#: Head-pose columns: yaw, pitch, roll, tx, ty, tz.
POSE_COLS = slice(1, 7)

#: callback(window_index, n_windows, step_index, n_steps), called after every denoising step.
WindowCallback = Callable[[int, int, int, int], None]


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class NormStats:
    """Per-field mean/std used to (de)normalise motion (KDTalker's ``norm.npz``).

    ``mean[key]`` / ``std[key]`` are float32 CPU tensors of shape ``(d,)`` for the keys of
    :data:`NORM_KEYS` (scale 1, yaw 1, pitch 1, roll 1, t 3, exp 63, kp 63); normalised value =
    ``(v - mean) / std``.
    """

    mean: Mapping[str, torch.Tensor]
    std: Mapping[str, torch.Tensor]

    @classmethod
    def from_dict(cls, arrays: Mapping[str, Any]) -> NormStats:
        """Build from ``{"<key>_mean": array, "<key>_std": array, ...}`` (numpy or torch; extra keys
        such as ``c_lip_*`` are ignored). Raises :class:`ModelFileError` when a key is missing, has
        the wrong size, is not finite, or a std is not positive."""
        mean: dict[str, torch.Tensor] = {}
        std: dict[str, torch.Tensor] = {}
        for key, size in NORM_KEYS.items():
            for suffix, store in (("mean", mean), ("std", std)):
                name = f"{key}_{suffix}"
                if name not in arrays:
                    raise ModelFileError(
                        f"normalisation statistics lack '{name}': use KDTalker's dataset_process/norm.npz "
                        "(or a kdtalker.safetensors converted from it)"
                    )
                value = torch.as_tensor(np.asarray(arrays[name]) if not isinstance(arrays[name], torch.Tensor)
                                        else arrays[name]).detach().to("cpu", torch.float32).reshape(-1)
                if value.numel() != size or not bool(torch.isfinite(value).all()):
                    raise ModelFileError(
                        f"normalisation statistic '{name}' should hold {size} finite numbers, got "
                        f"{value.numel()}: the norm file is not KDTalker's norm.npz or is damaged"
                    )
                store[key] = value
            if not bool((std[key] > 0).all()):
                raise ModelFileError(f"'{key}_std' has non-positive entries: the norm file is damaged")
        return cls(mean=mean, std=std)

    def motion_mean(self) -> torch.Tensor:
        """(70,) means in motion order [scale, yaw, pitch, roll, t, exp]."""
        return torch.cat([self.mean[name] for name, _ in MOTION_FIELDS])

    def motion_std(self) -> torch.Tensor:
        """(70,) stds in motion order [scale, yaw, pitch, roll, t, exp]."""
        return torch.cat([self.std[name] for name, _ in MOTION_FIELDS])

    def normalize(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """``(value - mean) / std`` for one field; value (..., d) keeps its device and dtype."""
        return (value - self.mean[key].to(value)) / self.std[key].to(value)


def normalize_source(
    kp_info: Mapping[str, torch.Tensor], stats: NormStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source keypoint info -> the denoiser's conditioning tokens, both (B,70) float32.

    ``input_x`` = normalised ``[scale, yaw, pitch, roll, t(3), exp(63)]`` (note: yaw before pitch),
    the reference token of the first window. ``ori_kp`` = ``[zeros(7), normalised kp(63)]``, the
    identity token of every window. ``kp_info`` holds ``scale (B,1)``, ``pitch/yaw/roll (B,1)``
    degrees, ``t (B,3)``, ``exp (B,63)``, ``kp (B,63)``; results are on its device.
    """
    parts = []
    for name, width in MOTION_FIELDS:
        v = kp_info[name].float()
        parts.append(stats.normalize(name, v.reshape(v.shape[0], width)))
    input_x = torch.cat(parts, dim=1)
    kp = kp_info["kp"].float()
    kp_norm = stats.normalize("kp", kp.reshape(kp.shape[0], -1))
    ori_kp = torch.cat([kp_norm.new_zeros(kp_norm.shape[0], MOTION_DIM - kp_norm.shape[1]), kp_norm], dim=1)
    return input_x, ori_kp


# --------------------------------------------------------------------------- windowed sampler


def pad_audio_features(feat: torch.Tensor, window: int = WINDOW) -> tuple[torch.Tensor, int]:
    """Wrap-around padding of ``feat (T,C)`` to a multiple of ``window`` rows -> (padded, pad).

    Row ``j`` of the result is ``feat[j % T]``: the official code appends the first ``pad`` rows,
    which is the same whenever ``pad <= T``; for ``T < window/2`` (where the official code fails)
    the features are simply repeated cyclically. ``pad = (window - T % window) % window``.
    """
    if feat.ndim != 2 or feat.shape[0] < 1:
        raise AudioError(
            f"audio features must be (T,C) with at least one frame, got shape {tuple(feat.shape)}: "
            "the audio is shorter than one video frame; use a longer clip"
        )
    frames = feat.shape[0]
    pad = (window - frames % window) % window
    if pad == 0:
        return feat, 0
    idx = torch.arange(frames + pad, device=feat.device) % frames
    return feat.index_select(0, idx), pad


def _initial_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Standard normal x_T drawn from ``generator`` (on the generator's device), moved to ``device``."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def generate_motion_normalized(
    denoiser: torch.nn.Module,
    input_x: torch.Tensor,
    ori_kp: torch.Tensor,
    aud_feat: torch.Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    init_noise: torch.Tensor | None = None,
    callback: WindowCallback | None = None,
    return_intermediates: bool = False,
    dtype: torch.dtype | None = None,
    window: int = WINDOW,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sample normalised motion for ``aud_feat (T,512)`` -> ``(T,70)`` float32 on the denoiser's device.

    The padded features are cut into ``n_win = ceil(T/64)`` windows of ``window`` = 64 frames (the
    official and trained length; other values are for experiments), sampled one after
    the other with DDIM (``steps`` steps, ``eta``): window k is conditioned on ``ori_kp (1,70)``
    and on the reference token ``input_x (1,70)`` for k = 0, else the last frame of window k-1.

    Noise: ``init_noise (n_win,64,70)`` when given (the official x_T), otherwise one
    ``randn(1,64,70)`` per window from ``generator`` (on the generator's device). The official code
    draws ``randn(1,64,70,3)`` and keeps channel 0, so the same seed gives different (equally
    distributed) noise here. ``eta > 0`` also draws step noise from ``generator``.

    ``dtype``: dtype of the conditioning tokens and audio features handed to the denoiser (e.g. the
    model's bfloat16; default float32); the DDIM state x_t and the result stay float32.

    ``callback(window, n_windows, step, n_steps)`` runs after each step; an exception raised there
    propagates (use it to cancel). With ``return_intermediates`` also returns ``{"aud_feat_padded"
    (n_win*window,512), "window_ref_kps" (n_win,70), "window_samples" (n_win,window,70)}``.
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    param = next(denoiser.parameters())
    device = param.device
    token_dtype = dtype or torch.float32
    frames = aud_feat.shape[0] if aud_feat.ndim == 2 else 0
    if window < 1:
        raise InputError(f"window must be >= 1 frame, got {window}")
    padded, _ = pad_audio_features(aud_feat, window)
    n_win = padded.shape[0] // window
    if init_noise is not None and tuple(init_noise.shape) != (n_win, window, MOTION_DIM):
        raise InputError(
            f"init_noise must have shape {(n_win, window, MOTION_DIM)} for {frames} frames, "
            f"got {tuple(init_noise.shape)}"
        )
    alphas_cumprod = linear_alphas_cumprod().to(device)
    timesteps = ddim_timesteps(steps)
    n_steps = int(timesteps.shape[0])
    padded = padded.to(device=device, dtype=token_dtype)
    ori = ori_kp.reshape(1, MOTION_DIM).to(device=device, dtype=token_dtype)
    ref = input_x.reshape(1, MOTION_DIM).to(device=device, dtype=torch.float32)

    refs: list[torch.Tensor] = []
    samples: list[torch.Tensor] = []
    try:
        for k in range(n_win):
            feat_k = padded[k * window:(k + 1) * window].unsqueeze(0)
            if init_noise is not None:
                x_T = init_noise[k].unsqueeze(0).to(device=device, dtype=torch.float32)
            else:
                x_T = _initial_noise((1, window, MOTION_DIM), generator, device)
            eps_fn = denoiser.window_eps_fn(ori, ref.to(token_dtype), feat_k, timesteps)
            step_cb = None
            if callback is not None:
                def step_cb(i: int, _t: int, _x: torch.Tensor, _k: int = k) -> None:
                    callback(_k, n_win, i, n_steps)
            x0 = sample_ddim(eps_fn, x_T, alphas_cumprod, timesteps, eta=eta, generator=generator,
                             callback=step_cb).float()
            refs.append(ref[0])
            samples.append(x0[0])
            ref = x0[:, -1]
    finally:
        release = getattr(denoiser, "release_packed_weights", None)
        if release is not None:  # the packed copy is not needed while frames render
            release()
    motion_norm = torch.cat(samples, dim=0)[:frames]
    if not return_intermediates:
        return motion_norm
    extras = {
        "aud_feat_padded": padded.float(),
        "window_ref_kps": torch.stack(refs),
        "window_samples": torch.stack(samples),
    }
    return motion_norm, extras


# --------------------------------------------------------------------------- Motion


@dataclass
class Motion:
    """Denormalised per-frame motion.

    ``data (T,70)`` float, columns ``[scale, yaw, pitch, roll, tx, ty, tz, exp(63)]`` (angles in
    degrees, LivePortrait units otherwise), kept on the compute device; ``fps`` frames per second.
    """

    data: torch.Tensor
    fps: float = 25.0

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.data.shape[1] != MOTION_DIM or self.data.shape[0] < 1:
            raise InputError(
                f"motion data must be (T,{MOTION_DIM}) with T >= 1, got {tuple(self.data.shape)}"
            )
        if not self.fps > 0:
            raise InputError(f"motion fps must be > 0, got {self.fps}")
        self.fps = float(self.fps)

    @property
    def num_frames(self) -> int:
        """T."""
        return int(self.data.shape[0])

    @property
    def duration(self) -> float:
        """Seconds: T / fps."""
        return self.num_frames / self.fps

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def scale(self) -> torch.Tensor:
        """(T,) predicted keypoint scale (unused by the default absolute driving)."""
        return self.data[:, SCALE_COL]

    @property
    def yaw(self) -> torch.Tensor:
        """(T,) degrees."""
        return self.data[:, YAW_COL]

    @property
    def pitch(self) -> torch.Tensor:
        """(T,) degrees."""
        return self.data[:, PITCH_COL]

    @property
    def roll(self) -> torch.Tensor:
        """(T,) degrees."""
        return self.data[:, ROLL_COL]

    @property
    def t(self) -> torch.Tensor:
        """(T,3) translation."""
        return self.data[:, T_COLS]

    @property
    def exp(self) -> torch.Tensor:
        """(T,21,3) expression deltas of the 21 keypoints."""
        return self.data[:, EXP_COLS].reshape(-1, NUM_KP, 3)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Motion:
        """A copy on ``device`` (and ``dtype``); self when nothing changes."""
        data = self.data.to(device=device, dtype=dtype)
        return self if data is self.data else Motion(data, self.fps)

    def with_data(self, data: torch.Tensor) -> Motion:
        """Same fps, new (T,70) data."""
        return Motion(data, self.fps)


def denormalize(motion_norm: torch.Tensor, stats: NormStats, fps: float = 25.0) -> Motion:
    """``(T,70)`` normalised motion -> :class:`Motion` (``v * std + mean`` per field, same device)."""
    if motion_norm.ndim != 2 or motion_norm.shape[1] != MOTION_DIM:
        raise InputError(f"normalised motion must be (T,{MOTION_DIM}), got {tuple(motion_norm.shape)}")
    std = stats.motion_std().to(motion_norm)
    mean = stats.motion_mean().to(motion_norm)
    return Motion(motion_norm * std + mean, fps)


def smooth_motion(motion: Motion, strength: float = 1.0) -> Motion:
    """Kalman-smooth every column except ``scale`` (official: yaw, pitch, roll, t and exp are
    smoothed, scale is not). The official code smooths pitch, yaw, roll, t and exp as separate
    groups; every dimension is independent, so smoothing the 69 columns together is the same.
    ``strength`` as in :func:`kdtalker_core.smoothing.kalman_smooth` (1 official, 0 off)."""
    if strength == 0:
        return motion.with_data(motion.data.clone())
    data = motion.data.clone()
    data[:, 1:] = kalman_smooth(motion.data[:, 1:], strength=strength)
    return motion.with_data(data)


# --------------------------------------------------------------------------- driving keypoints


@dataclass
class DrivingTransform:
    """Per-frame transform applied to the source's canonical keypoints ``x_c (1,21,3)``::

        x_d = scale * (x_c @ rotation + delta) + translation[:, None, :]

    ``scale (T|1,1,1)``, ``rotation (T,3,3)`` (row-vector convention), ``delta (T,21,3)``,
    ``translation (T,3)`` with its z component 0.
    """

    scale: torch.Tensor
    rotation: torch.Tensor
    delta: torch.Tensor
    translation: torch.Tensor


def driving_transform(
    motion: Motion, source_kp_info: Mapping[str, torch.Tensor], relative: bool = False,
    motion_scale: bool = False,
) -> DrivingTransform:
    """The per-frame scale/rotation/expression/translation of :func:`driving_keypoints`.

    Absolute (official default): rotation from the motion's pitch/yaw/roll, delta = motion exp,
    scale = the SOURCE scale (the predicted scale is ignored), translation = motion t with t_z = 0.
    Relative (official ``flag_relative_motion``): changes since frame 0 applied to the source:
    ``R_i R_0^T R_s``, ``exp_s + (exp_i - exp_0)``, ``scale_s * scale_i / scale_0``,
    ``t_s + (t_i - t_0)``, t_z = 0.
    ``motion_scale`` (absolute only): use the motion's own scale column instead of the source's (for
    motions whose scale is meaningful, e.g. a driving video's zoom; the audio model's is not).
    """
    data = motion.data
    src = {k: v.to(device=data.device, dtype=data.dtype) for k, v in source_kp_info.items()}
    rot_d = get_rotation_matrix(motion.pitch, motion.yaw, motion.roll)
    exp = motion.exp
    t = motion.t
    src_scale = src["scale"].reshape(1, 1, 1)
    if relative:
        rot_s = get_rotation_matrix(src["pitch"], src["yaw"], src["roll"])
        rotation = rot_d @ rot_d[:1].transpose(1, 2) @ rot_s
        delta = src["exp"].reshape(1, NUM_KP, 3) + (exp - exp[:1])
        scale = src_scale * (motion.scale / motion.scale[:1]).reshape(-1, 1, 1)
        translation = src["t"].reshape(1, 3) + (t - t[:1])
    else:
        rotation = rot_d
        delta = exp
        scale = motion.scale.reshape(-1, 1, 1) if motion_scale else src_scale
        translation = t
    translation = torch.cat([translation[:, :2], torch.zeros_like(translation[:, 2:])], dim=1)
    return DrivingTransform(scale=scale, rotation=rotation, delta=delta, translation=translation)


def driving_keypoints(
    motion: Motion, source_kp_info: Mapping[str, torch.Tensor], relative: bool = False,
    motion_scale: bool = False,
) -> torch.Tensor:
    """Driving keypoints ``x_d (T,21,3)`` on the motion's device, batched over frames.

    ``source_kp_info``: the portrait's kp_info (``kp (1,63)`` canonical keypoints, ``scale (1,1)``,
    and for ``relative`` also ``pitch/yaw/roll (1,1)`` degrees, ``exp (1,63)``, ``t (1,3)``).
    See :func:`driving_transform` for the absolute (default) and relative conventions and
    ``motion_scale``.
    """
    tr = driving_transform(motion, source_kp_info, relative=relative, motion_scale=motion_scale)
    x_c = source_kp_info["kp"].to(motion.data).reshape(1, NUM_KP, 3)
    return tr.scale * (x_c @ tr.rotation + tr.delta) + tr.translation.unsqueeze(1)

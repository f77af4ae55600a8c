"""Eyes, mouth and stitching on the driving keypoints: blinks, eye openness, mouth openness and
LivePortrait's stitching network S, applied to ``x_d (T,21,3)`` just before rendering.

Two ways to move the eyelids and lips:

* **Retargeting MLPs** (``stitching_retargeting_module``, groups ``retarget_eye`` / ``retarget_mouth``),
  used when loaded. The eye MLP maps ``[x_s (63), source eye-open ratios (2), target ratio (1)]`` to
  a keypoint offset (63); the lip MLP maps ``[x_s (63), source lip-open ratio (1), target (1)]``.
  Ratios are LivePortrait's "distance between the lids / width of the eye" (and the same for the
  inner lips over the mouth width). Here the source ratios come from the portrait's dlib 68
  landmarks (:func:`source_ratios`; LivePortrait measures them on its own 203-point landmarks, so
  they are an approximation of the same quantity). Offsets are always taken relative to the MLP's
  output at the source's own ratio, so "no change" is exactly zero and nothing jumps in and out.
* **Keypoint offsets** (fallback, no file needed): which implicit keypoints move the eyelids and the
  lips is known from LivePortrait (its region masks: eyes = keypoints 11, 13, 15, 16, 18; lips = 6,
  12, 14, 17, 19, 20; its expression editor closes one eye by moving keypoint 11 down in y and 13 up
  by 0.3 of that, the other eye with 15 and 16). The fallback closes the eyes with those offsets
  (:data:`EYE_CLOSE_OFFSETS`, full closure = the editor's full wink) and scales the lips' expression
  change around the source expression.

Stitching: S takes ``x_s`` and ``x_d`` and returns a correction of ``x_d`` (every keypoint plus a
shared x/y shift) that keeps the shoulders / neck aligned with the pasted-back photo. Order as in
LivePortrait: eye and lip offsets are added first, then stitching is applied.

:class:`PerformanceOptions` carries every knob; its defaults change nothing (``apply_performance``
then returns ``x_d`` itself, bit for bit). The same edits on a :class:`~kdtalker_core.motion.Motion`
(keypoint offsets in expression space; visible in a motion plot): :func:`add_blinks`,
:func:`scale_mouth`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .blink import DEFAULT_BLINK_DURATION, blink_curve
from .errors import InputError
from .motion import EXP_COLS, NUM_KP, Motion
from .networks.stitching import retarget_eye, retarget_lip, stitch

__all__ = [
    "DEFAULT_EYE_RATIO", "DEFAULT_LIP_RATIO", "EYE_CLOSE_OFFSETS", "EYE_KEYPOINTS", "LIP_KEYPOINTS",
    "PerformanceOptions", "RetargetNetworks", "SourceRatios", "add_blinks", "apply_performance",
    "apply_to_portrait",
    "eye_delta_fallback", "eye_delta_mlp", "eye_openness", "lip_delta_fallback", "lip_delta_mlp",
    "scale_mouth", "source_ratios", "stitch_keypoints",
]

#: Implicit keypoints of the eye region (LivePortrait's ``animation_region="eyes"``).
EYE_KEYPOINTS: tuple[int, ...] = (11, 13, 15, 16, 18)
#: Implicit keypoints of the lip region (LivePortrait's ``animation_region="lip"``).
LIP_KEYPOINTS: tuple[int, ...] = (6, 12, 14, 17, 19, 20)
#: Eye-open ratio LivePortrait uses for "open" when a source's eyes are (nearly) shut.
DEFAULT_EYE_RATIO = 0.39
#: Lip-open ratio of a closed mouth.
DEFAULT_LIP_RATIO = 0.0
#: Largest target ratio LivePortrait's retargeting sliders allow.
MAX_RATIO = 0.8


def _eye_close_offsets() -> torch.Tensor:
    offsets = torch.zeros(NUM_KP, 3)
    for upper, lower in ((11, 13), (15, 16)):  # one (upper, lower) pair per eye
        offsets[upper, 1] = 0.039
        offsets[lower, 1] = -0.3 * 0.039
    return offsets


#: Expression offsets (21,3) that fully close both eyes (fallback; in expression units, x_d = s * exp).
EYE_CLOSE_OFFSETS: torch.Tensor = _eye_close_offsets()


# --------------------------------------------------------------------------- options and inputs


@dataclass(frozen=True)
class PerformanceOptions:
    """Render-time performance knobs; the defaults reproduce the official output exactly.

    blink_rate: blinks per minute (0 = off; people blink ~10-20 times a minute).
    blink_duration: seconds per blink. blink_seed: the blink schedule's seed.
    eye_open: eye openness relative to the portrait (1 unchanged, 0 closed, 1.3 wider).
    mouth_open: scale of the mouth opening relative to the portrait's mouth (1 unchanged, 0 keeps the
        portrait's mouth, 1.5 opens 50% more).
    stitching: apply LivePortrait's stitching network S (needs the stitching file).
    use_networks: use the retargeting MLPs when loaded (False forces the keypoint fallback).
    """

    blink_rate: float = 0.0
    blink_duration: float = DEFAULT_BLINK_DURATION
    blink_seed: int = 0
    eye_open: float = 1.0
    mouth_open: float = 1.0
    stitching: bool = False
    use_networks: bool = True

    def __post_init__(self) -> None:
        for name in ("blink_rate", "blink_duration", "eye_open", "mouth_open"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {value}")
        if self.blink_duration <= 0:
            raise InputError(f"blink_duration must be > 0 seconds, got {self.blink_duration}")

    @property
    def moves_eyes(self) -> bool:
        return self.blink_rate > 0 or self.eye_open != 1.0

    @property
    def moves_mouth(self) -> bool:
        return self.mouth_open != 1.0

    @property
    def is_identity(self) -> bool:
        """True when nothing changes (the official behaviour)."""
        return not (self.moves_eyes or self.moves_mouth or self.stitching)


@dataclass
class RetargetNetworks:
    """LivePortrait's MLPs that are loaded (each may be None): S, eye and lip retargeting."""

    stitching: torch.nn.Module | None = None
    eye: torch.nn.Module | None = None
    lip: torch.nn.Module | None = None

    @classmethod
    def from_models(cls, models: Any) -> RetargetNetworks:
        """Read ``stitching`` / ``retarget_eye`` / ``retarget_lip`` attributes of a models object."""
        return cls(getattr(models, "stitching", None), getattr(models, "retarget_eye", None),
                   getattr(models, "retarget_lip", None))


@dataclass(frozen=True)
class SourceRatios:
    """The portrait's eye-open ratios (two eyes, image-left first) and lip-open ratio."""

    eyes: tuple[float, float] = (DEFAULT_EYE_RATIO, DEFAULT_EYE_RATIO)
    lip: float = DEFAULT_LIP_RATIO

    @property
    def eye_mean(self) -> float:
        return 0.5 * (self.eyes[0] + self.eyes[1])


def _dist(lm: np.ndarray, a: int, b: int) -> float:
    return float(np.linalg.norm(lm[a] - lm[b]))


def source_ratios(landmarks: Any) -> SourceRatios:
    """Eye / lip open ratios from iBUG 68 landmarks ``(68,2)`` (any pixel frame: ratios are scale-free).

    Eye: mean lid distance (37-41, 38-40; 43-47, 44-46) over the corner distance (36-39; 42-45).
    Lip: inner-lip distance (62-66) over the mouth-corner distance (48-54).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"landmarks must be a finite (68,2) array, got shape {lm.shape}")
    eyes = []
    for (c0, c1), pairs in (((36, 39), ((37, 41), (38, 40))), ((42, 45), ((43, 47), (44, 46)))):
        width = _dist(lm, c0, c1)
        eyes.append(float(np.mean([_dist(lm, a, b) for a, b in pairs]) / (width + 1e-6)))
    lip = _dist(lm, 62, 66) / (_dist(lm, 48, 54) + 1e-6)
    return SourceRatios(eyes=(eyes[0], eyes[1]), lip=lip)


# --------------------------------------------------------------------------- eyes


def eye_openness(num_frames: int, fps: float, options: PerformanceOptions) -> torch.Tensor:
    """Per-frame eye openness relative to the portrait ``(T,)``: ``eye_open * (1 - blink closure)``."""
    closure = blink_curve(num_frames, fps, options.blink_rate, options.blink_duration, options.blink_seed)
    return float(options.eye_open) * (1.0 - closure)


def eye_delta_fallback(openness: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Keypoint offsets ``(T,21,3)`` for ``openness (T,)``: ``scale * (1 - openness) * EYE_CLOSE_OFFSETS``."""
    closing = (1.0 - openness).reshape(-1, 1, 1)
    scale_t = torch.as_tensor(scale, dtype=openness.dtype, device=openness.device).reshape(1, 1, 1)
    return scale_t * closing * EYE_CLOSE_OFFSETS.to(openness)


def _run_mlp(fn: Any, net: torch.nn.Module, x_s: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    p = next(net.parameters())
    xs = x_s.to(device=p.device, dtype=p.dtype).reshape(1, NUM_KP, 3).expand(ratios.shape[0], -1, -1)
    return fn(net, xs, ratios.to(device=p.device, dtype=p.dtype)).reshape(-1, NUM_KP, 3)


def eye_delta_mlp(net: torch.nn.Module, x_s: torch.Tensor, ratios: SourceRatios,
                  openness: torch.Tensor) -> torch.Tensor:
    """Eye MLP offsets ``(T,21,3)``: output at target ratio ``openness * mean source ratio`` minus the
    output at the source ratio itself (so openness 1 gives exactly 0). Float32 on the net's device."""
    c_l, c_r = ratios.eyes
    target = (openness.double() * ratios.eye_mean).clamp(0.0, MAX_RATIO).float()
    rows = torch.stack([torch.full_like(target, c_l), torch.full_like(target, c_r), target], 1)
    base = torch.tensor([[c_l, c_r, ratios.eye_mean]], device=target.device)
    out = _run_mlp(retarget_eye, net, x_s, torch.cat([rows, base]))
    return out[:-1] - out[-1:]


def _lip_mask(like: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(1, NUM_KP, 1, dtype=like.dtype, device=like.device)
    mask[:, list(LIP_KEYPOINTS)] = 1
    return mask


# --------------------------------------------------------------------------- mouth


def lip_delta_fallback(exp: torch.Tensor, exp_source: torch.Tensor, scale: torch.Tensor | float,
                       factor: float) -> torch.Tensor:
    """Keypoint offsets ``(T,21,3)`` scaling the lips' expression change around the source by ``factor``:
    ``scale * (factor - 1) * (exp - exp_source)`` on :data:`LIP_KEYPOINTS`, 0 elsewhere."""
    exp = exp.reshape(-1, NUM_KP, 3)
    change = exp - exp_source.to(exp).reshape(1, NUM_KP, 3)
    scale_t = torch.as_tensor(scale, dtype=exp.dtype, device=exp.device).reshape(1, 1, 1)
    return scale_t * (float(factor) - 1.0) * change * _lip_mask(exp)


def lip_delta_mlp(net: torch.nn.Module, x_s: torch.Tensor, ratios: SourceRatios, exp: torch.Tensor,
                  exp_source: torch.Tensor, scale: torch.Tensor | float, factor: float,
                  step: float = 0.05) -> torch.Tensor:
    """Lip MLP offsets ``(T,21,3)`` that scale the mouth opening by ``factor``.

    The MLP's own opening direction ``g`` (its change per unit of lip ratio at the source ratio, on the
    lip keypoints) gives each frame's current ratio: ``c(t) = c_s + <s (exp - exp_s), g> / <g, g>``.
    The offset moves the mouth from ``c(t)`` to ``c_s + factor (c(t) - c_s)`` (clamped to [0, 0.8]):
    ``R(target) - R(current)``; factor 1 gives exactly 0.
    """
    c_s = float(ratios.lip)
    lo = max(c_s - step, 0.0)
    probe = _run_mlp(retarget_lip, net, x_s, torch.tensor([[c_s, lo], [c_s, lo + 2 * step]]))
    mask = _lip_mask(probe)
    g = ((probe[1] - probe[0]) / (2 * step)).unsqueeze(0) * mask
    exp = exp.reshape(-1, NUM_KP, 3).to(g)
    scale_t = torch.as_tensor(scale).to(g).reshape(1, 1, 1)
    change = scale_t * (exp - exp_source.to(g).reshape(1, NUM_KP, 3)) * mask
    opening = (change * g).sum((1, 2)) / (g * g).sum().clamp_min(1e-12)
    current = (c_s + opening).clamp(0.0, MAX_RATIO)
    target = (c_s + float(factor) * opening).clamp(0.0, MAX_RATIO)
    source = torch.full_like(current, c_s)
    rows = torch.cat([torch.stack([source, target], 1), torch.stack([source, current], 1)])
    out = _run_mlp(retarget_lip, net, x_s, rows)
    n = exp.shape[0]
    return out[:n] - out[n:]


# --------------------------------------------------------------------------- stitching + composition


def stitch_keypoints(net: torch.nn.Module, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """``x_d (T,21,3)`` corrected by the stitching network S for source ``x_s (1,21,3)`` (same dtype/device)."""
    p = next(net.parameters())
    xs = x_s.to(device=p.device, dtype=p.dtype).reshape(1, NUM_KP, 3).expand(x_d.shape[0], -1, -1)
    return stitch(net, xs, x_d.to(device=p.device, dtype=p.dtype)).to(x_d)


def apply_performance(
    x_d: torch.Tensor,
    *,
    x_s: torch.Tensor,
    source_kp_info: Mapping[str, torch.Tensor],
    motion: Motion,
    options: PerformanceOptions,
    networks: RetargetNetworks | None = None,
    ratios: SourceRatios | None = None,
) -> torch.Tensor:
    """Driving keypoints ``x_d (T,21,3)`` with blinks, eye / mouth openness and stitching applied.

    ``x_s (1,21,3)``: the portrait's keypoints; ``source_kp_info``: its kp_info (``scale (1,1)``,
    ``exp (1,63)``); ``motion``: the motion ``x_d`` was made from (its fps times the blinks, its
    expression measures the mouth); ``networks``: loaded MLPs (the eye / lip ones are used when present
    and ``options.use_networks``, the keypoint fallback otherwise); ``ratios``: the portrait's eye / lip
    ratios (:func:`source_ratios`; defaults when None). With default options returns ``x_d`` itself.
    Raises :class:`InputError` for stitching without the stitching network.
    """
    if options.is_identity:
        return x_d
    if x_d.ndim != 3 or x_d.shape[1:] != (NUM_KP, 3) or x_d.shape[0] != motion.num_frames:
        raise InputError(f"x_d must be (T,{NUM_KP},3) with T = {motion.num_frames} motion frames, "
                         f"got {tuple(x_d.shape)}")
    nets = networks or RetargetNetworks()
    ratios = ratios or SourceRatios()
    scale = source_kp_info["scale"].reshape(()).to(x_d)
    out = x_d
    if options.moves_eyes:
        openness = eye_openness(x_d.shape[0], motion.fps, options).to(x_d)
        if nets.eye is not None and options.use_networks:
            delta = eye_delta_mlp(nets.eye, x_s, ratios, openness)
        else:
            delta = eye_delta_fallback(openness, scale)
        out = out + delta.to(x_d)
    if options.moves_mouth:
        exp = motion.exp.to(x_d)
        exp_s = source_kp_info["exp"].to(x_d).reshape(NUM_KP, 3)
        if nets.lip is not None and options.use_networks:
            delta = lip_delta_mlp(nets.lip, x_s, ratios, exp, exp_s, scale, options.mouth_open)
        else:
            delta = lip_delta_fallback(exp, exp_s, scale, options.mouth_open)
        out = out + delta.to(x_d)
    if options.stitching:
        if nets.stitching is None:
            raise InputError("stitching needs LivePortrait's stitching_retargeting_module: put "
                             "retargeting_models/stitching_retargeting_module.pth (or the safetensors) in "
                             "models/liveportrait, or turn stitching off")
        out = stitch_keypoints(nets.stitching, x_s, out)
    return out


def apply_to_portrait(x_d: torch.Tensor, models: Any, portrait: Any, motion: Motion,
                      options: PerformanceOptions | None) -> torch.Tensor:
    """:func:`apply_performance` for a pipeline ``Portrait`` (``x_s``, ``kp_info``, ``crop.face.landmarks``)
    and a models object (``stitching`` / ``retarget_eye`` / ``retarget_lip`` attributes, each optional).
    None or default options return ``x_d`` itself."""
    if options is None or options.is_identity:
        return x_d
    landmarks = getattr(getattr(getattr(portrait, "crop", None), "face", None), "landmarks", None)
    return apply_performance(x_d, x_s=portrait.x_s, source_kp_info=portrait.kp_info, motion=motion,
                             options=options, networks=RetargetNetworks.from_models(models),
                             ratios=source_ratios(landmarks) if landmarks is not None else None)


# --------------------------------------------------------------------------- the same on Motion data


def add_blinks(motion: Motion, rate_per_min: float, duration_s: float = DEFAULT_BLINK_DURATION,
               seed: int = 0, eye_open: float = 1.0) -> Motion:
    """Blinks and eye openness written into the motion's expression (keypoint-offset fallback):
    ``exp += (1 - openness(t)) * EYE_CLOSE_OFFSETS``; only keypoints 11, 13, 15 and 16 (y) change.
    Rate 0 and eye_open 1 return an unchanged copy."""
    opts = PerformanceOptions(blink_rate=rate_per_min, blink_duration=duration_s, blink_seed=seed,
                              eye_open=eye_open)
    data = motion.data.clone()
    if opts.moves_eyes:
        openness = eye_openness(motion.num_frames, motion.fps, opts).to(data)
        delta = eye_delta_fallback(openness, 1.0).reshape(motion.num_frames, -1)
        cols = (torch.nonzero(EYE_CLOSE_OFFSETS.reshape(-1)).reshape(-1) + EXP_COLS.start).to(data.device)
        data[:, cols] = data[:, cols] + delta[:, cols - EXP_COLS.start]
    return motion.with_data(data)


def scale_mouth(motion: Motion, factor: float, neutral_exp: torch.Tensor | None = None) -> Motion:
    """Scale the lip keypoints' expression around ``neutral_exp`` (63 numbers; default: the median
    over time): ``n + factor * (exp - n)`` on :data:`LIP_KEYPOINTS`. Factor 1 returns a copy."""
    if not (math.isfinite(factor) and factor >= 0):
        raise InputError(f"mouth factor must be a finite number >= 0, got {factor}")
    data = motion.data.clone()
    if factor == 1.0:
        return motion.with_data(data)
    exp = data[:, EXP_COLS].reshape(-1, NUM_KP, 3)
    neutral = (exp.median(dim=0).values if neutral_exp is None
               else neutral_exp.to(exp).reshape(NUM_KP, 3))
    lips = list(LIP_KEYPOINTS)
    exp[:, lips] = neutral[lips] + float(factor) * (exp[:, lips] - neutral[lips])
    data[:, EXP_COLS] = exp.reshape(-1, 3 * NUM_KP)
    return motion.with_data(data)

"""Calm silences: find the pauses in the speech from its energy and, during them, close the mouth and
settle the head.

Voice activity (no model, no new dependency): the 16 kHz waveform is cut into the motion's frames
(frame ``i`` covers samples ``[i * 16000 / fps, (i + 1) * 16000 / fps)``: 640 samples at 25 fps), each
frame's energy in dB is compared with a threshold relative to the loud part of the clip (its 95th
percentile) with an absolute floor, and the speech mask is widened by a short lead before and a
hangover after each voiced run so word gaps do not count as pauses. Pauses shorter than
``min_pause_s`` are ignored and the pause mask is ramped smoothly in and out: :func:`pause_weight`
is 1 in a pause, 0 while speaking.

During pauses :func:`calm_silences` pulls the lip keypoints' expression toward the neutral face (the
portrait's own expression when given) and the head pose (yaw, pitch, roll, t) toward its slow
moving average, both by ``strength * pause_weight``. ``strength`` 0 returns the motion unchanged,
bit for bit (the official behaviour).
"""

from __future__ import annotations

import math

import torch

from .audio import SAMPLE_RATE
from .errors import InputError
from .motion import EXP_COLS, NUM_KP, POSE_COLS, Motion
from .retarget import LIP_KEYPOINTS

__all__ = ["calm_silences", "calm_silences_from_audio", "frame_energy_db", "pause_weight", "voice_activity"]

#: Energy (dB) of digital silence, the floor of :func:`frame_energy_db`.
SILENCE_DB = -120.0


def frame_energy_db(waveform_16k: torch.Tensor, num_frames: int, fps: float = 25.0) -> torch.Tensor:
    """Mean-square energy of each video frame's audio in dB (full scale 1.0 -> 0 dB) -> ``(T,)`` float64.

    Samples past the end of the waveform count as silence, so ``num_frames`` may exceed the audio.
    """
    if num_frames < 1 or not fps > 0:
        raise InputError(f"need num_frames >= 1 and fps > 0, got {num_frames}, {fps}")
    wav = torch.as_tensor(waveform_16k).detach().to("cpu", torch.float64).reshape(-1)
    cum = torch.cat([wav.new_zeros(1), torch.cumsum(wav * wav, 0)])
    edges = torch.round(torch.arange(num_frames + 1, dtype=torch.float64) * (SAMPLE_RATE / float(fps))).long()
    lengths = (edges[1:] - edges[:-1]).clamp_min(1).to(torch.float64)
    clipped = edges.clamp(max=wav.shape[0])
    energy = (cum[clipped[1:]] - cum[clipped[:-1]]) / lengths
    return (10.0 * torch.log10(energy.clamp_min(1e-12))).clamp_min(SILENCE_DB)


def _dilate(mask: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Widen the True runs of ``mask (T,)`` by ``before`` frames earlier and ``after`` frames later."""
    out = mask.clone()
    for k in range(1, after + 1):
        out[k:] |= mask[:-k]
    for k in range(1, before + 1):
        out[:-k] |= mask[k:]
    return out


def voice_activity(
    waveform_16k: torch.Tensor,
    num_frames: int,
    fps: float = 25.0,
    *,
    relative_db: float = -35.0,
    floor_db: float = -55.0,
    hangover_s: float = 0.08,
    lead_s: float = 0.04,
) -> torch.Tensor:
    """Speech mask per video frame -> ``(T,)`` bool (True = speaking).

    A frame is voiced when its energy exceeds ``max(p95 + relative_db, floor_db)`` (p95: the 95th
    percentile of the frame energies). Voiced runs are then widened by ``lead_s`` before and
    ``hangover_s`` after.
    """
    db = frame_energy_db(waveform_16k, num_frames, fps)
    loud = float(torch.quantile(db, 0.95))
    voiced = db > max(loud + relative_db, floor_db)
    return _dilate(voiced, int(round(lead_s * fps)), int(round(hangover_s * fps)))


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, stop) of every True run of ``mask (T,)``."""
    padded = torch.cat([mask.new_zeros(1), mask, mask.new_zeros(1)]).to(torch.int8)
    change = torch.nonzero(padded[1:] - padded[:-1]).reshape(-1).tolist()
    return list(zip(change[0::2], change[1::2]))


def pause_weight(activity: torch.Tensor, fps: float = 25.0, *, min_pause_s: float = 0.12,
                 ramp_s: float = 0.12) -> torch.Tensor:
    """``(T,)`` float32 in [0,1]: 1 inside pauses of at least ``min_pause_s``, 0 while speaking, with a
    smooth ramp (a moving average over ``ramp_s``) at the edges. ``activity``: :func:`voice_activity`."""
    pause = ~activity.bool()
    keep = torch.zeros_like(pause)
    for start, stop in _runs(pause):
        if (stop - start) / fps >= min_pause_s:
            keep[start:stop] = True
    weight = keep.to(torch.float64)
    width = int(round(ramp_s * fps))
    if width > 1 and weight.numel() > 1:
        kernel = torch.ones(1, 1, width, dtype=torch.float64) / width
        left = (width - 1) // 2
        padded = torch.nn.functional.pad(weight[None, None], (left, width - 1 - left), mode="replicate")
        weight = torch.nn.functional.conv1d(padded, kernel)[0, 0]
    return weight.clamp(0.0, 1.0).to(torch.float32)


def _moving_average(values: torch.Tensor, width: int) -> torch.Tensor:
    """Centred moving average over ``width`` frames of ``values (T,d)`` with edge replication."""
    if width <= 1 or values.shape[0] == 1:
        return values.clone()
    left = (width - 1) // 2
    padded = torch.nn.functional.pad(values.T[None], (left, width - 1 - left), mode="replicate")
    kernel = torch.ones(values.shape[1], 1, width, dtype=values.dtype) / width
    return torch.nn.functional.conv1d(padded, kernel, groups=values.shape[1])[0].T


def calm_silences(
    motion: Motion,
    weight: torch.Tensor,
    strength: float = 0.0,
    *,
    neutral_exp: torch.Tensor | None = None,
    mouth: bool = True,
    head: bool = True,
    head_window_s: float = 2.0,
) -> Motion:
    """Close the mouth and calm the head where ``weight (T,)`` (:func:`pause_weight`) is high.

    With ``w = strength * weight`` per frame: lip keypoints' expression ``exp + w (neutral - exp)``
    (``neutral_exp``: 63 numbers, best the portrait's kp_info ``exp``: the photo's own mouth; default:
    the clip's median expression, which stops the articulation at an average mouth), and head pose
    ``pose + w (slow - pose)`` with ``slow`` the centred ``head_window_s`` moving average of yaw, pitch,
    roll and t. ``strength`` in [0, 1]; 0 returns an unchanged copy. Same device and dtype as the motion.
    """
    strength = float(strength)
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise InputError(f"silence strength must be within [0, 1], got {strength}")
    data = motion.data.clone()
    if strength == 0.0 or not (mouth or head):
        return motion.with_data(data)
    weight = torch.as_tensor(weight).reshape(-1)
    if weight.shape[0] != motion.num_frames:
        raise InputError(f"pause weight has {weight.shape[0]} frames, the motion {motion.num_frames}")
    src = data.detach().to("cpu", torch.float64)
    w = (strength * weight.to(torch.float64)).reshape(-1, 1)
    out = src.clone()
    if mouth:
        exp = src[:, EXP_COLS].reshape(-1, NUM_KP, 3)
        if neutral_exp is not None:
            neutral = torch.as_tensor(neutral_exp).detach().to("cpu", torch.float64).reshape(NUM_KP, 3)
        else:
            neutral = exp.median(dim=0).values
        lips = list(LIP_KEYPOINTS)
        calmed = exp.clone()
        calmed[:, lips] = exp[:, lips] + w[:, :, None] * (neutral[lips] - exp[:, lips])
        out[:, EXP_COLS] = calmed.reshape(-1, 3 * NUM_KP)
    if head:
        pose = src[:, POSE_COLS]
        slow = _moving_average(pose, max(1, int(round(head_window_s * motion.fps))))
        out[:, POSE_COLS] = pose + w * (slow - pose)
    changed = (w.reshape(-1) > 0).to(data.device)  # frames outside pauses stay bit-identical
    data[changed] = out.to(data)[changed]
    return motion.with_data(data)


def calm_silences_from_audio(
    motion: Motion,
    waveform_16k: torch.Tensor,
    strength: float = 0.0,
    *,
    neutral_exp: torch.Tensor | None = None,
    mouth: bool = True,
    head: bool = True,
) -> Motion:
    """:func:`voice_activity` + :func:`pause_weight` + :func:`calm_silences` in one call.

    ``waveform_16k``: the 16 kHz mono audio the motion covers, starting at its frame 0 (e.g.
    ``AudioFeatures.waveform_16k``); works at the motion's own fps (also after :mod:`retime`).
    """
    if strength == 0:
        return motion.with_data(motion.data.clone())
    activity = voice_activity(waveform_16k, motion.num_frames, motion.fps)
    weight = pause_weight(activity, motion.fps)
    return calm_silences(motion, weight, strength, neutral_exp=neutral_exp, mouth=mouth, head=head)

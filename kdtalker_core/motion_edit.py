"""Motion utilities: pose/expression scaling, still head, blending, save/load and a plot.

Every edit returns a new :class:`~kdtalker_core.motion.Motion` (inputs are never modified) on the
input's device. Angles are degrees; see :mod:`kdtalker_core.motion` for the column layout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import publish, temp_beside
from .errors import InputError
from .motion import (
    EXP_COLS,
    MOTION_DIM,
    PITCH_COL,
    POSE_COLS,
    ROLL_COL,
    T_COLS,
    YAW_COL,
    Motion,
)

Center = Literal["first", "mean"]

#: ``format`` value in the metadata of saved motion files.
MOTION_FORMAT = "kdtalker-motion"
#: Version written by :func:`save_motion`; :func:`load_motion` reads this version and older.
MOTION_FORMAT_VERSION = 1
_TENSOR_KEY = "motion"


# --------------------------------------------------------------------------- edits


def _check_factor(name: str, factor: float) -> float:
    factor = float(factor)
    if not math.isfinite(factor):
        raise InputError(f"{name} must be a finite number, got {factor}")
    return factor


def _center_of(values: torch.Tensor, center: str | None) -> torch.Tensor:
    """(1,d) reference row of ``values (T,d)``: first frame, mean over time, or zeros for None."""
    if center is None:
        return torch.zeros_like(values[:1])
    if center == "first":
        return values[:1]
    if center == "mean":
        return values.mean(dim=0, keepdim=True)
    raise InputError(f"center must be 'first' or 'mean', got {center!r}")


def scale_pose(motion: Motion, factor: float, center: Center = "first") -> Motion:
    """Scale head movement: yaw, pitch, roll and t become ``c + factor * (v - c)``.

    ``c`` is the first frame (``center="first"``) or the mean over time (``"mean"``). 0 freezes the
    head at ``c``, 1 is unchanged, 2 doubles the motion. Scale and expression are not touched.
    """
    factor = _check_factor("pose factor", factor)
    data = motion.data.clone()
    pose = data[:, POSE_COLS]
    c = _center_of(pose, center)
    data[:, POSE_COLS] = c + factor * (pose - c)
    return motion.with_data(data)


def scale_expression(motion: Motion, factor: float, center: Center | None = None) -> Motion:
    """Scale the 63 expression deltas: ``c + factor * (exp - c)``.

    By default ``c = 0`` (the deltas themselves are scaled; 0 gives zero expression deltas, i.e.
    the canonical keypoints only); ``center="first"``/``"mean"`` scales the changes around the first
    frame / the average instead, which keeps the resting face and only damps or boosts articulation.
    """
    factor = _check_factor("expression factor", factor)
    data = motion.data.clone()
    exp = data[:, EXP_COLS]
    c = _center_of(exp, center)
    data[:, EXP_COLS] = c + factor * (exp - c)
    return motion.with_data(data)


def still_head(motion: Motion, source_kp_info: Mapping[str, torch.Tensor] | None = None) -> Motion:
    """Hold the head still: scale, yaw, pitch, roll and t constant over time; expression kept.

    Without ``source_kp_info`` they are fixed to the first frame's values; with it (a kp_info with
    ``scale (1,1)``, ``pitch/yaw/roll (1,1)`` degrees, ``t (1,3)``) to the source portrait's pose.
    """
    data = motion.data.clone()
    if source_kp_info is None:
        fixed = data[:1, : T_COLS.stop].clone()
    else:
        src = {k: v.to(data).reshape(-1) for k, v in source_kp_info.items()}
        fixed = torch.cat([src["scale"][:1], src["yaw"][:1], src["pitch"][:1], src["roll"][:1],
                           src["t"][:3]]).reshape(1, -1)
    data[:, : T_COLS.stop] = fixed
    return motion.with_data(data)


def blend(a: Motion, b: Motion, alpha: float) -> Motion:
    """``(1 - alpha) * a + alpha * b``, frame by frame, on ``a``'s device.

    Lengths: the result has the SHORTER length (both are truncated; no resampling). Both motions
    must have the same fps. ``alpha`` in [0, 1] (0 gives a, 1 gives b). Angles are blended linearly
    in degrees, which is right for the head-pose range (well inside +-180).
    """
    alpha = _check_factor("blend alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"blend alpha must be within [0, 1], got {alpha}")
    if abs(a.fps - b.fps) > 1e-6 * max(a.fps, b.fps):
        raise InputError(f"cannot blend motions of different frame rates ({a.fps} vs {b.fps} fps)")
    n = min(a.num_frames, b.num_frames)
    da = a.data[:n]
    db = b.data[:n].to(da)
    return a.with_data(torch.lerp(da, db, alpha))


# --------------------------------------------------------------------------- files


def save_motion(path: str | os.PathLike[str], motion: Motion) -> Path:
    """Write ``motion`` as a safetensors file (tensor ``motion`` (T,70) float32 + metadata ``format``,
    ``format_version``, ``fps``). Atomic: written to a temporary file in the same folder, then
    renamed over ``path``. Returns the path."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError(f"cannot save motion to {path}: folder {path.parent} does not exist")
    tensor = motion.data.detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": MOTION_FORMAT,
        "format_version": str(MOTION_FORMAT_VERSION),
        "fps": repr(float(motion.fps)),
        "columns": "scale,yaw,pitch,roll,tx,ty,tz,exp[63] (degrees for angles)",
    }
    tmp = temp_beside(path, ".tmp")
    try:
        save_file({_TENSOR_KEY: tensor}, str(tmp), metadata=metadata)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_motion(path: str | os.PathLike[str], device: torch.device | str | None = None) -> Motion:
    """Read a file written by :func:`save_motion` -> :class:`Motion` (float32, on ``device``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"motion file {path} does not exist: save one with the Save Motion utility first")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            tensor = f.get_tensor(_TENSOR_KEY) if _TENSOR_KEY in keys else None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise InputError(f"{path} is not a readable safetensors motion file ({exc})") from exc
    if meta.get("format") != MOTION_FORMAT or tensor is None:
        raise InputError(f"{path} is not a KDTalker motion file (no '{MOTION_FORMAT}' metadata)")
    try:
        version = int(meta.get("format_version", "0"))
        fps = float(meta.get("fps", "nan"))
    except ValueError as exc:
        raise InputError(f"{path} has unreadable motion metadata: {meta}") from exc
    if version > MOTION_FORMAT_VERSION:
        raise InputError(
            f"{path} uses motion format version {version}; this version of the package reads up to "
            f"{MOTION_FORMAT_VERSION}: update ComfyUI-KDTalker"
        )
    if tensor.ndim != 2 or tensor.shape[1] != MOTION_DIM:
        raise InputError(f"{path} holds a {tuple(tensor.shape)} tensor, expected (T,{MOTION_DIM})")
    return Motion(tensor.float().to(device) if device is not None else tensor.float(), fps)


# --------------------------------------------------------------------------- plot

_BG = np.array([1.0, 1.0, 1.0], dtype=np.float32)
_GRID = np.array([0.88, 0.88, 0.88], dtype=np.float32)
_AXIS = np.array([0.55, 0.55, 0.55], dtype=np.float32)
_FRAME = np.array([0.3, 0.3, 0.3], dtype=np.float32)
_COLORS = np.array(
    [[0.85, 0.15, 0.15], [0.15, 0.55, 0.15], [0.15, 0.3, 0.85], [0.85, 0.5, 0.05], [0.55, 0.2, 0.7]],
    dtype=np.float32,
)


def _draw_panel(img: np.ndarray, top: int, height: int, curves: list[np.ndarray], fps: float) -> None:
    """Draw ``curves`` (each (T,)) into rows ``top..top+height`` of ``img (H,W,3)`` (in place).

    Shared autoscaled y axis with a small margin, a darker line at value 0 when in range, light
    vertical grid lines every second, a coloured legend square per curve at the top left.
    """
    width = img.shape[1]
    panel = img[top:top + height]
    panel[:] = _BG
    frames = len(curves[0])
    # vertical grid: one line per second of motion
    if frames > 1:
        for sec in range(1, int((frames - 1) / fps) + 1):
            x = round(sec * fps / (frames - 1) * (width - 1))
            panel[:, x] = _GRID
    stacked = np.stack(curves)
    finite = stacked[np.isfinite(stacked)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 1.0, hi + 1.0
    margin = 0.08 * (hi - lo)
    lo, hi = lo - margin, hi + margin

    def to_row(v: np.ndarray) -> np.ndarray:
        return np.clip((hi - v) / (hi - lo) * (height - 1), 0, height - 1)

    if lo < 0 < hi:
        panel[int(round(float(to_row(np.array(0.0))))), :] = _AXIS
    xs = np.linspace(0.0, frames - 1, width) if frames > 1 else np.zeros(width)
    rows = np.arange(height, dtype=np.float32)[:, None]
    for idx, curve in enumerate(curves):
        y = to_row(np.interp(xs, np.arange(frames), np.nan_to_num(curve)))
        prev = np.concatenate([y[:1], y[:-1]])
        y0, y1 = np.minimum(prev, y) - 0.8, np.maximum(prev, y) + 0.8  # ~2 px thick segments
        mask = (rows >= y0[None, :]) & (rows <= y1[None, :])
        panel[mask] = _COLORS[idx % len(_COLORS)]
        sq = 6 + 12 * idx
        panel[4:12, sq:sq + 8] = _COLORS[idx % len(_COLORS)]
    panel[0, :] = _FRAME
    panel[-1, :] = _FRAME
    panel[:, 0] = _FRAME
    panel[:, -1] = _FRAME


def plot_motion(motion: Motion, width: int = 768, height: int = 384, num_exp: int = 2) -> torch.Tensor:
    """A simple chart of the motion -> ``(height, width, 3)`` float32 RGB in [0,1] on the CPU.

    Top panel: yaw (red), pitch (green), roll (blue) in degrees. Bottom panel: the ``num_exp``
    expression dimensions that vary most over time (red, green, ...), e.g. mouth opening. Each
    panel is autoscaled; a darker line marks 0, light vertical lines mark every second. Drawn
    with numpy only.
    """
    if width < 32 or height < 32:
        raise InputError(f"plot size must be at least 32x32, got {width}x{height}")
    data = motion.data.detach().to("cpu", torch.float64).numpy()
    img = np.empty((height, width, 3), dtype=np.float32)
    top_h = height // 2
    _draw_panel(img, 0, top_h, [data[:, YAW_COL], data[:, PITCH_COL], data[:, ROLL_COL]], motion.fps)
    exp = data[:, EXP_COLS]
    order = np.argsort(-exp.std(axis=0), kind="stable")[: max(1, num_exp)]
    _draw_panel(img, top_h, height - top_h, [exp[:, i] for i in sorted(order)], motion.fps)
    return torch.from_numpy(img)


__all__ = [
    "MOTION_FORMAT",
    "MOTION_FORMAT_VERSION",
    "blend",
    "load_motion",
    "plot_motion",
    "save_motion",
    "scale_expression",
    "scale_pose",
    "still_head",
]


# --------------------------------------------------------------------------- performance plot

_PAUSE_TINT = np.array([0.86, 0.92, 1.0], dtype=np.float32)


def _busiest_lip_coordinate(exp: torch.Tensor, lips: tuple[int, ...]) -> tuple[int, int]:
    """(keypoint, axis) of the lip keypoint coordinate of ``exp (T,21,3)`` with the largest std over time."""
    values = exp[:, list(lips)].reshape(exp.shape[0], -1)
    k, axis = divmod(int(values.std(0).argmax()) if exp.shape[0] > 1 else 0, 3)
    return lips[k], axis


def face_signals(motion: Motion, mouth_dim: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Per-frame signals of a motion, float64 ``(T,)`` each: ``yaw`` (degrees), ``eyes`` (eyelid
    closure: the expression projected on :data:`~kdtalker_core.retarget.EYE_CLOSE_OFFSETS`, 1 = the
    fallback's full closure) and ``mouth`` (one lip keypoint coordinate ``exp[k, axis]``; default the
    lip keypoint coordinate that varies most over time)."""
    from .retarget import EYE_CLOSE_OFFSETS, LIP_KEYPOINTS

    data = motion.data.detach().to("cpu", torch.float64)
    exp = data[:, EXP_COLS].reshape(-1, 21, 3)
    close = EYE_CLOSE_OFFSETS.to(torch.float64)
    eyes = (exp * close).sum((1, 2)) / (close * close).sum()
    if mouth_dim is None:
        mouth_dim = _busiest_lip_coordinate(exp, LIP_KEYPOINTS)
    return {"yaw": data[:, YAW_COL].numpy(), "eyes": eyes.numpy(),
            "mouth": exp[:, mouth_dim[0], mouth_dim[1]].numpy()}


def plot_performance(
    before: Motion,
    after: Motion,
    pause: torch.Tensor | None = None,
    width: int = 768,
    height: int = 480,
) -> torch.Tensor:
    """Before / after chart of a performance edit (blinks, silences) -> ``(height, width, 3)`` float32 RGB.

    Three panels, each with ``before`` in red and ``after`` in green: head yaw (degrees), eyelid closure
    and mouth opening (see :func:`face_signals`; the mouth coordinate is chosen on ``before``). ``pause
    (T,)``: optional pause weight (:func:`kdtalker_core.silence.pause_weight`); frames above 0.5 get a
    light blue background. Both motions must have the same frame count and fps.
    """
    if before.num_frames != after.num_frames or abs(before.fps - after.fps) > 1e-6:
        raise InputError(f"plot_performance needs motions of equal length and fps, got {before.num_frames} "
                         f"@ {before.fps} and {after.num_frames} @ {after.fps}")
    if width < 32 or height < 48:
        raise InputError(f"plot size must be at least 32x48, got {width}x{height}")
    from .retarget import LIP_KEYPOINTS

    dim = _busiest_lip_coordinate(before.data.detach().to("cpu", torch.float64)[:, EXP_COLS].reshape(-1, 21, 3),
                                  LIP_KEYPOINTS)
    sig_b = face_signals(before, dim)
    sig_a = face_signals(after, dim)
    img = np.empty((height, width, 3), dtype=np.float32)
    edges = [0, height // 3, 2 * height // 3, height]
    for i, name in enumerate(("yaw", "eyes", "mouth")):
        _draw_panel(img, edges[i], edges[i + 1] - edges[i], [sig_b[name], sig_a[name]], before.fps)
    if pause is not None:
        w = torch.as_tensor(pause).detach().to("cpu", torch.float64).reshape(-1).numpy()
        frames = w.shape[0]
        xs = np.linspace(0.0, frames - 1, width) if frames > 1 else np.zeros(width)
        cols = np.interp(xs, np.arange(frames), w) > 0.5
        background = np.all(img == _BG, axis=2) & cols[None, :]
        img[background] = _PAUSE_TINT
    return torch.from_numpy(img)


__all__ += ["face_signals", "plot_performance"]

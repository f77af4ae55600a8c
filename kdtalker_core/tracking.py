"""Face tracking over a video and per-frame portrait crops with a temporally smoothed crop window.

:func:`track_face`: the face is detected on the first frame (dlib, :func:`kdtalker_core.face.detect_faces`),
then followed frame to frame by running only the 68-point predictor inside a box predicted from the
previous frame's landmarks (twice, so the box re-centres on the moved face). A frame whose landmarks
are implausible (the shape differs from the previous one after a similarity alignment, it jumps or
changes size too much, or the face patch aligned by the landmarks no longer looks like the previous
frame's) counts as lost: the detector runs again on that frame and the detection whose aligned patch
looks most like the tracked face is taken; with no detection the last landmarks are held.

The landmark track is then smoothed over time with a zero-lag Gaussian filter (``smoothing`` = its
standard deviation in frames): the crop window, which is a function of the landmarks (the FFHQ quad
of :func:`kdtalker_core.face.ffhq_quad`), moves smoothly instead of jittering with the landmark
noise. :func:`crop_track` cuts the same crop as a portrait gets (:func:`kdtalker_core.face.crop_portrait`,
any crop mode) from every frame with the smoothed landmarks.

Coordinates: (x, y) pixels as dlib reports them; landmarks of the track are float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import face
from .errors import FaceError, InputError

#: Largest shape residual (RMS after similarity alignment, relative to the face size) of a tracked frame.
MAX_SHAPE_RESIDUAL = 0.12
#: Largest per-frame size change factor and centroid jump (in face sizes) of a tracked frame.
MAX_SIZE_CHANGE = 1.35
MAX_JUMP = 0.6
#: Smallest normalised cross-correlation of the aligned gray face patch with the previous frame's.
MIN_PATCH_NCC = 0.6
#: Side of that patch in pixels.
PATCH_SIZE = 24


@dataclass
class FaceTrack:
    """A face followed over T frames.

    Attributes:
        landmarks: (T, 68, 2) float64 tracked landmarks (raw, per frame).
        smoothed: (T, 68, 2) float64 landmarks after the temporal smoothing (what the crops use).
        detected: (T,) bool, frames on which the detector ran (the first, and re-detections).
        lost: (T,) bool, frames where following the previous frame failed and the face found again
            is not where it was (a cut or a jump); the temporal smoothing does not cross them.
        held: (T,) bool, frames where no face was found and the previous landmarks were held.
        frame_hw: (height, width) of the frames.
    """

    landmarks: np.ndarray
    smoothed: np.ndarray
    detected: np.ndarray
    lost: np.ndarray
    held: np.ndarray
    frame_hw: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return int(self.landmarks.shape[0])

    def face(self, index: int) -> face.FaceDetection:
        """The smoothed face of frame ``index`` (box = the landmarks' bounding box)."""
        lm = self.smoothed[index]
        box = tuple(int(round(v)) for v in (*lm.min(axis=0), *lm.max(axis=0)))
        return face.FaceDetection(box=box, landmarks=lm)  # type: ignore[arg-type]


def _size(lm: np.ndarray) -> float:
    """RMS distance of the landmarks from their centroid (pixels)."""
    return float(np.sqrt(((lm - lm.mean(axis=0)) ** 2).sum(axis=1).mean()))


def shape_residual(lm: np.ndarray, ref: np.ndarray) -> float:
    """RMS residual of ``lm`` after the best similarity fit of ``ref`` onto it, over the face size."""
    a = ref - ref.mean(axis=0)
    b = lm - lm.mean(axis=0)
    ca, cb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    denom = float((np.abs(ca) ** 2).sum())
    if denom == 0.0:
        return float("inf")
    z = (np.conj(ca) * cb).sum() / denom  # complex scale+rotation minimising |z*ca - cb|
    res = np.sqrt((np.abs(z * ca - cb) ** 2).mean())
    return float(res / max(_size(lm), 1e-9))


class _BoxModel:
    """The detector box as a function of the landmarks (learned on the first detection)."""

    def __init__(self, det: face.FaceDetection) -> None:
        lm = det.landmarks.astype(np.float64)
        l, t, r, b = det.box
        size = max(_size(lm), 1e-6)
        self.offset = (np.array([(l + r) / 2.0, (t + b) / 2.0]) - lm.mean(axis=0)) / size
        self.half = np.array([(r - l) / 2.0, (b - t) / 2.0]) / size

    def box(self, lm: np.ndarray, hw: tuple[int, int]) -> tuple[int, int, int, int]:
        size = _size(lm)
        c = lm.mean(axis=0) + self.offset * size
        half = self.half * size
        h, w = hw
        l, t = np.floor(c - half).astype(int)
        r, b = np.ceil(c + half).astype(int)
        l, t = int(np.clip(l, 0, w - 2)), int(np.clip(t, 0, h - 2))
        r, b = int(np.clip(r, l + 1, w - 1)), int(np.clip(b, t + 1, h - 1))
        return l, t, r, b


def face_patch(img: np.ndarray, lm: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Gray (size, size) float64 patch of the face's FFHQ quad (rotation/scale normalised), bilinear."""
    c, x, y = face.ffhq_quad(lm)
    t = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    v, u = np.meshgrid(t, t, indexing="ij")
    px = c[0] + u * x[0] + v * y[0]
    py = c[1] + u * x[1] + v * y[1]
    h, w = img.shape[:2]
    px, py = np.clip(px, 0, w - 1), np.clip(py, 0, h - 1)
    # only the region the samples touch is converted to gray
    bx0, by0 = int(max(np.floor(px.min()) - 1, 0)), int(max(np.floor(py.min()) - 1, 0))
    bx1, by1 = int(min(np.ceil(px.max()) + 2, w)), int(min(np.ceil(py.max()) + 2, h))
    bx0, by0 = min(bx0, w - 2), min(by0, h - 2)
    bx1, by1 = max(bx1, bx0 + 2), max(by1, by0 + 2)
    gray = img[by0:by1, bx0:bx1].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    px, py = px - bx0, py - by0
    h, w = gray.shape
    x0, y0 = np.minimum(np.floor(px).astype(int), w - 2).clip(0), np.minimum(np.floor(py).astype(int), h - 2).clip(0)
    fx, fy = px - x0, py - y0
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    top = gray[y0, x0] * (1 - fx) + gray[y0, x1] * fx
    bottom = gray[y1, x0] * (1 - fx) + gray[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _plausible(lm: np.ndarray, prev: np.ndarray, patch: np.ndarray | None = None,
               prev_patch: np.ndarray | None = None) -> bool:
    """Is ``lm`` the face of ``prev`` one frame later? Size change, jump, shape and (when the
    patches are given) appearance of the aligned face patch must all be close."""
    s0, s1 = _size(prev), _size(lm)
    if not (np.isfinite(lm).all() and s1 > 0):
        return False
    jump = float(np.hypot(*(lm.mean(axis=0) - prev.mean(axis=0)))) / s0
    ratio = max(s1 / s0, s0 / s1)
    if ratio > MAX_SIZE_CHANGE or jump > MAX_JUMP or shape_residual(lm, prev) > MAX_SHAPE_RESIDUAL:
        return False
    return patch is None or prev_patch is None or _ncc(patch, prev_patch) >= MIN_PATCH_NCC


def gaussian_smooth(seq: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-lag Gaussian filter over axis 0 of ``seq (T, ...)`` with ``sigma`` frames (0: a copy).

    Edges are padded by reflection (about the end frames), so a constant track stays constant and
    a linear one stays linear away from the ends. float64.
    """
    if sigma < 0 or not np.isfinite(sigma):
        raise InputError(f"crop smoothing must be a finite number >= 0 (frames), got {sigma}")
    x = np.asarray(seq, dtype=np.float64)
    if sigma == 0 or x.shape[0] <= 1:
        return x.copy()
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    n = x.shape[0]
    idx = np.arange(-radius, n + radius)
    period = 2 * (n - 1)
    idx = np.abs(idx) % period
    idx = np.where(idx < n, idx, period - idx)
    padded = x[idx]
    out = np.zeros_like(x)
    for j, w in enumerate(k):
        out += w * padded[j:j + n]
    return out


def _best_match(faces: Sequence[face.FaceDetection], img: np.ndarray, patch: np.ndarray) -> face.FaceDetection:
    """The detection whose aligned face patch looks most like ``patch`` (the tracked face)."""
    return max(faces, key=lambda f: _ncc(face_patch(img, f.landmarks.astype(np.float64)), patch))


def track_face(
    frames: Any,
    *,
    face_index: int = 0,
    order: face.FaceOrder = "detector",
    smoothing: float = 1.5,
    redetect_every: int = 0,
    callback: Callable[[int, int], None] | None = None,
) -> FaceTrack:
    """Track one face through ``frames`` (T,H,W,3) (uint8 or float [0,1], numpy or torch).

    ``face_index``/``order`` choose the face on the first frame (as for a portrait);
    ``smoothing``: standard deviation of the temporal Gaussian filter of the crop landmarks, in
    frames (0 = per-frame crops); ``redetect_every`` > 0 also runs the detector every that many
    frames. Raises :class:`~kdtalker_core.errors.FaceError` when the first frame has no face.
    """
    frames = as_frame_list(frames)
    n = len(frames)
    if n < 1:
        raise InputError("the driving video has no frames")
    first = face.to_rgb_uint8(frames[0], "driving video frame 0")
    hw = first.shape[:2]
    det = face.choose_face(face.detect_faces(first, name="driving video frame 0"), face_index, order,
                           name="driving video frame 0")
    box_model = _BoxModel(det)
    lms = np.zeros((n, 68, 2), dtype=np.float64)
    detected = np.zeros(n, dtype=bool)
    held = np.zeros(n, dtype=bool)
    lost = np.zeros(n, dtype=bool)
    lms[0], detected[0] = det.landmarks, True
    prev_patch = face_patch(first, lms[0])
    for i in range(1, n):
        img = face.to_rgb_uint8(frames[i], f"driving video frame {i}")
        if img.shape[:2] != hw:
            raise InputError(f"driving video frame {i} is {img.shape[1]}x{img.shape[0]}, frame 0 is "
                             f"{hw[1]}x{hw[0]}: all frames must have one size")
        prev = lms[i - 1]
        lm = prev
        for _ in range(2):  # predict in the previous box, then re-centre the box on the result
            lm = face.landmarks_for_box(img, box_model.box(lm, hw)).astype(np.float64)
        periodic = redetect_every > 0 and i % redetect_every == 0
        ok = _plausible(lm, prev, face_patch(img, lm), prev_patch)
        if periodic or not ok:
            found = face.detect_faces(img, allow_empty=True)
            detected[i] = True
            if found:
                lm = _best_match(found, img, prev_patch).landmarks.astype(np.float64)
            elif not ok:
                lm, held[i] = prev, True
            # a break in the track (a cut, a jump): the face is not where the last frame's was
            lost[i] = not ok and not _plausible(lm, prev)
        lms[i] = lm
        if not held[i]:
            prev_patch = face_patch(img, lm)
        if callback is not None:
            callback(i + 1, n)
    smoothed = np.empty_like(lms)
    starts = [0, *np.flatnonzero(lost).tolist(), n]
    for a, b in zip(starts[:-1], starts[1:]):  # smooth each continuous stretch on its own
        smoothed[a:b] = gaussian_smooth(lms[a:b], smoothing)
    return FaceTrack(landmarks=lms, smoothed=smoothed, detected=detected, lost=lost, held=held, frame_hw=hw)


def crop_track(frames: Any, track: FaceTrack, *, mode: face.CropMode = "official",
               size: int = face.SOURCE_SIZE) -> np.ndarray:
    """Portrait crops of every frame along the smoothed track -> (T, size, size, 3) uint8."""
    frames = as_frame_list(frames)
    if len(frames) != track.num_frames:
        raise InputError(f"{len(frames)} frames but the track has {track.num_frames}")
    out = np.empty((track.num_frames, size, size, 3), dtype=np.uint8)
    for i in range(track.num_frames):
        try:
            crop = face.crop_portrait(frames[i], mode=mode, face=track.face(i), size=size,
                                      name=f"driving video frame {i}")
        except FaceError as exc:
            raise FaceError(f"driving video frame {i}: {exc}") from exc
        out[i] = crop.source
    return out


def as_frame_list(frames: Any) -> Sequence[Any]:
    """A (T,H,W,C) array/tensor (or a list of frames) as something indexable per frame."""
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        if frames.ndim != 4:
            raise InputError(f"a video must be (T,H,W,C), got shape {tuple(frames.shape)}")
        return frames
    return list(frames)

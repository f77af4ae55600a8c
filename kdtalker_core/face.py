"""Faces: dlib detection + 68 landmarks, the official KDTalker crop, an aligned square crop, and the
crop-to-photo mapping used to paste rendered frames back (paste-back itself is in
:mod:`kdtalker_core.paste`, which does not import this module; its functions are re-exported here).

Pipeline (official mode): photo -> :func:`detect_faces` (dlib frontal detector, 1 upsampling) ->
:func:`choose_face` -> :func:`official_crop_params` (the FFHQ-style quad of KDTalker's croper) ->
:func:`official_crop` -> :func:`~kdtalker_core.imresize.resize_linear_u8` to 256x256 (byte-identical
to OpenCV's INTER_LINEAR) -> :class:`PortraitCrop`. :func:`crop_portrait` does all of it.

Coordinates: landmarks and boxes are integer pixel indices (x, y) as dlib reports them. The
crop-to-photo affine of :class:`PortraitCrop` uses *edge* coordinates: photo pixel ``(i, j)`` covers
``[i, i+1) x [j, j+1)``; the crop is the unit square ``[0, 1]^2``. That makes it independent of the
resolution of the rendered frames (256 or 512).

Deviations from the official code (all documented, none changes the golden fixture):

* **Bottom clamp.** The official code clamps the quad's bottom edge ``ry`` by the image *width*. By
  default we clamp it by the height (``bottom_clamp="height"``); ``bottom_clamp="width"`` reproduces
  the quirk (the golden checker uses it). The two agree whenever ``max(q3, q5) <= min(W, H)``, e.g. on
  square photos; numpy slicing then clamps to the crop box anyway.
* **Huge faces (shrink > 1**, i.e. a face quad of 2048 px or more): the official code calls PIL's
  removed ``Image.ANTIALIAS`` and crashes with Pillow >= 10 (older Pillow then downscaled with plain
  bilinear INTER_LINEAR, which aliases). We downscale with a box filter of the shrink factor (every
  photo pixel counts) to the same ``rsize`` and continue with the same arithmetic.
* **No face** raises :class:`~kdtalker_core.errors.FaceError` (the official code raises a string,
  itself a TypeError).
* **Large photos**: images whose longer side exceeds ``detect_max_side`` (default 1024) are detected
  on a copy box-filtered down by an integer factor (same upsampling), and the 68-point predictor
  then runs on the full-resolution photo with the box scaled back. Photos up to that size follow the
  official path exactly.
* **Input formats**: RGBA drops alpha (as PIL's ``convert('RGB')`` does), grayscale is replicated to
  3 channels, float images in [0, 1] are scaled by 255 and rounded (so ComfyUI IMAGE tensors of
  loaded 8-bit pictures give back the exact bytes), torch tensors are accepted.
* **Empty crop** (a quad entirely outside the crop box, possible only for nonsensical landmarks)
  raises FaceError instead of returning an empty array.
* **Trusted detections.** dlib reports every window scoring above 0, and weak windows are often not
  faces (on skimage's astronaut photo a patch of the suit scores 0.16 against 1.21 for the face, with
  a box only 1% smaller, so "largest first" was one resize away from animating it). :func:`detect_faces`
  therefore keeps a further detection only when its score reaches both :data:`MIN_FACE_SCORE` and
  :data:`MIN_RELATIVE_SCORE` times the best score, and its 68 landmarks pass
  :func:`landmark_problems` (eyes above nose above mouth, sensible proportions, roughly symmetric).
  The most confident detection is always kept, whatever its score: it is the official choice, so
  the default (``order="detector"``, index 0) picks exactly the face the official code picks.
  ``trusted=False`` returns dlib's raw list.

The "square" crop modes (not in the official code) sample the FFHQ quad itself: a square of side
``qsize`` centred at ``eye_avg + 0.1 * eye_to_mouth``, rotated with the face (mode ``"square"``, the
FFHQ alignment: the eye line becomes nearly horizontal) or axis-aligned (``"square_axis"``), bilinear
with an antialiased pre-downscale for large faces and reflection padding where it leaves the photo.
It always has the right aspect ratio, unlike the official crop, which is clamped at the photo
border and then stretched to 256x256.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FaceError, InputError
from .imresize import box_reduce_u8, resize_linear_u8
from .paste import make_paste_mask, paste_back, paste_geometry  # re-exported (see __all__)

FaceOrder = Literal["detector", "largest", "left_to_right", "top_to_bottom"]
CropMode = Literal["official", "square", "square_axis"]

#: Side of the source image LivePortrait consumes.
SOURCE_SIZE = 256
#: Longest photo side detected at full resolution; larger photos are detected on a downscaled copy.
DETECT_MAX_SIDE = 1024
LANDMARK_MODEL_NAME = "shape_predictor_68_face_landmarks.dat"
#: A detection after the most confident one must score at least this much (dlib's SVM margin; real,
#: roughly frontal faces of 80 px and more score about 0.5 to 2.5, false windows mostly below 0.2).
MIN_FACE_SCORE = 0.25
#: ... and at least this fraction of the best score in the photo.
MIN_RELATIVE_SCORE = 0.25

_FIX_HINT = (
    "Use a clearer, well-lit, roughly frontal photo in which the face is at least about 80 pixels "
    "wide, or pass the face box / 68 landmarks yourself."
)


# --------------------------------------------------------------------------------------------
# image normalisation
# --------------------------------------------------------------------------------------------


def to_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """Any supported picture -> C-contiguous (H, W, 3) uint8 RGB numpy array.

    Accepts numpy arrays or torch tensors shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (also with
    a leading batch of 1), dtype uint8, or float with values in [0, 1] (scaled by 255 and rounded).
    Alpha is dropped; gray is replicated.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype in (torch.float16, torch.bfloat16):
            image = image.float()
        image = image.numpy()
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{name}: expected an image shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got {arr.shape}. Pass a single RGB picture.")
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: the image contains NaN or infinite values; pass a valid picture.")
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    else:
        raise InputError(f"{name}: unsupported image dtype {arr.dtype}; pass uint8 or float in [0, 1].")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------
# dlib models (loaded lazily, once)
# --------------------------------------------------------------------------------------------

_models_lock = threading.Lock()
_models: dict[str, Any] = {}


def landmark_model_path() -> Path:
    """Path of the 68-landmark model shipped in the ``face-recognition-models`` wheel.

    The package is located without importing it (its ``__init__`` needs setuptools' pkg_resources).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceError("The face landmark model is missing: install it with `pip install "
                        "face-recognition-models` (it ships shape_predictor_68_face_landmarks.dat).")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / LANDMARK_MODEL_NAME
    if not path.is_file():
        raise FaceError(f"{path} is missing: reinstall face-recognition-models "
                        "(`pip install --force-reinstall face-recognition-models`).")
    return path


def _dlib_models() -> tuple[Any, Any]:
    """(frontal face detector, 68-point shape predictor), created on first use and cached."""
    with _models_lock:
        if not _models:
            try:
                import dlib
            except ImportError as exc:  # pragma: no cover - dependency missing
                raise FaceError("dlib is not installed: `pip install dlib-bin`.") from exc
            _models["detector"] = dlib.get_frontal_face_detector()
            _models["predictor"] = dlib.shape_predictor(str(landmark_model_path()))
            _models["rectangle"] = dlib.rectangle
        return _models["detector"], _models["predictor"]


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FaceDetection:
    """One face in a photo.

    Attributes:
        box: (left, top, right, bottom) int pixel indices, inclusive as dlib reports them.
        landmarks: (68, 2) int64 (x, y) pixel coordinates, iBUG 68-point order.
        score: detector confidence (larger is surer); ``inf`` for user-supplied faces.
    """

    box: tuple[int, int, int, int]
    landmarks: np.ndarray = field(repr=False)
    score: float = float("inf")

    @property
    def area(self) -> int:
        """Box area in pixels."""
        l, t, r, b = self.box
        return max(r - l, 0) * max(b - t, 0)

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y) in pixels."""
        l, t, r, b = self.box
        return (l + r) / 2.0, (t + b) / 2.0


def _predict_landmarks(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    _, predictor = _dlib_models()
    shape = predictor(img, _models["rectangle"](*(int(v) for v in box)))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.int64)


def landmarks_for_box(image: Any, box: tuple[int, int, int, int], name: str = "image") -> np.ndarray:
    """Run only the 68-point predictor inside a given (left, top, right, bottom) box -> (68, 2) int64."""
    img = to_rgb_uint8(image, name)
    l, t, r, b = (int(v) for v in box)
    if r <= l or b <= t:
        raise InputError(f"{name}: face box {box} is empty; give (left, top, right, bottom) with "
                         "right > left and bottom > top.")
    return _predict_landmarks(img, (l, t, r, b))


def landmark_problems(landmarks: Any, box: tuple[int, int, int, int] | None = None) -> list[str]:
    """Why 68 landmarks do not look like a face ([] when they do).

    The predictor always returns a face-shaped set of points, but inside a window that holds no face
    it is often squashed, flipped or lopsided. Measured in the face's own frame (x along the line
    from the image-left eye centre (points 36-41) to the image-right one (42-47), y perpendicular,
    pointing down the face; lengths in inter-ocular distances ``iod``):

    * order: the nose tip (30) lies below the eye line and above the mouth centre (48-67);
    * proportions: eye line to mouth 0.6-2.0 iod; ``iod`` is 0.2-0.8 of the box width (if ``box``);
    * symmetry: nose tip and mouth centre within 0.75 iod of the eye midpoint sideways; the two
      eyes' widths (36-39, 42-45) within a factor 2.5 of each other.

    Args:
        landmarks: (68, 2) (x, y) pixels, iBUG order.
        box: (left, top, right, bottom) of the detection, pixels (optional).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        return [f"landmarks must be a finite (68, 2) array, got shape {lm.shape}"]
    left_eye, right_eye = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    iod = float(np.hypot(*(right_eye - left_eye)))
    if iod < 1.0:
        return ["the eyes coincide"]
    ax = (right_eye - left_eye) / iod
    ay = np.array([-ax[1], ax[0]])  # image y points down: ax = (1, 0) gives ay = (0, 1)
    mid = (left_eye + right_eye) / 2.0
    nose, mouth = lm[30] - mid, lm[48:68].mean(axis=0) - mid
    nose_y, mouth_y = float(nose @ ay) / iod, float(mouth @ ay) / iod
    problems = []
    if not 0.0 < nose_y < mouth_y:
        problems.append(f"eyes, nose and mouth are not in order down the face (nose {nose_y:.2f}, "
                        f"mouth {mouth_y:.2f} iod below the eyes)")
    if not 0.6 <= mouth_y <= 2.0:
        problems.append(f"the mouth is {mouth_y:.2f} inter-ocular distances below the eyes (0.6-2.0)")
    if box is not None:
        width = float(box[2] - box[0] + 1)
        if width > 0 and not 0.2 <= iod / width <= 0.8:
            problems.append(f"the eyes are {iod / width:.2f} box widths apart (0.2-0.8)")
    for part, vec in (("nose", nose), ("mouth", mouth)):
        side = abs(float(vec @ ax)) / iod
        if side > 0.75:
            problems.append(f"the {part} is {side:.2f} inter-ocular distances off centre (at most 0.75)")
    widths = float(np.hypot(*(lm[39] - lm[36]))), float(np.hypot(*(lm[45] - lm[42])))
    if min(widths) <= 0 or max(widths) / min(widths) > 2.5:
        problems.append(f"the eyes' widths {widths[0]:.1f} and {widths[1]:.1f} px differ by more than 2.5x")
    return problems


def trusted_faces(
    faces: list[FaceDetection],
    *,
    min_score: float = MIN_FACE_SCORE,
    min_relative_score: float = MIN_RELATIVE_SCORE,
    check_landmarks: bool = True,
) -> list[FaceDetection]:
    """Drop the detections that are probably not faces; keep the order.

    The first face (the detector's most confident, the official choice) is always kept. Each other
    one needs ``score >= max(min_score, min_relative_score * best)`` (best: the highest finite score;
    user-supplied faces score ``inf`` and always pass) and, with ``check_landmarks``, no
    :func:`landmark_problems`.
    """
    if not faces:
        return []
    finite = [f.score for f in faces if math.isfinite(f.score)]
    best = max(finite) if finite else 0.0
    floor = max(float(min_score), float(min_relative_score) * best)
    kept = [faces[0]]
    for f in faces[1:]:
        if f.score < floor:
            continue
        if check_landmarks and landmark_problems(f.landmarks, f.box):
            continue
        kept.append(f)
    return kept


def detect_faces(
    image: Any,
    *,
    name: str = "image",
    upsample: int = 1,
    detect_max_side: int | None = DETECT_MAX_SIDE,
    allow_empty: bool = False,
    trusted: bool = True,
    min_score: float = MIN_FACE_SCORE,
    min_relative_score: float = MIN_RELATIVE_SCORE,
) -> list[FaceDetection]:
    """Detect every face with dlib's frontal detector and predict its 68 landmarks.

    Args:
        image: the photo (see :func:`to_rgb_uint8` for accepted forms).
        name: how to call the image in error messages (e.g. a file name).
        upsample: detector pyramid upsampling (1 as the official code).
        detect_max_side: photos with a longer side are detected on a copy box-filtered down by an
            integer factor; landmarks are still predicted on the full photo. None disables.
        allow_empty: return [] instead of raising when there is no face.
        trusted: drop probable false detections (:func:`trusted_faces` with ``min_score`` and
            ``min_relative_score``); the most confident detection is always kept. False: every
            window dlib reports with a positive score.

    Returns:
        Faces in detector order (most confident first), boxes/landmarks in photo pixels.

    Raises:
        FaceError: no face was found (unless ``allow_empty``).
    """
    img = to_rgb_uint8(image, name)
    detector, _ = _dlib_models()
    h, w = img.shape[:2]
    f = 1
    if detect_max_side is not None and max(h, w) > detect_max_side:
        f = min(math.ceil(max(h, w) / detect_max_side), min(h, w))
    small = box_reduce_u8(img, f)
    rects, scores, _ = detector.run(small, int(upsample), 0.0)
    faces = []
    for rect, score in zip(rects, scores):
        # small pixel i covers photo pixels [i*f, (i+1)*f): scale the box's pixel edges back
        box = (rect.left() * f, rect.top() * f, (rect.right() + 1) * f - 1, (rect.bottom() + 1) * f - 1)
        faces.append(FaceDetection(box=box, landmarks=_predict_landmarks(img, box), score=float(score)))
    if trusted:
        faces = trusted_faces(faces, min_score=min_score, min_relative_score=min_relative_score)
    if not faces and not allow_empty:
        raise FaceError(f"No face was found in {name} ({w}x{h} pixels). {_FIX_HINT}")
    return faces


_ORDER_KEYS = {
    "detector": None,
    "largest": lambda f: -f.area,
    "left_to_right": lambda f: f.center[0],
    "top_to_bottom": lambda f: f.center[1],
}


def choose_face(
    faces: list[FaceDetection], index: int = 0, order: FaceOrder = "detector", *, name: str = "image"
) -> FaceDetection:
    """Pick one face: sort by ``order`` (stable, so ties keep detector order) and take ``index``.

    ``"detector"`` is the official choice (the first, most confident detection).
    """
    if order not in _ORDER_KEYS:
        raise InputError(f"Unknown face order {order!r}; use one of {sorted(_ORDER_KEYS)}.")
    if not faces:
        raise FaceError(f"No face was found in {name}. {_FIX_HINT}")
    key = _ORDER_KEYS[order]
    ordered = list(faces) if key is None else sorted(faces, key=key)
    if not -len(ordered) <= index < len(ordered):
        raise FaceError(f"Face index {index} was requested in {name}, but only {len(ordered)} "
                        f"face{'s were' if len(ordered) != 1 else ' was'} found; use an index from 0 to "
                        f"{len(ordered) - 1}.")
    return ordered[index]


def find_face(
    image: Any,
    *,
    name: str = "image",
    index: int = 0,
    order: FaceOrder = "detector",
    box: tuple[int, int, int, int] | None = None,
    landmarks: Any = None,
    detect_max_side: int | None = DETECT_MAX_SIDE,
) -> FaceDetection:
    """The face to animate: user landmarks (68, 2) win, else a user box (predictor only), else detection."""
    if landmarks is not None:
        lm = np.asarray(landmarks)
        if lm.shape != (68, 2) or not np.isfinite(lm).all():
            raise InputError(f"{name}: landmarks must be a finite (68, 2) array of (x, y) pixels, got shape "
                             f"{lm.shape}.")
        lm = np.rint(lm).astype(np.int64)
        bx = (int(lm[:, 0].min()), int(lm[:, 1].min()), int(lm[:, 0].max()), int(lm[:, 1].max()))
        return FaceDetection(box=bx, landmarks=lm)
    if box is not None:
        bx = tuple(int(round(v)) for v in box)
        if len(bx) != 4:
            raise InputError(f"{name}: a face box is (left, top, right, bottom), got {box!r}.")
        return FaceDetection(box=bx, landmarks=landmarks_for_box(image, bx, name))  # type: ignore[arg-type]
    faces = detect_faces(image, name=name, detect_max_side=detect_max_side)
    return choose_face(faces, index, order, name=name)


# --------------------------------------------------------------------------------------------
# the official crop (dataset_process/croper.py: align_face + crop, still=False)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropParams:
    """The official crop of one photo.

    Attributes:
        rsize: (width, height) the photo is brought to first (the photo's own size unless shrink > 1).
        shrink: integer reduction factor (1 = none).
        crop_box: (x0, y0, x1, y1) in rsize pixels, end-exclusive.
        quad: (lx, ly, rx, ry) float64, relative to crop_box (or to the image when the crop box is the
            whole image), after the official +0.5 and clamping.
        quad_int: the same truncated to int: the final slice ``[ly:ry, lx:rx]`` of the crop box.
        corners: (4, 2) float64 FFHQ quad corners in *photo* pixels (c-x-y, c-x+y, c+x+y, c+x-y).
        qsize: side of the FFHQ quad in photo pixels.
    """

    rsize: tuple[int, int]
    shrink: int
    crop_box: tuple[int, int, int, int]
    quad: tuple[float, float, float, float]
    quad_int: tuple[int, int, int, int]
    corners: np.ndarray = field(repr=False, compare=False)
    qsize: float = 0.0


def ffhq_quad(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FFHQ alignment frame from 68 landmarks: centre c (2,), half-axes x and y (2,), float64.

    Same float64 operation order as the official code (so floor/ceil decisions agree).
    """
    lm = np.asarray(landmarks)
    eye_left = np.mean(lm[36:42], axis=0)
    eye_right = np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return c, x, y


def official_crop_params(
    landmarks: np.ndarray,
    image_hw: tuple[int, int],
    *,
    output_size: int = 512,
    bottom_clamp: Literal["height", "width"] = "height",
) -> CropParams:
    """KDTalker's crop window for a photo of ``image_hw`` = (height, width) pixels.

    ``output_size`` (the official ``xsize``) only decides the shrink factor. ``bottom_clamp="width"``
    reproduces the official quirk of clamping the bottom edge by the image width.
    """
    if bottom_clamp not in ("height", "width"):
        raise InputError(f"bottom_clamp must be 'height' or 'width', got {bottom_clamp!r}.")
    height, width = int(image_hw[0]), int(image_hw[1])
    c, x, y = ffhq_quad(landmarks)
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    corners = quad.copy()
    qsize = np.hypot(*x) * 2
    photo_qsize = float(qsize)

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(width) / shrink)), int(np.rint(float(height) / shrink)))
        quad /= shrink
        qsize /= shrink
    else:
        shrink = 1
        rsize = (width, height)
    rw, rh = rsize

    border = max(int(np.rint(qsize * 0.1)), 3)
    box = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
           int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    box = (max(box[0] - border, 0), max(box[1] - border, 0),
           min(box[2] + border, rw), min(box[3] + border, rh))
    if box[2] - box[0] < rw or box[3] - box[1] < rh:
        quad -= box[0:2]

    q = (quad + 0.5).flatten()
    lx = max(min(q[0], q[2]), 0)
    ly = max(min(q[1], q[7]), 0)
    rx = min(max(q[4], q[6]), rw)
    ry = min(max(q[3], q[5]), rw if bottom_clamp == "width" else rh)
    quad_f = (float(lx), float(ly), float(rx), float(ry))
    quad_i = (int(lx), int(ly), int(rx), int(ry))
    return CropParams(rsize=rsize, shrink=shrink, crop_box=box, quad=quad_f, quad_int=quad_i,
                      corners=corners, qsize=photo_qsize)


def _resized_photo(img: np.ndarray, params: CropParams) -> np.ndarray:
    """The photo at ``params.rsize``: itself, or (shrink > 1) box-filtered by the shrink factor.

    rsize pixel ``i`` covers photo pixels ``[i*shrink, (i+1)*shrink)``; the photo is edge-padded or
    trimmed by less than half a block where ``rint(W / shrink) * shrink != W``.
    """
    rw, rh = params.rsize
    if (img.shape[1], img.shape[0]) == (rw, rh):
        return img
    s = params.shrink
    ph, pw = rh * s, rw * s
    if ph > img.shape[0] or pw > img.shape[1]:
        pad = ((0, max(ph - img.shape[0], 0)), (0, max(pw - img.shape[1], 0)), (0, 0))
        img = np.pad(img, pad, mode="edge")
    return box_reduce_u8(img[:ph, :pw], s)


def official_crop_region(params: CropParams) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) end-exclusive, in rsize pixels, of what :func:`official_crop` returns."""
    cx0, cy0, cx1, cy1 = params.crop_box
    lx, ly, rx, ry = params.quad_int
    x0 = min(cx0 + max(lx, 0), cx1)
    y0 = min(cy0 + max(ly, 0), cy1)
    x1 = max(min(cx0 + rx, cx1), x0)
    y1 = max(min(cy0 + ry, cy1), y0)
    return x0, y0, x1, y1


def official_crop(image: Any, params: CropParams, *, name: str = "image") -> np.ndarray:
    """The official cropped face (h, w, 3) uint8, before the 256x256 resize (not necessarily square)."""
    img = _resized_photo(to_rgb_uint8(image, name), params)
    x0, y0, x1, y1 = official_crop_region(params)
    out = img[y0:y1, x0:x1]
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise FaceError(f"The face crop of {name} is empty (region {(x0, y0, x1, y1)}); the landmarks do not "
                        f"describe a face inside the picture. {_FIX_HINT}")
    return out


# --------------------------------------------------------------------------------------------
# the portrait crop handed to the renderer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PortraitCrop:
    """The 256x256 source image and where it sits in the photo.

    Attributes:
        source: (size, size, 3) uint8 RGB (256x256), the LivePortrait source image.
        photo_hw: (height, width) of the photo.
        crop_to_photo: (2, 3) float64 affine from crop coordinates (u, v) in the unit square (0 = left /
            top edge, 1 = right / bottom edge of the crop, for any rendered resolution) to photo edge
            coordinates (x, y) in pixels (pixel (i, j) covers [i, i+1) x [j, j+1)).
        face: the face used.
        mode: "official", "square" or "square_axis".
        params: the official crop parameters (every mode computes them; they define the FFHQ quad).
    """

    source: np.ndarray = field(repr=False)
    photo_hw: tuple[int, int]
    crop_to_photo: np.ndarray
    face: FaceDetection
    mode: str
    params: CropParams

    @property
    def photo_to_crop(self) -> np.ndarray:
        """(2, 3) inverse affine: photo edge coordinates -> unit-square crop coordinates."""
        m = np.vstack([self.crop_to_photo, [0.0, 0.0, 1.0]])
        return np.linalg.inv(m)[:2]


def _square_affine(params: CropParams, face: FaceDetection, rotate: bool) -> np.ndarray:
    """Unit square -> photo edge coordinates for the FFHQ quad (landmark pixel centres sit at +0.5)."""
    c, x, y = ffhq_quad(face.landmarks)
    if not rotate:
        half = float(np.hypot(*x))
        x, y = np.array([half, 0.0]), np.array([0.0, half])
    origin = c + 0.5 - x - y
    return np.array([[2 * x[0], 2 * y[0], origin[0]], [2 * x[1], 2 * y[1], origin[1]]], dtype=np.float64)


def _sample_square(img: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly sample a (size, size) uint8 image of the photo through ``affine`` (unit square -> photo)."""
    h, w = img.shape[:2]
    corners = np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=np.float64) @ affine.T
    x0 = int(np.clip(np.floor(corners[:, 0].min()) - 2, 0, w - 1))
    y0 = int(np.clip(np.floor(corners[:, 1].min()) - 2, 0, h - 1))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()) + 2, x0 + 1, w))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()) + 2, y0 + 1, h))
    roi = torch.from_numpy(np.ascontiguousarray(img[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    side = float(np.hypot(affine[0, 0], affine[1, 0]))  # crop side in photo pixels
    if side > 1.5 * size:  # antialias: bring the face to about the output resolution first
        k = size / side
        roi = F.interpolate(roi, size=(max(1, round((y1 - y0) * k)), max(1, round((x1 - x0) * k))),
                            mode="bilinear", antialias=True, align_corners=False)
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    vv, uu = torch.meshgrid(t, t, indexing="ij")
    a = torch.from_numpy(affine)
    px = a[0, 0] * uu + a[0, 1] * vv + a[0, 2]
    py = a[1, 0] * uu + a[1, 1] * vv + a[1, 2]
    grid = torch.stack([2 * (px - x0) / (x1 - x0) - 1, 2 * (py - y0) / (y1 - y0) - 1], dim=-1)
    out = F.grid_sample(roi, grid[None].float(), mode="bilinear", padding_mode="reflection",
                        align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def crop_portrait(
    image: Any,
    *,
    mode: CropMode = "official",
    name: str = "image",
    face_index: int = 0,
    order: FaceOrder = "detector",
    box: tuple[int, int, int, int] | None = None,
    landmarks: Any = None,
    face: FaceDetection | None = None,
    size: int = SOURCE_SIZE,
    bottom_clamp: Literal["height", "width"] = "height",
    detect_max_side: int | None = DETECT_MAX_SIDE,
) -> PortraitCrop:
    """Find the face and cut the (size, size) source image; keep the mapping back to the photo.

    Args:
        image: the photo (numpy/torch, uint8 or float [0, 1], RGB/RGBA/gray).
        mode: "official" (KDTalker's crop, then OpenCV-exact bilinear resize), "square" (the FFHQ quad,
            rotation-aligned), "square_axis" (same square, not rotated).
        name: how to call the photo in error messages.
        face_index, order: which face when there are several (see :func:`choose_face`).
        box, landmarks, face: skip detection (see :func:`find_face`).
        size: output side (256 for LivePortrait).
        bottom_clamp: "width" reproduces the official bottom-edge quirk (official mode only).
        detect_max_side: see :func:`detect_faces`.

    Returns:
        PortraitCrop.
    """
    img = to_rgb_uint8(image, name)
    h, w = img.shape[:2]
    if face is None:
        face = find_face(img, name=name, index=face_index, order=order, box=box, landmarks=landmarks,
                         detect_max_side=detect_max_side)
    params = official_crop_params(face.landmarks, (h, w), bottom_clamp=bottom_clamp)
    if mode == "official":
        cropped = official_crop(img, params, name=name)
        out = resize_linear_u8(cropped, (size, size))
        x0, y0, x1, y1 = official_crop_region(params)
        k = float(params.shrink)  # rsize pixel i covers photo pixels [i*k, (i+1)*k)
        affine = np.array([[(x1 - x0) * k, 0.0, x0 * k], [0.0, (y1 - y0) * k, y0 * k]], dtype=np.float64)
    elif mode in ("square", "square_axis"):
        affine = _square_affine(params, face, rotate=mode == "square")
        out = _sample_square(img, affine, size)
    else:
        raise InputError(f"Unknown crop mode {mode!r}; use 'official', 'square' or 'square_axis'.")
    return PortraitCrop(source=out, photo_hw=(h, w), crop_to_photo=affine, face=face, mode=mode,
                        params=params)


__all__ = [
    "CropParams", "FaceDetection", "PortraitCrop", "choose_face", "crop_portrait", "detect_faces",
    "ffhq_quad", "find_face", "landmark_model_path", "landmark_problems", "landmarks_for_box", "make_paste_mask",
    "official_crop", "official_crop_params", "official_crop_region", "paste_back", "paste_geometry",
    "to_rgb_uint8", "trusted_faces",
]

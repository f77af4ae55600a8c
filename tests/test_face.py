"""Faces on a real photo (scikit-image's astronaut): detection, the official crop, square crops,
the OpenCV-exact resize, and paste-back."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdtalker_core import face as fm
from kdtalker_core import paste
from kdtalker_core.errors import FaceError, InputError
from kdtalker_core.golden import run_fixture
from kdtalker_core.imresize import resize_linear_u8

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def astronaut_faces(astronaut: np.ndarray) -> list[fm.FaceDetection]:
    return fm.detect_faces(astronaut, name="astronaut")


@pytest.fixture(scope="module")
def official(astronaut: np.ndarray, astronaut_faces: list[fm.FaceDetection]) -> fm.PortraitCrop:
    return fm.crop_portrait(astronaut, face=astronaut_faces[0], name="astronaut")


# ---------------------------------------------------------------- golden fixture


def test_crop_fixture_passes(golden_dir: Path) -> None:
    results = run_fixture(golden_dir / "crop_astronaut")
    assert {r.output for r in results} >= {"landmarks", "det_box_ltrb", "rsize", "crop_box", "quad",
                                           "quad_int", "cropped", "cropped_256"}
    assert all(r.ok for r in results), [r.line() for r in results if not r.ok]


# ---------------------------------------------------------------- detection


def test_detects_the_astronaut_face(astronaut_faces: list[fm.FaceDetection]) -> None:
    face = astronaut_faces[0]
    l, t, r, b = face.box
    assert 150 < l < r < 300 and 50 < t < b < 200  # the face, upper middle of the photo
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.int64
    eyes = face.landmarks[36:48].mean(axis=0)
    mouth = face.landmarks[48:68].mean(axis=0)
    assert l < eyes[0] < r and t < eyes[1] < mouth[1] < b
    assert face.score > 0.5


def test_window_detection_matches_full_photo(astronaut: np.ndarray, astronaut_faces) -> None:
    # the fixture's window is rows 0:256, columns 96:352 of the same photo
    window = fm.detect_faces(astronaut[:256, 96:352], name="window")[0]
    diff = np.abs(window.landmarks + [96, 0] - astronaut_faces[0].landmarks)
    assert diff.max() <= 3


def test_choose_face_orders_and_index(astronaut_faces: list[fm.FaceDetection]) -> None:
    a = fm.FaceDetection(box=(300, 10, 350, 60), landmarks=np.zeros((68, 2), np.int64), score=2.0)
    b = fm.FaceDetection(box=(10, 100, 110, 200), landmarks=np.zeros((68, 2), np.int64), score=1.0)
    faces = [a, b]
    assert fm.choose_face(faces) is a
    assert fm.choose_face(faces, order="largest") is b
    assert fm.choose_face(faces, order="left_to_right") is b
    assert fm.choose_face(faces, order="top_to_bottom") is a
    assert fm.choose_face(faces, 1, order="left_to_right") is a
    with pytest.raises(FaceError, match=r"only 2 faces were found.*0 to 1"):
        fm.choose_face(faces, 2, name="group.png")
    with pytest.raises(InputError):
        fm.choose_face(faces, order="random")
    assert fm.choose_face(astronaut_faces, 0) is astronaut_faces[0]


def test_rgba_gray_and_float_inputs(astronaut: np.ndarray, astronaut_faces) -> None:
    window = astronaut[:256, 96:352]
    ref = fm.detect_faces(window)[0]
    rgba = np.concatenate([window, np.full(window.shape[:2] + (1,), 128, np.uint8)], axis=2)
    assert np.array_equal(fm.detect_faces(rgba)[0].landmarks, ref.landmarks)
    as_float = torch.from_numpy(window).float() / 255.0  # a ComfyUI IMAGE frame
    assert np.array_equal(fm.detect_faces(as_float[None])[0].landmarks, ref.landmarks)
    gray = np.rint(window @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    for g in (gray, gray[:, :, None]):
        face = fm.detect_faces(g, name="gray")[0]
        assert np.abs(face.landmarks - ref.landmarks).max() <= 4


@pytest.mark.parametrize("kind", ["flat", "coffee"])
def test_no_face_raises_naming_the_image(kind: str) -> None:
    image = np.full((200, 300, 3), 127, np.uint8) if kind == "flat" else skdata.coffee()
    with pytest.raises(FaceError, match=f"{kind}.png") as err:
        fm.crop_portrait(image, name=f"{kind}.png")
    assert "frontal" in str(err.value) and "landmarks" in str(err.value)
    assert fm.detect_faces(image, allow_empty=True) == []


def test_user_box_and_landmarks_skip_detection(astronaut: np.ndarray, astronaut_faces, official) -> None:
    face = astronaut_faces[0]
    by_box = fm.find_face(astronaut, box=face.box)
    assert np.array_equal(by_box.landmarks, face.landmarks)
    by_lm = fm.crop_portrait(astronaut, landmarks=face.landmarks.astype(float))
    assert np.array_equal(by_lm.source, official.source)
    with pytest.raises(InputError):
        fm.find_face(astronaut, landmarks=np.zeros((5, 2)))
    with pytest.raises(InputError):
        fm.find_face(astronaut, box=(10, 10, 5, 20))


def test_large_photo_finds_the_face(astronaut: np.ndarray, astronaut_faces) -> None:
    big = np.repeat(np.repeat(astronaut, 8, axis=0), 8, axis=1)  # 4096 x 4096, detected on a small copy
    face = fm.choose_face(fm.detect_faces(big, name="big"))
    # predicted on the full-resolution photo: the same landmarks as the 512 photo, 8x larger
    expected = astronaut_faces[0].landmarks * 8 + 3.5
    assert np.abs(face.landmarks - expected).max() < 3 * 8
    crop = fm.crop_portrait(big, face=face)
    assert crop.source.shape == (256, 256, 3) and crop.photo_hw == (4096, 4096)


def test_models_are_loaded_once() -> None:
    detector, predictor = fm._dlib_models()
    assert fm._dlib_models()[0] is detector and fm._dlib_models()[1] is predictor
    assert fm.landmark_model_path().name == "shape_predictor_68_face_landmarks.dat"


# ---------------------------------------------------------------- the official crop


def test_official_crop_geometry(official: fm.PortraitCrop, astronaut: np.ndarray) -> None:
    assert official.source.shape == (256, 256, 3) and official.source.dtype == np.uint8
    x0, y0, x1, y1 = fm.official_crop_region(official.params)
    np.testing.assert_allclose(official.crop_to_photo, [[x1 - x0, 0, x0], [0, y1 - y0, y0]])
    cropped = fm.official_crop(astronaut, official.params)
    assert np.array_equal(cropped, astronaut[y0:y1, x0:x1])
    assert np.array_equal(official.source, resize_linear_u8(cropped, (256, 256)))


def test_bottom_clamp_quirk_only_where_it_bites(astronaut_faces) -> None:
    lm = astronaut_faces[0].landmarks
    square = [fm.official_crop_params(lm, (512, 512), bottom_clamp=c) for c in ("width", "height")]
    assert square[0] == square[1]
    # a narrow, tall photo (150 x 512) cut through the face: the official code clamps the bottom
    # edge by the width (150), cutting the chin; the default clamps by the height
    narrow_lm = lm - [150, 0]
    quirk = fm.official_crop_params(narrow_lm, (512, 150), bottom_clamp="width")
    fixed = fm.official_crop_params(narrow_lm, (512, 150))
    assert quirk.quad[3] == 150 and fixed.quad[3] > 190
    assert quirk.quad[:3] == fixed.quad[:3]


def test_huge_face_shrinks_instead_of_crashing(astronaut: np.ndarray, official) -> None:
    # a 6x enlarged photo with output_size 256: qsize ~ 1100 px -> shrink 2 (official: PIL crash)
    big = np.repeat(np.repeat(astronaut[:256, 96:352], 6, axis=0), 6, axis=1)
    face = fm.detect_faces(astronaut[:256, 96:352])[0]
    lm = face.landmarks * 6 + 2
    params = fm.official_crop_params(lm, big.shape[:2], output_size=256)
    assert params.shrink == 2 and params.rsize == (768, 768)
    cropped = fm.official_crop(big, params)
    assert 0.9 < cropped.shape[0] / cropped.shape[1] < 1.1
    small = resize_linear_u8(cropped, (256, 256)).astype(float)
    assert np.abs(small - official.source).mean() < 12  # same face, same framing


def test_square_crop_is_aligned_on_the_eyes(astronaut: np.ndarray, astronaut_faces) -> None:
    face = astronaut_faces[0]
    tilt = {}
    for mode in ("square", "square_axis"):
        crop = fm.crop_portrait(astronaut, face=face, mode=mode)
        assert crop.source.shape == (256, 256, 3)
        a = crop.crop_to_photo
        side_u, side_v = np.hypot(*a[:, 0]), np.hypot(*a[:, 1])
        assert side_u == pytest.approx(side_v) and side_u == pytest.approx(crop.params.qsize)
        eyes = np.stack([face.landmarks[36:42].mean(0), face.landmarks[42:48].mean(0)]) + 0.5
        uv = (crop.photo_to_crop @ np.c_[eyes, np.ones(2)].T).T
        assert np.all((uv > 0.25) & (uv < 0.75))
        tilt[mode] = abs(uv[0, 1] - uv[1, 1])
    assert tilt["square"] < 0.01 and tilt["square"] < tilt["square_axis"]  # the rotation is removed
    with pytest.raises(InputError):
        fm.crop_portrait(astronaut, face=face, mode="circle")  # type: ignore[arg-type]


# ---------------------------------------------------------------- resize


def test_resize_linear_rules() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert np.array_equal(resize_linear_u8(img, (40, 30)), img)  # same size: a copy
    half = resize_linear_u8(img, (20, 15)).astype(int)  # exact 2x: rounded 2x2 mean
    s = img.astype(int)
    quad = s[0::2, 0::2] + s[1::2, 0::2] + s[0::2, 1::2] + s[1::2, 1::2]
    assert np.array_equal(half, (quad + 2) >> 2)
    flat = np.full((7, 9), 200, np.uint8)
    assert np.array_equal(resize_linear_u8(flat, (256, 256)), np.full((256, 256), 200, np.uint8))


# ---------------------------------------------------------------- paste-back


@pytest.mark.parametrize("mode", ["official", "square"])
def test_paste_back_keeps_the_background_exact(astronaut: np.ndarray, astronaut_faces, mode: str) -> None:
    crop = fm.crop_portrait(astronaut, face=astronaut_faces[0], mode=mode)
    photo = torch.from_numpy(astronaut).float() / 255.0
    mask = paste.make_paste_mask(crop, photo.shape[:2], feather=0.1)
    assert mask.shape == (512, 512) and float(mask.min()) == 0.0 and float(mask.max()) == 1.0
    colors = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]])
    frames = colors.view(3, 1, 1, 3).expand(3, 512, 512, 3)
    out = paste.paste_back(frames, photo, crop, mask)
    assert out.shape == (3, 512, 512, 3)
    outside = mask == 0
    assert outside.float().mean() > 0.8
    for t in range(3):
        assert torch.equal(out[t][outside], photo[outside])
    inside = mask == 1
    for t in range(3):  # the frames replaced the face
        assert torch.allclose(out[t][inside], frames[t, 0, 0].expand_as(out[t][inside]), atol=1e-6)
    # the footprint is where the affine says: the crop centre pastes frame centre pixels
    cx, cy = crop.crop_to_photo @ np.array([0.5, 0.5, 1.0])
    assert bool(mask[int(cy), int(cx)] == 1)


def test_paste_back_places_content(astronaut: np.ndarray, official: fm.PortraitCrop) -> None:
    photo = torch.from_numpy(astronaut).float() / 255.0
    ones = torch.ones(512, 512)
    frames = torch.zeros(1, 512, 512, 3)
    frames[0, 300:310, 150:160] = 1.0  # a white square around crop (u, v) = (0.303, 0.596)
    out = paste.paste_back(frames, torch.zeros_like(photo), official, ones)
    ys, xs = torch.nonzero(out[0, :, :, 0] > 0.5, as_tuple=True)
    expect = official.crop_to_photo @ np.array([155 / 512, 305 / 512, 1.0])
    assert abs(xs.float().mean().item() + 0.5 - expect[0]) < 1.0
    assert abs(ys.float().mean().item() + 0.5 - expect[1]) < 1.0
    # pasting the (upsampled) source itself reproduces the photo inside the crop
    src = torch.from_numpy(official.source).float().permute(2, 0, 1)[None] / 255.0
    frame = torch.nn.functional.interpolate(src, size=(512, 512), mode="bilinear").permute(0, 2, 3, 1)
    mask = paste.make_paste_mask(official, photo.shape[:2])
    back = paste.paste_back(frame, photo, official, mask)
    assert (back[0] - photo).abs().amax(-1)[mask > 0].mean() < 0.03
    with pytest.raises(InputError):
        paste.paste_back(frames, photo, official, torch.ones(10, 10))


def test_paste_needs_only_a_crop_placement() -> None:
    """paste works on any object with ``photo_hw`` and ``crop_to_photo`` (it does not import face)."""
    placement = SimpleNamespace(photo_hw=(40, 60), crop_to_photo=np.array([[20.0, 0.0, 10.0], [0.0, 20.0, 5.0]]))
    assert paste.paste_geometry(placement, (40, 60))[1] == (10, 5, 30, 25)
    assert paste.paste_geometry(placement, (80, 120))[1] == (20, 10, 60, 50)  # a 2x photo: 2x footprint
    hard = paste.make_paste_mask(placement, feather=0.0)
    assert hard.shape == (40, 60) and int(hard.sum()) == 20 * 20 and bool((hard[5:25, 10:30] == 1).all())
    out = paste.paste_back(torch.ones(2, 16, 16, 3), torch.zeros(40, 60, 3), placement, hard)
    torch.testing.assert_close(out[:, 5:25, 10:30], torch.ones(2, 20, 20, 3))  # bilinear weights sum to ~1
    out[:, 5:25, 10:30] = 0
    assert not out.any()  # nothing outside the footprint
    assert fm.paste_back is paste.paste_back and fm.make_paste_mask is paste.make_paste_mask  # re-exported

"""Video-driven motion: the lp_relative_motion golden fixture, face tracking + smoothed crops on a clip
made from a real photo, the extracted motion against LivePortrait's relative formula (computed here
independently, in float64 numpy), Euler round trips, loop / ping-pong / cut lengths and mixing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_nodes import (  # noqa: F401  (ComfyUI stubs and the module fixtures of the node tests)
    _execute,
    comfy_root,
    extra_liveportrait,
    models_handle,
    nodes,
    package,
)

from kdtalker_core import driving, face, tracking
from kdtalker_core.errors import InputError
from kdtalker_core.golden_checks import relative_motion
from kdtalker_core.keypoints import get_kp_info, get_rotation_matrix, rotation_to_degrees
from kdtalker_core.motion import MOTION_DIM, Motion, driving_keypoints
from kdtalker_core.networks.motion_extractor import MotionExtractor

GOLDEN = Path(__file__).resolve().parent / "golden" / "lp_relative_motion"


# --------------------------------------------------------------------------- helpers (independent math)


def _rot_np(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Column-vector rotation Rz(roll) Ry(yaw) Rx(pitch), float64, degrees in."""
    p, y, r = (math.radians(v) for v in (pitch, yaw, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _degrees_np(logits: np.ndarray) -> np.ndarray:
    """(B,66) bin logits -> (B,) degrees: softmax expectation of the bin index * 3 - 97.5 (float64)."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (p * np.arange(z.shape[1])).sum(axis=1) * 3.0 - 97.5


def _make_clip(photo: np.ndarray, params: list[tuple[float, float, float, float]]) -> tuple[np.ndarray, list]:
    """Similarity-warped copies of ``photo``: (dx, dy) shift in half-widths, angle degrees, scale.

    Returns (T,H,W,3) uint8 and per frame the (2,3) map from photo pixel coordinates to frame pixels.
    """
    h, w = photo.shape[:2]
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float()
    frames, maps = [], []
    for dx, dy, ang, s in params:
        a = math.radians(ang)
        lin = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / s  # out -> in (normalised)
        theta = torch.tensor(np.hstack([lin, [[-dx], [-dy]]])[None], dtype=torch.float32)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        frames.append(out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
        # photo pixel q -> normalised u_in = (q + .5) / size * 2 - 1 -> u_out = lin^-1 (u_in + d) -> pixel
        inv = np.linalg.inv(lin)
        norm = np.diag([2.0 / w, 2.0 / h])
        lin_px = np.linalg.inv(norm) @ inv @ norm
        off = np.linalg.inv(norm) @ (inv @ (norm @ np.array([0.5, 0.5]) - 1 + np.array([dx, dy])) + 1) - 0.5
        maps.append(np.hstack([lin_px, off[:, None]]))
    return np.stack(frames), maps


@pytest.fixture(scope="module")
def photo(sample_portrait) -> np.ndarray:
    return np.asarray(Image.open(sample_portrait).convert("RGB"))


@pytest.fixture(scope="module")
def smooth_clip(photo) -> tuple[np.ndarray, list]:
    """The 12-frame clip of :data:`SMOOTH_PARAMS` and its photo -> frame maps (made once)."""
    return _make_clip(photo, SMOOTH_PARAMS)


@pytest.fixture(scope="module")
def extractor() -> MotionExtractor:
    """A small random-weight M; its pose heads are sharpened and centred near 0 degrees so the angles
    are head-like and vary over the frames."""
    torch.manual_seed(3)
    model = MotionExtractor(depths=(1, 1, 1, 1), dims=(8, 16, 16, 32)).eval()
    with torch.no_grad():
        for name in ("fc_pitch", "fc_yaw", "fc_roll"):
            head = getattr(model.detector, name)
            head.weight.mul_(5.0)
            head.bias.copy_(-0.5 * ((torch.arange(66) - 32.5) / 6) ** 2)
        model.detector.fc_t.weight.mul_(5.0)
    return model


#: (dx, dy, angle, scale) of a smooth 12-frame head move; frame 0 already differs from the photo.
SMOOTH_PARAMS = [(0.03 + 0.06 * math.sin(i / 3), 0.02 + 0.04 * i / 12, 6 + 8 * math.sin(i / 4), 1.05 + 0.1 * i / 12)
                 for i in range(12)]


# --------------------------------------------------------------------------- golden


def test_golden_lp_relative_motion_passes() -> None:
    meta = json.loads((GOLDEN / "meta.json").read_text())
    results = relative_motion.check(GOLDEN, meta)
    names = {r.output for r in results}
    assert {"R_new", "delta_new", "scale_new", "t_new", "x_d", "x_d_absolute", "x_d[motion]"} <= names
    assert all(r.ok for r in results), [r.line() for r in results if not r.ok]


# --------------------------------------------------------------------------- rotations


def test_rotation_to_degrees_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    pitch = torch.rand(200, generator=g, dtype=torch.float64) * 160 - 80
    yaw = torch.rand(200, generator=g, dtype=torch.float64) * 170 - 85
    roll = torch.rand(200, generator=g, dtype=torch.float64) * 340 - 170
    p2, y2, r2 = rotation_to_degrees(get_rotation_matrix(pitch, yaw, roll))
    for a, b in ((pitch, p2), (yaw, y2), (roll, r2)):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0)
    # a composed rotation (what relative driving builds) is rebuilt exactly from its angles
    rot = get_rotation_matrix(pitch[:100], yaw[:100], roll[:100]) @ get_rotation_matrix(
        pitch[100:], yaw[100:], roll[100:]).transpose(1, 2)
    torch.testing.assert_close(get_rotation_matrix(*rotation_to_degrees(rot)), rot, atol=1e-12, rtol=0)
    # gimbal lock still gives a rotation that rebuilds the matrix
    lock = get_rotation_matrix(torch.tensor([20.0], dtype=torch.float64), torch.tensor([90.0], dtype=torch.float64),
                               torch.tensor([-35.0], dtype=torch.float64))
    torch.testing.assert_close(get_rotation_matrix(*rotation_to_degrees(lock)), lock, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- tracking and crops


def test_tracker_follows_the_face_and_smooths_the_crop(photo) -> None:
    rng = np.random.default_rng(0)
    jitter = [(p[0] + rng.normal(0, 0.006), p[1] + rng.normal(0, 0.006), p[2], p[3]) for p in SMOOTH_PARAMS]
    clip, maps = _make_clip(photo, jitter)
    track = tracking.track_face(clip, smoothing=1.5)
    assert track.detected.tolist() == [True] + [False] * 11 and not track.lost.any() and not track.held.any()
    ref = face.detect_faces(photo)[0].landmarks.astype(np.float64)
    for i, m in enumerate(maps):  # the tracked face is where the warp put the photo's face
        expected = ref @ m[:, :2].T + m[:, 2]
        assert np.abs(track.landmarks[i].mean(0) - expected.mean(0)).max() < 3.0, i
    # smoothing removes frame-to-frame jitter of the crop window (the FFHQ quad centre)
    raw_c = np.array([face.ffhq_quad(lm)[0] for lm in track.landmarks])
    smooth_c = np.array([face.ffhq_quad(lm)[0] for lm in track.smoothed])
    assert np.abs(np.diff(smooth_c, 2, axis=0)).mean() < 0.5 * np.abs(np.diff(raw_c, 2, axis=0)).mean()
    crops = tracking.crop_track(clip, track)
    assert crops.shape == (12, 256, 256, 3) and crops.dtype == np.uint8
    first = face.crop_portrait(clip[0], face=track.face(0)).source
    np.testing.assert_array_equal(crops[0], first)
    # the face stays centred in every crop: its landmarks fall at the same place as in the photo's crop
    base = face.detect_faces(crops[0])[0].landmarks.mean(0)
    for i in (5, 11):
        assert np.abs(face.detect_faces(crops[i])[0].landmarks.mean(0) - base).max() < 12


def test_tracker_redetects_after_a_cut_and_does_not_smooth_across_it(photo) -> None:
    params = SMOOTH_PARAMS[:6] + [(p[0] + 0.35, p[1] + 0.3, p[2], p[3]) for p in SMOOTH_PARAMS[6:]]
    clip, maps = _make_clip(photo, params)
    track = tracking.track_face(clip)
    assert track.lost.tolist() == [False] * 6 + [True] + [False] * 5
    assert track.detected[6] and not track.held.any()
    ref = face.detect_faces(photo)[0].landmarks.astype(np.float64)
    for i in (5, 6):  # the smoothed landmarks right at the cut are on the right side of it
        expected = (ref @ maps[i][:, :2].T + maps[i][:, 2]).mean(0)
        assert np.abs(track.smoothed[i].mean(0) - expected).max() < 4.0, i


def test_tracker_holds_the_face_through_blank_frames(smooth_clip) -> None:
    clip = smooth_clip[0][:7].copy()
    clip[3:5] = 128  # two frames without a face (e.g. a flash or a fade)
    track = tracking.track_face(clip)
    assert track.held.tolist() == [False] * 3 + [True, True] + [False] * 2
    assert track.detected[3] and track.detected[4]
    np.testing.assert_array_equal(track.landmarks[3], track.landmarks[2])
    ref = tracking.track_face(smooth_clip[0][:7])  # the face is picked up again where it is
    assert np.abs(track.landmarks[6].mean(0) - ref.landmarks[6].mean(0)).max() < 2.0
    assert tracking.crop_track(clip, track).shape == (7, 256, 256, 3)


def test_gaussian_smooth_keeps_constant_and_linear_tracks() -> None:
    t = np.arange(20, dtype=np.float64)[:, None] * np.array([[1.0, -2.0]]) + 5
    out = tracking.gaussian_smooth(t, 2.0)
    np.testing.assert_allclose(out[6:-6], t[6:-6], atol=1e-9)
    np.testing.assert_allclose(tracking.gaussian_smooth(np.full((7, 3), 4.0), 3.0), 4.0, atol=1e-12)
    np.testing.assert_array_equal(tracking.gaussian_smooth(t, 0.0), t)
    with pytest.raises(InputError):
        tracking.gaussian_smooth(t, -1.0)


# --------------------------------------------------------------------------- extraction vs the formula


def test_extracted_motion_matches_relative_formula(photo, extractor, smooth_clip) -> None:
    clip = smooth_clip[0]
    portrait = face.crop_portrait(photo)
    src_img = torch.from_numpy(portrait.source).permute(2, 0, 1)[None].float() / 255
    source = get_kp_info(extractor, src_img)
    # a portrait posed far from the video's first frame, so the order of the rotations matters
    src_deg = {"pitch": 20.0, "yaw": -30.0, "roll": 10.0}
    source.update({a: torch.tensor([[v]]) for a, v in src_deg.items()})
    result = driving.extract_video_motion(extractor, clip, source, fps=30.0)
    motion = result.motion
    assert motion.num_frames == 12 and motion.fps == 30.0 and motion.data.shape == (12, MOTION_DIM)

    # M's raw outputs on the crops, and the relative formula, computed here in float64
    with torch.no_grad():
        raw = {k: v.double().numpy() for k, v in extractor(torch.from_numpy(result.crops).permute(0, 3, 1, 2)
                                                             .float() / 255).items()}
        raw_s = {k: v.double().numpy() for k, v in extractor(src_img).items()}
    ang = {a: _degrees_np(raw[a]) for a in ("pitch", "yaw", "roll")}
    assert all(np.ptp(v) > 0.3 for v in ang.values())  # the pose really changes over the clip
    rot_s = _rot_np(src_deg["pitch"], src_deg["yaw"], src_deg["roll"])
    rots = [_rot_np(ang["pitch"][i], ang["yaw"][i], ang["roll"][i]) for i in range(12)]
    got = motion.data.double().numpy()
    # the composition order is testable: the other order differs by far more than the tolerance
    assert max(np.abs(rot_s @ rots[0].T @ r - r @ rots[0].T @ rot_s).max() for r in rots) > 20 * 2e-5
    for i in range(12):
        expected_rot = rot_s @ rots[0].T @ rots[i]  # column-vector form of R_d_i R_d_0^T R_s (row vectors)
        got_rot = _rot_np(got[i, 2], got[i, 1], got[i, 3])  # columns: scale, yaw, pitch, roll
        np.testing.assert_allclose(got_rot, expected_rot, atol=2e-5)
        np.testing.assert_allclose(got[i, 7:], raw_s["exp"][0] + raw["exp"][i] - raw["exp"][0], atol=2e-5)
        t = raw_s["t"][0] + raw["t"][i] - raw["t"][0]
        np.testing.assert_allclose(got[i, 4:7], [t[0], t[1], 0.0], atol=2e-5)
        np.testing.assert_allclose(got[i, 0], raw_s["scale"][0, 0] * raw["scale"][i, 0] / raw["scale"][0, 0],
                                   rtol=2e-5)
    # frame 0 is the portrait's own pose; the renderer reproduces the relative keypoints (at source scale)
    np.testing.assert_allclose(got[0, [2, 1, 3]], [src_deg[a] for a in ("pitch", "yaw", "roll")], atol=1e-3)
    x_d = driving_keypoints(motion, source)
    kp = raw_s["kp"].reshape(21, 3)
    for i in (0, 7):
        expected_rot = rot_s @ rots[0].T @ rots[i]
        delta = (raw_s["exp"][0] + raw["exp"][i] - raw["exp"][0]).reshape(21, 3)
        xi = raw_s["scale"][0, 0] * (kp @ expected_rot.T + delta)
        xi[:, :2] += (raw_s["t"][0] + raw["t"][i] - raw["t"][0])[:2]
        np.testing.assert_allclose(x_d[i].double().numpy(), xi, atol=5e-5)


def test_absolute_mode_uses_each_frame_and_the_source_scale(extractor, smooth_clip) -> None:
    clip = smooth_clip[0][:4]
    source = get_kp_info(extractor, torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)))
    result = driving.extract_video_motion(extractor, clip, source, mode="absolute", smoothing=0.0)
    info = result.kp_info
    torch.testing.assert_close(result.motion.pitch, info["pitch"].reshape(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(result.motion.exp.reshape(4, -1), info["exp"])
    torch.testing.assert_close(result.motion.scale, source["scale"].reshape(1).expand(4))
    assert torch.all(result.motion.t[:, 2] == 0)
    with pytest.raises(InputError):
        driving.drive(source, info, "sideways")  # type: ignore[arg-type]


def test_video_file_round_trip_and_extraction(extractor, smooth_clip, tmp_path) -> None:
    from kdtalker_core.video import write_mp4

    clip = smooth_clip[0][:8]
    path = tmp_path / "drive.mp4"
    write_mp4(path, [torch.from_numpy(clip).float() / 255], fps=30.0)
    frames, fps = driving.read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8 and fps == 30.0
    assert np.abs(frames.astype(float) - clip).mean() < 4.0  # lossy codec, same pictures
    short, _ = driving.read_video(path, max_seconds=0.1, max_side=256)  # 0.1 s at 30 fps: 3 (+1) frames
    assert short.shape == (4, 256, 256, 3)
    source = get_kp_info(extractor, torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2)))
    result = driving.extract_video_motion_file(extractor, path, source, max_seconds=0.2)
    assert result.motion.fps == 30.0 and result.motion.num_frames == 7
    with pytest.raises(InputError):
        driving.read_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError):
        driving.read_video(tmp_path / "bad.mp4")


# --------------------------------------------------------------------------- lengths and mixing


def test_frame_indices_loop_pingpong_cut() -> None:
    assert driving.frame_indices(3, 8, "loop").tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert driving.frame_indices(3, 8, "pingpong").tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert driving.frame_indices(4, 9, "pingpong").tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert driving.frame_indices(1, 3, "pingpong").tolist() == [0, 0, 0]
    assert driving.frame_indices(3, 8, "cut").tolist() == [0, 1, 2]
    for mode in ("loop", "pingpong", "cut"):
        assert driving.frame_indices(10, 4, mode).tolist() == [0, 1, 2, 3]  # longer is cut
    with pytest.raises(InputError):
        driving.frame_indices(3, 4, "bounce")  # type: ignore[arg-type]


def _motion(frames: int, seed: int, fps: float = 25.0) -> Motion:
    return Motion(torch.randn(frames, MOTION_DIM, generator=torch.Generator().manual_seed(seed)), fps)


def test_fit_length_and_mix_motion() -> None:
    pose, speech = _motion(5, 0), _motion(12, 1)
    fitted = driving.fit_length(pose, 12, "pingpong")
    torch.testing.assert_close(fitted.data[8], pose.data[0])
    torch.testing.assert_close(fitted.data[5], pose.data[3])
    mixed = driving.mix_motion(pose, speech)  # pose from the video, expression from the speech
    assert mixed.num_frames == 12 and mixed.fps == speech.fps
    loop = driving.fit_length(pose, 12, "loop").data
    assert torch.equal(mixed.data[:, :7], loop[:, :7])
    assert torch.equal(mixed.data[:, 7:], speech.data[:, 7:])
    half = driving.mix_motion(pose, speech, rotation=0.5, translation=0.0, scale=0.0, exp=0.25, fit="loop")
    torch.testing.assert_close(half.data[:, 1:4], 0.5 * (loop[:, 1:4] + speech.data[:, 1:4]))
    assert torch.equal(half.data[:, 4:7], speech.data[:, 4:7]) and torch.equal(half.data[:, 0], speech.data[:, 0])
    torch.testing.assert_close(half.data[:, 7:], 0.75 * speech.data[:, 7:] + 0.25 * loop[:, 7:])
    assert driving.mix_motion(pose, speech, fit="cut").num_frames == 5
    with pytest.raises(InputError):
        driving.mix_motion(pose, speech, rotation=1.5)
    # a 30 fps pose motion is brought to the speech motion's 25 fps first (0.4 s -> 10 frames, looped)
    fast = Motion(torch.linspace(0, 1, 12)[:, None].repeat(1, MOTION_DIM), 30.0)
    mixed_fps = driving.mix_motion(fast, speech)
    assert mixed_fps.fps == 25.0 and mixed_fps.num_frames == 12
    torch.testing.assert_close(mixed_fps.data[:10, 4], torch.linspace(0, 1, 12)[(torch.arange(10) * 1.2).long()]
                               + (torch.arange(10) * 1.2 % 1) / 11)
    torch.testing.assert_close(mixed_fps.data[10:, 4], mixed_fps.data[:2, 4])


# --------------------------------------------------------------------------- nodes (full-size random weights)


@pytest.mark.slow
def test_nodes_extract_video_motion_and_mix(photo, smooth_clip, nodes, models_handle) -> None:  # noqa: F811
    """Extract Video Motion + Mix Motion as ComfyUI runs them (inference mode, IMAGE batches)."""
    image = torch.from_numpy(photo.copy())[None].float() / 255
    portrait, _ = _execute(nodes["KDTalkerPreparePortrait"], image=image, models=models_handle, face_index=0,
                           order="detector", crop_mode="official").args
    video = torch.from_numpy(smooth_clip[0][:6]).float() / 255
    motion, crops = _execute(nodes["KDTalkerExtractVideoMotion"], video=video, portrait=portrait,
                             models=models_handle, fps=25.0, pose_mode="relative", crop_smoothing=1.5,
                             face_index=0).args
    assert motion.num_frames == 6 and motion.fps == 25.0
    assert crops.shape == (6, 256, 256, 3) and crops.dtype == torch.float32
    first = torch.stack([motion.pitch[0], motion.yaw[0], motion.roll[0]]).cpu()
    expected = torch.stack([portrait.kp_info[a].reshape(()) for a in ("pitch", "yaw", "roll")]).cpu()
    torch.testing.assert_close(first, expected, atol=1e-3, rtol=0)  # frame 0 = the portrait's own pose
    speech = motion.with_data(torch.randn(15, MOTION_DIM))
    (mixed,) = _execute(nodes["KDTalkerMixMotion"], pose_motion=motion, expression_motion=speech, rotation=1.0,
                        translation=1.0, scale=1.0, expression=0.0, length_mode="pingpong").args
    assert mixed.num_frames == 15
    idx = driving.frame_indices(6, 15, "pingpong")
    torch.testing.assert_close(mixed.data[:, :7].cpu(), motion.data[idx, :7].cpu())
    torch.testing.assert_close(mixed.data[:, 7:].cpu(), speech.data[:, 7:])

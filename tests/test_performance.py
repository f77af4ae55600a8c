"""Performance controls: voice activity and calm silences, blinks and eye / mouth openness (keypoint
fallback and LivePortrait's retargeting MLPs), stitching, frame-rate resampling, the plot and nodes.

Audio is real speech (tests/data, the packaged sample) with real pauses or with inserted digital
silence; the retargeting MLPs are random weights written and read back in the official file layout.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdtalker_core import audio, motion_edit, retarget, retime, silence, weights
from kdtalker_core.blink import blink_curve, blink_times
from kdtalker_core.keypoints import get_rotation_matrix
from kdtalker_core.motion import EXP_COLS, MOTION_DIM, NUM_KP, POSE_COLS, Motion, driving_keypoints

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "data" / "speech_16k_mono.wav"
PAUSE_S = 1.0


def _wave(path) -> torch.Tensor:
    wav, sr = audio.load_audio_file(path)
    return audio.to_mono_16k(wav, sr)


@pytest.fixture(scope="module")
def speech_with_pause(sample_speech) -> tuple[torch.Tensor, float, float]:
    """Real speech (2 s) + 1 s of digital silence + real speech (first 2 s of the sample) at 16 kHz;
    returns the waveform and the pause's start / end in seconds."""
    a = _wave(SPEECH)
    b = _wave(sample_speech)[: 2 * 16000]
    gap = torch.zeros(int(PAUSE_S * 16000))
    start = a.shape[0] / 16000
    return torch.cat([a, gap, b]), start, start + PAUSE_S


def _motion(frames: int, fps: float = 25.0, seed: int = 0) -> Motion:
    """A smooth motion with realistic magnitudes (KDTalker's norm statistics: mean + smooth variation)."""
    norm = np.load(ROOT / "kdtalker_core" / "assets" / "norm.npz")
    keys = ("scale", "yaw", "pitch", "roll", "t", "exp")
    mean = np.concatenate([norm[k + "_mean"].reshape(-1) for k in keys])
    std = np.concatenate([norm[k + "_std"].reshape(-1) for k in keys])
    g = torch.Generator().manual_seed(seed)
    walk = torch.cumsum(torch.randn(frames, MOTION_DIM, generator=g, dtype=torch.float64), 0)
    walk = (walk - walk.mean(0)) / (walk.std(0) + 1e-9)
    return Motion(torch.as_tensor(mean + 0.5 * std * walk.numpy(), dtype=torch.float32), fps)


def _kp_info(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"kp": 0.3 * torch.randn(1, 63, generator=g), "exp": 0.02 * torch.randn(1, 63, generator=g),
            "scale": torch.tensor([[1.4]]), "pitch": torch.tensor([[3.0]]), "yaw": torch.tensor([[-5.0]]),
            "roll": torch.tensor([[1.0]]), "t": torch.tensor([[0.01, -0.02, 0.0]])}


# --------------------------------------------------------------------------- voice activity / silences


def test_voice_activity_finds_inserted_pause_at_any_frame_rate(speech_with_pause):
    wave, p0, p1 = speech_with_pause
    for fps in (25.0, 30.0, 60.0):
        n = audio.num_video_frames(wave.shape[0], fps)
        active = silence.voice_activity(wave, n, fps)
        weight = silence.pause_weight(active, fps)
        t = torch.arange(n) / fps
        inner = (t > p0 + 0.25) & (t < p1 - 0.15)
        assert bool((weight[inner] == 1).all()), fps
        speaking = (t > 0.3) & (t < p0 - 0.3)
        assert float(weight[speaking].mean()) < 0.15, fps
        # the first detected pause starts and ends within 0.2 s of the inserted silence; the next one is
        # the sample clip's own 0.32 s pause (0.52-0.84 s into it)
        starts, stops = _runs(weight > 0.5)
        assert abs(starts[0] / fps - p0) < 0.2 and abs(stops[0] / fps - p1) < 0.2
        assert abs(starts[1] / fps - (p1 + 0.6)) < 0.15 and abs(stops[1] / fps - (p1 + 0.8)) < 0.15


def test_voice_activity_finds_the_sample_clips_own_pause(sample_speech):
    wave = _wave(sample_speech)
    n = audio.num_video_frames(wave.shape[0])
    weight = silence.pause_weight(silence.voice_activity(wave, n))
    db = silence.frame_energy_db(wave, n)
    # the clip has 0.32 s of digital silence at frames 13-20 (0.52-0.84 s) and word gaps of 1-2 frames
    assert float(db[14:20].max()) < -90
    assert bool((weight[15:19] > 0.5).all())
    assert float(weight[25:120].max()) == 0.0  # short word gaps are bridged by the hangover


def test_frame_energy_is_aligned_to_video_frames():
    wave = torch.zeros(16000)
    wave[640 * 7: 640 * 8] = 0.5  # exactly frame 7 at 25 fps
    db = silence.frame_energy_db(wave, 30)
    assert torch.argmax(db) == 7 and abs(float(db[7]) - 10 * math.log10(0.25)) < 1e-9
    assert float(db[6]) == silence.SILENCE_DB and float(db[8]) == silence.SILENCE_DB
    assert float(db[29]) == silence.SILENCE_DB  # past the end of the audio


def test_calm_silences_strength_zero_is_bit_identical(speech_with_pause):
    wave, _, _ = speech_with_pause
    n = audio.num_video_frames(wave.shape[0])
    motion = _motion(n)
    out = silence.calm_silences_from_audio(motion, wave, 0.0)
    assert torch.equal(out.data, motion.data) and out.data is not motion.data
    weight = silence.pause_weight(silence.voice_activity(wave, n))
    assert torch.equal(silence.calm_silences(motion, weight, 0.0).data, motion.data)


def test_calm_silences_closes_lips_and_calms_head_only_in_pauses(speech_with_pause):
    wave, p0, p1 = speech_with_pause
    n = audio.num_video_frames(wave.shape[0])
    motion = _motion(n, seed=3)
    neutral = _kp_info()["exp"]
    weight = silence.pause_weight(silence.voice_activity(wave, n))
    out = silence.calm_silences(motion, weight, 1.0, neutral_exp=neutral)
    speaking = weight == 0
    assert torch.equal(out.data[speaking], motion.data[speaking])
    exp_in, exp_out = motion.exp, out.exp
    lips = list(retarget.LIP_KEYPOINTS)
    others = [k for k in range(NUM_KP) if k not in lips]
    assert torch.equal(exp_out[:, others], exp_in[:, others])
    full = weight == 1
    assert torch.allclose(exp_out[full][:, lips], neutral.reshape(NUM_KP, 3)[lips].expand(int(full.sum()), -1, -1),
                          atol=1e-7)
    # head: the pose moves less inside the pause than before
    pose_in, pose_out = motion.data[full][:, POSE_COLS], out.data[full][:, POSE_COLS]
    assert float(pose_out.diff(dim=0).abs().sum()) < 0.5 * float(pose_in.diff(dim=0).abs().sum())
    assert torch.equal(out.data[:, 0], motion.data[:, 0])  # scale untouched
    # half strength lands half way
    half = silence.calm_silences(motion, weight, 0.5, neutral_exp=neutral, head=False)
    mid = (exp_in[full][:, lips] + exp_out[full][:, lips]) / 2
    assert torch.allclose(half.exp[full][:, lips], mid, atol=1e-6)
    assert torch.equal(half.data[:, POSE_COLS], motion.data[:, POSE_COLS])


def test_calm_silences_rejects_bad_inputs():
    motion = _motion(10)
    with pytest.raises(Exception, match="strength"):
        silence.calm_silences(motion, torch.ones(10), 1.5)
    with pytest.raises(Exception, match="frames"):
        silence.calm_silences(motion, torch.ones(9), 0.5)


# --------------------------------------------------------------------------- blinks / eyes / mouth fallback


def test_blink_curve_rate_shape_and_seed():
    fps, seconds = 25.0, 120.0
    n = int(seconds * fps)
    curve = blink_curve(n, fps, rate_per_min=15, seed=4)
    starts = ((curve[1:] > 0) & (curve[:-1] == 0)).sum()
    assert 20 <= int(starts) <= 40  # ~30 blinks in 2 minutes
    assert float(curve.max()) == 1.0 and float(curve.min()) == 0.0
    # every blink reaches full closure on a frame, even at 25 fps
    peaks = [float(curve[a:b].max()) for a, b in zip(*_runs(curve > 0))]
    assert min(peaks) == 1.0
    assert torch.equal(curve, blink_curve(n, fps, rate_per_min=15, seed=4))
    assert not torch.equal(curve, blink_curve(n, fps, rate_per_min=15, seed=5))
    # the same seed blinks at the same moments at another frame rate
    c60 = blink_curve(int(seconds * 60), 60.0, rate_per_min=15, seed=4)
    t25 = torch.nonzero(curve == 1).reshape(-1) / 25.0
    t60 = torch.nonzero(c60 == 1).reshape(-1) / 60.0
    assert all(float((t60 - t).abs().min()) < 0.05 for t in t25)
    assert len(blink_times(seconds, 15, 0.25, 4)) == int(starts)
    assert torch.equal(blink_curve(n, fps, rate_per_min=0), torch.zeros(n))


def _runs(mask: torch.Tensor) -> tuple[list[int], list[int]]:
    padded = torch.cat([torch.zeros(1, dtype=torch.int8), mask.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    change = torch.nonzero(padded.diff()).reshape(-1).tolist()
    return change[0::2], change[1::2]


def test_blinks_change_eye_keypoints_only():
    motion = _motion(250)
    out = retarget.add_blinks(motion, 20, seed=2)
    diff = (out.data - motion.data).abs()
    changed_cols = set(torch.nonzero(diff.sum(0)).reshape(-1).tolist())
    eye_y = {EXP_COLS.start + 3 * k + 1 for k in (11, 13, 15, 16)}
    assert changed_cols == eye_y
    assert {(c - EXP_COLS.start) // 3 for c in changed_cols} <= set(retarget.EYE_KEYPOINTS)
    # closed frames move the upper lids by the full offset
    closure = blink_curve(250, 25.0, 20, seed=2)
    full = closure == 1
    assert bool(full.any())
    col = EXP_COLS.start + 3 * 11 + 1
    assert torch.allclose(out.data[full, col] - motion.data[full, col], torch.tensor(0.039), atol=1e-6)
    assert torch.equal(retarget.add_blinks(motion, 0.0).data, motion.data)
    # eye openness without blinks: a constant offset, 0 = fully closed
    shut = retarget.add_blinks(motion, 0.0, eye_open=0.0)
    assert torch.allclose(shut.data[:, col] - motion.data[:, col], torch.full((250,), 0.039), atol=1e-6)


def test_scale_mouth_touches_lip_keypoints_only():
    motion = _motion(100)
    neutral = _kp_info()["exp"]
    out = retarget.scale_mouth(motion, 1.5, neutral)
    lips = list(retarget.LIP_KEYPOINTS)
    others = [k for k in range(NUM_KP) if k not in lips]
    assert torch.equal(out.exp[:, others], motion.exp[:, others])
    expect = neutral.reshape(NUM_KP, 3)[lips] + 1.5 * (motion.exp[:, lips] - neutral.reshape(NUM_KP, 3)[lips])
    assert torch.allclose(out.exp[:, lips], expect, atol=1e-6)
    assert torch.equal(retarget.scale_mouth(motion, 1.0).data, motion.data)


# --------------------------------------------------------------------------- render-time keypoints


@pytest.fixture(scope="module")
def retarget_nets(tmp_path_factory) -> retarget.RetargetNetworks:
    """Random weights in the official stitching_retargeting_module.pth layout, read by the loaders."""
    from model_files import randomize

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in randomize(weights.official_file_layout(f"{weights.STITCHING_NAME}.pth"), 20).items():
        group, rest = key.split("/", 1)
        groups.setdefault(group, {})[rest] = value
    path = tmp_path_factory.mktemp("lp") / f"{weights.STITCHING_NAME}.pth"
    torch.save(groups, path)
    lp = weights.load_liveportrait({weights.STITCHING_NAME: path}, names=(weights.STITCHING_NAME,))
    sd = lp[weights.STITCHING_NAME]
    nets = {g: weights.load_network(g, sd[g], file=path) for g in ("retarget_shoulder", "retarget_eye",
                                                                    "retarget_mouth")}
    return retarget.RetargetNetworks(stitching=nets["retarget_shoulder"], eye=nets["retarget_eye"],
                                     lip=nets["retarget_mouth"])


def _driving(frames: int = 60):
    motion = _motion(frames, seed=5)
    info = _kp_info()
    from kdtalker_core.keypoints import transform_keypoint

    return motion, info, transform_keypoint(info), driving_keypoints(motion, info)


def test_default_options_return_x_d_itself(retarget_nets):
    motion, info, x_s, x_d = _driving()
    out = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion,
                                     options=retarget.PerformanceOptions(), networks=retarget_nets)
    assert out is x_d


def test_eye_mlp_path_versus_fallback(retarget_nets):
    motion, info, x_s, x_d = _driving(250)
    opts = retarget.PerformanceOptions(blink_rate=20, blink_seed=2)
    ratios = retarget.SourceRatios(eyes=(0.30, 0.32), lip=0.05)
    mlp = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion, options=opts,
                                     networks=retarget_nets, ratios=ratios)
    fallback = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion, options=opts,
                                          networks=None, ratios=ratios)
    closure = blink_curve(250, 25.0, 20, seed=2)
    open_frames, shut = closure == 0, closure == 1
    # open eyes: both paths leave the frame exactly as it was
    assert torch.equal(mlp[open_frames], x_d[open_frames]) and torch.equal(fallback[open_frames], x_d[open_frames])
    # closed eyes: the fallback moves exactly the eyelid keypoints by scale * offsets ...
    expect = x_d[shut] + 1.4 * retarget.EYE_CLOSE_OFFSETS
    assert torch.allclose(fallback[shut], expect, atol=1e-6)
    # ... the MLP path gives its own offset: R_eye(x_s, [c_l, c_r, 0]) - R_eye(x_s, [c_l, c_r, c_mean])
    net = retarget_nets.eye
    feats = torch.cat([x_s.reshape(1, -1).repeat(2, 1), torch.tensor([[0.30, 0.32, 0.0], [0.30, 0.32, 0.31]])], 1)
    with torch.no_grad():
        raw = net(feats)
    expect_mlp = (raw[0] - raw[1]).reshape(NUM_KP, 3)
    assert torch.allclose(mlp[shut] - x_d[shut], expect_mlp.expand(int(shut.sum()), -1, -1), atol=1e-6)
    assert not torch.allclose(mlp[shut], fallback[shut])
    forced = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion,
                                        options=retarget.PerformanceOptions(blink_rate=20, blink_seed=2,
                                                                            use_networks=False),
                                        networks=retarget_nets, ratios=ratios)
    assert torch.equal(forced, fallback)


def test_lip_mlp_scales_the_opening_it_measures(retarget_nets):
    _, info, x_s, _ = _driving(4)
    net = retarget_nets.lip
    ratios = retarget.SourceRatios(lip=0.1)
    exp_s = info["exp"].reshape(NUM_KP, 3)
    # the MLP's own opening direction (per unit of ratio) on the lip keypoints
    feats = torch.cat([x_s.reshape(1, -1).repeat(2, 1), torch.tensor([[0.1, 0.05], [0.1, 0.15]])], 1)
    with torch.no_grad():
        raw = net(feats)
    g = ((raw[1] - raw[0]) / 0.1).reshape(NUM_KP, 3)
    mask = torch.zeros(NUM_KP, 1)
    mask[list(retarget.LIP_KEYPOINTS)] = 1
    g = g * mask
    openings = torch.tensor([0.0, 0.05, 0.1, 0.2])  # frames whose lips sit at c_s + opening
    exp = exp_s + openings.reshape(-1, 1, 1) * g / 1.4
    delta = retarget.lip_delta_mlp(net, x_s, ratios, exp, exp_s, 1.4, factor=1.5)

    def lip(c: float) -> torch.Tensor:
        with torch.no_grad():
            return net(torch.cat([x_s.reshape(1, -1), torch.tensor([[0.1, c]])], 1)).reshape(NUM_KP, 3)

    for i, o in enumerate(openings.tolist()):
        assert torch.allclose(delta[i], lip(0.1 + 1.5 * o) - lip(0.1 + o), atol=1e-5), o
    assert torch.allclose(delta[0], torch.zeros(NUM_KP, 3), atol=1e-7)
    same = retarget.lip_delta_mlp(net, x_s, ratios, exp, exp_s, 1.4, factor=1.0)
    assert torch.equal(same, torch.zeros_like(same))


def test_mouth_fallback_matches_scaled_motion(retarget_nets):
    motion, info, x_s, x_d = _driving(50)
    opts = retarget.PerformanceOptions(mouth_open=1.5)
    out = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion, options=opts)
    # same as driving the keypoints from the motion whose lips were scaled around the source expression
    scaled = retarget.scale_mouth(motion, 1.5, info["exp"])
    assert torch.allclose(out, driving_keypoints(scaled, info), atol=1e-6)
    with_mlp = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion, options=opts,
                                          networks=retarget_nets)
    assert not torch.allclose(with_mlp, out)


def test_stitching_option(retarget_nets):
    motion, info, x_s, x_d = _driving(8)
    opts = retarget.PerformanceOptions(stitching=True)
    out = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion, options=opts,
                                     networks=retarget_nets)
    with torch.no_grad():
        delta = retarget_nets.stitching(torch.cat([x_s.reshape(1, -1).expand(8, -1), x_d.reshape(8, -1)], 1))
    expect = x_d + delta[:, :63].reshape(8, NUM_KP, 3)
    expect[..., :2] += delta[:, 63:65].reshape(8, 1, 2)
    assert torch.allclose(out, expect, atol=1e-6)
    with pytest.raises(Exception, match="stitching_retargeting_module"):
        retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion, options=opts)


def test_source_ratios_from_a_real_face(sample_portrait):
    from kdtalker_core import face

    photo = face.to_rgb_uint8(np.asarray(Image.open(sample_portrait)))
    lm = face.detect_faces(photo)[0].landmarks
    r = retarget.source_ratios(lm)
    assert all(0.15 < e < 0.5 for e in r.eyes)  # open eyes
    assert 0.0 <= r.lip < 0.15  # closed mouth
    scaled = retarget.source_ratios(lm * 3.0 + 17)
    assert abs(scaled.eye_mean - r.eye_mean) < 1e-6


def test_apply_to_portrait_uses_the_faces_own_ratios(retarget_nets, sample_portrait):
    from types import SimpleNamespace

    from kdtalker_core import face

    crop = face.crop_portrait(np.asarray(Image.open(sample_portrait).convert("RGB")))
    motion, info, x_s, x_d = _driving(100)
    portrait = SimpleNamespace(x_s=x_s, kp_info=info, crop=crop)  # the fields of pipeline.Portrait it reads
    models = SimpleNamespace(stitching=retarget_nets.stitching, retarget_eye=retarget_nets.eye,
                             retarget_lip=retarget_nets.lip)
    assert retarget.apply_to_portrait(x_d, models, portrait, motion, None) is x_d
    opts = retarget.PerformanceOptions(eye_open=0.5, mouth_open=1.3, stitching=True)
    out = retarget.apply_to_portrait(x_d, models, portrait, motion, opts)
    expect = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion, options=opts,
                                        networks=retarget_nets, ratios=retarget.source_ratios(crop.face.landmarks))
    assert torch.equal(out, expect)
    default_ratios = retarget.apply_performance(x_d, x_s=x_s, source_kp_info=info, motion=motion, options=opts,
                                                networks=retarget_nets)
    assert not torch.allclose(out, default_ratios)


# --------------------------------------------------------------------------- frame rate


def test_resample_lengths_and_exact_frames():
    motion = _motion(50)  # 2 s
    for fps, n in ((30, 60), (24, 48), (50, 100), (60, 120), (12.5, 25), (29.97, 60)):
        out = retime.resample_motion(motion, fps)
        assert out.num_frames == n and out.fps == float(fps)
        assert abs(out.duration - motion.duration) <= 0.5 / fps
    assert torch.equal(retime.resample_motion(motion, 50).data[::2], motion.data)
    assert torch.equal(retime.resample_motion(motion, 25).data, motion.data)
    assert torch.equal(retime.resample_motion(motion, 30).data[::6], motion.data[::5])
    # non-rotation columns are linear in time
    out = retime.resample_motion(motion, 50)
    mid = (motion.data[:-1, EXP_COLS] + motion.data[1:, EXP_COLS]) / 2
    assert torch.allclose(out.data[1:-1:2, EXP_COLS], mid, atol=1e-6)
    assert retime.resample_motion(Motion(motion.data[:1]), 60).num_frames == 2


def _angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rel = a.transpose(1, 2) @ b
    return torch.rad2deg(torch.acos(((rel.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)))


def test_yaw_through_180_interpolates_the_short_way():
    data = torch.zeros(2, MOTION_DIM, dtype=torch.float64)
    data[:, 1] = torch.tensor([170.0, -170.0])
    out = retime.resample_motion(Motion(data, 25.0), 100.0)  # 4 steps between the two frames
    yaw = out.data[:4, 1]
    assert torch.allclose(yaw, torch.tensor([170.0, 175.0, 180.0, 185.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(out.data[:4, [2, 3]], torch.zeros(4, 2, dtype=torch.float64), atol=1e-9)


def test_rotation_slerp_is_the_geodesic_midpoint():
    data = torch.zeros(2, MOTION_DIM, dtype=torch.float64)
    data[0, 1:4] = torch.tensor([30.0, -10.0, 5.0])
    data[1, 1:4] = torch.tensor([-20.0, 25.0, -15.0])
    out = retime.resample_motion(Motion(data, 25.0), 50.0)
    rots = get_rotation_matrix(out.data[:, 2], out.data[:, 1], out.data[:, 3])
    r0, rm, r1 = rots[0:1], rots[1:2], rots[2:3]
    half = _angle_between(r0, r1) / 2
    assert torch.allclose(_angle_between(r0, rm), half, atol=1e-6)
    assert torch.allclose(_angle_between(rm, r1), half, atol=1e-6)
    # Euler angle lerp would give another rotation: slerp is not the naive average
    naive = get_rotation_matrix(*(data[:, c].mean().reshape(1) for c in (2, 1, 3)))
    assert float(_angle_between(naive, rm)) > 0.1


# --------------------------------------------------------------------------- plot


def test_plot_performance_shows_blinks_and_pauses(speech_with_pause):
    wave, _, _ = speech_with_pause
    n = audio.num_video_frames(wave.shape[0])
    before = _motion(n)
    weight = silence.pause_weight(silence.voice_activity(wave, n))
    after = retarget.add_blinks(silence.calm_silences(before, weight, 1.0), 30, seed=1)
    img = motion_edit.plot_performance(before, after, weight, width=400, height=240)
    assert img.shape == (240, 400, 3) and img.dtype == torch.float32
    tint = torch.tensor([0.86, 0.92, 1.0])
    tinted = (img - tint).abs().sum(-1) < 1e-6
    cols = torch.nonzero(tinted.any(0)).reshape(-1)
    assert len(cols) > 0
    sig_b, sig_a = motion_edit.face_signals(before), motion_edit.face_signals(after)
    assert float(np.max(sig_a["eyes"] - sig_b["eyes"])) > 0.9  # blinks: full closure
    same = motion_edit.plot_performance(before, before, None, width=400, height=240)
    assert not torch.equal(same, img)


# --------------------------------------------------------------------------- nodes


@pytest.fixture(scope="module")
def perf_nodes():
    """nodes/performance.py of the package imported the way ComfyUI imports a custom-node folder."""
    stub = str(ROOT / "tests" / "comfy_stub")
    if stub not in sys.path:
        sys.path.insert(0, stub)
    name = str(ROOT).replace(".", "_x_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[f"{name}.nodes.performance"], sys.modules[f"{name}.nodes"]


def test_performance_nodes(perf_nodes, speech_with_pause):
    perf, nodes_pkg = perf_nodes
    ids = {n.GET_SCHEMA().node_id for n in nodes_pkg.NODES}
    assert {"KDTalkerBlinks", "KDTalkerMouthOpenness", "KDTalkerCalmSilences", "KDTalkerFrameRate"} <= ids
    for cls in (perf.KDTalkerBlinks, perf.KDTalkerMouthOpenness, perf.KDTalkerCalmSilences, perf.KDTalkerFrameRate):
        schema = cls.GET_SCHEMA()
        assert schema.description and all(len(i.tooltip or "") > 10 for i in schema.inputs)
    wave, _, _ = speech_with_pause
    n = audio.num_video_frames(wave.shape[0])
    motion = _motion(n)

    class Features:  # what Encode Audio outputs: only the waveform the motion covers is read here
        waveform_16k = wave

    with torch.inference_mode():
        # every default leaves the motion as it is
        assert torch.equal(perf.KDTalkerBlinks.execute(motion, 0.0, 0.25, 0, 1.0)[0].data, motion.data)
        assert torch.equal(perf.KDTalkerMouthOpenness.execute(motion, 1.0)[0].data, motion.data)
        calm, chart = perf.KDTalkerCalmSilences.execute(motion, Features(), 0.0, True, True)
        assert torch.equal(calm.data, motion.data) and chart.shape == (1, 480, 768, 3)
        assert torch.equal(perf.KDTalkerFrameRate.execute(motion, 25.0)[0].data, motion.data)
        blinked = perf.KDTalkerBlinks.execute(motion, 15.0, 0.25, 3, 1.0)[0]
        assert torch.equal(blinked.data, retarget.add_blinks(motion, 15.0, 0.25, 3).data)
        calm = perf.KDTalkerCalmSilences.execute(motion, Features(), 1.0, True, False)[0]
        assert not torch.equal(calm.data, motion.data)
        assert torch.equal(calm.data[:, POSE_COLS], motion.data[:, POSE_COLS])
        at30 = perf.KDTalkerFrameRate.execute(motion, 30.0)[0]
        assert at30.fps == 30.0 and at30.num_frames == round(n / 25 * 30)
    opts = perf.performance_options(blinks_per_minute=12, mouth_openness=1.2, stitching=True)
    # (the package imports its own copy of kdtalker_core: compare the fields)
    assert dataclasses.asdict(opts) == dataclasses.asdict(
        retarget.PerformanceOptions(blink_rate=12, mouth_open=1.2, stitching=True))
    assert perf.performance_options().is_identity
    assert [i.id for i in perf.render_performance_inputs()] == [
        "blinks_per_minute", "blink_duration", "blink_seed", "eye_openness", "mouth_openness", "stitching"]


def test_render_nodes_take_optional_performance_inputs_and_all_in_one_adds_fps_and_video(perf_nodes):
    """Render, Render Video and the all-in-one node get the new knobs as optional widgets (saved workflows
    keep loading); the all-in-one node's VIDEO output comes after its old outputs."""
    perf, nodes_pkg = perf_nodes
    by_id = {n.GET_SCHEMA().node_id: n for n in nodes_pkg.NODES}
    wanted = [i.id for i in perf.render_performance_inputs()]
    for node_id in ("KDTalkerRender", "KDTalkerRenderVideo"):
        inputs = {i.id: i for i in by_id[node_id].GET_SCHEMA().inputs}
        assert all(inputs[k].optional for k in wanted), node_id
        assert inputs["blinks_per_minute"].default == 0.0 and inputs["stitching"].default is False
    one = by_id["KDTalker"].GET_SCHEMA()
    inputs = {i.id: i for i in one.inputs}
    for k in ("fps", "blinks_per_minute", "silence_calm"):
        assert inputs[k].optional and len(inputs[k].tooltip) > 20, k
    assert inputs["fps"].default == 25.0 and inputs["silence_calm"].default == 0.0
    assert [(o.id, o.io_type) for o in one.outputs] == [
        ("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT"), ("video", "VIDEO")]


def test_motion_scale_renders_the_motions_own_scale():
    """Absolute driving uses the portrait's scale unless motion_scale is on (a driving video's zoom)."""
    motion, info, _, x_plain = _driving(8)
    data = motion.data.clone()
    data[:, 0] = torch.linspace(0.8, 1.2, 8) * info["scale"].reshape(())
    zoomed = motion.with_data(data)
    assert torch.equal(driving_keypoints(zoomed, info), x_plain), "scale column ignored by default"
    x_zoom = driving_keypoints(zoomed, info, motion_scale=True)
    t_xy = zoomed.t[:, None] * torch.tensor([1.0, 1.0, 0.0])  # t_z is dropped
    k = torch.linspace(0.8, 1.2, 8).reshape(8, 1, 1)
    torch.testing.assert_close(x_zoom - t_xy, k * (x_plain - t_xy), atol=1e-5, rtol=1e-5)

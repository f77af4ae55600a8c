"""Motion glue: Kalman smoothing, normalisation, padding, windowed sampling, driving keypoints,
edits and motion files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kdtalker_core import motion as M
from kdtalker_core import motion_edit as E
from kdtalker_core.errors import AudioError, InputError, ModelFileError
from kdtalker_core.golden import run_fixture
from kdtalker_core.keypoints import transform_keypoint
from kdtalker_core.smoothing import kalman_smooth

SOURCE_KEYS = ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")


# --------------------------------------------------------------------------- helpers


def reference_kalman(y: np.ndarray, q: float = 0.05, r: float = 0.001) -> np.ndarray:
    """Textbook per-step Kalman filter + RTS smoother (scalar covariances), float64."""
    steps = y.shape[0]
    mp = np.empty_like(y)
    mf = np.empty_like(y)
    pp = np.empty(steps)
    pf = np.empty(steps)
    for t in range(steps):
        if t == 0:
            mp[t], pp[t] = y[0], 1.0
        else:
            mp[t], pp[t] = mf[t - 1], pf[t - 1] + q
        k = pp[t] / (pp[t] + r)
        mf[t] = mp[t] + k * (y[t] - mp[t])
        pf[t] = pp[t] - k * pp[t]
    ms = mf.copy()
    for t in range(steps - 2, -1, -1):
        j = pf[t] / pp[t + 1]
        ms[t] = mf[t] + j * (ms[t + 1] - mp[t + 1])
    return ms


@pytest.fixture(scope="module")
def pipeline_fixture(golden_dir: Path) -> dict:
    d = golden_dir / "motion_pipeline"
    return {
        "meta": json.loads((d / "meta.json").read_text()),
        "inputs": load_file(str(d / "inputs.safetensors")),
        "outputs": load_file(str(d / "outputs.safetensors")),
        "stats": M.NormStats.from_dict(load_file(str(d / "norm.safetensors"))),
    }


@pytest.fixture(scope="module")
def source(pipeline_fixture: dict) -> dict[str, torch.Tensor]:
    return {k: pipeline_fixture["inputs"][f"src_{k}"] for k in SOURCE_KEYS}


@pytest.fixture(scope="module")
def small_denoiser(golden_dir: Path, pipeline_fixture: dict) -> torch.nn.Module:
    from kdtalker_core.networks.denoiser import MotionDenoiser

    cfg = pipeline_fixture["meta"]["config"]["denoiser"]
    model = MotionDenoiser(dim=cfg["dim"], num_layers=cfg["num_layers"]).float().eval()
    weights = load_file(str(golden_dir / "denoiser" / "weights.safetensors"))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    return model


def make_motion(frames: int = 40, seed: int = 0, fps: float = 25.0) -> M.Motion:
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(frames, M.MOTION_DIM, generator=g)
    data[:, 0] = 1.6 + 0.05 * data[:, 0]
    data[:, 1:4] *= 10.0
    data[:, 7:] *= 0.02
    return M.Motion(data, fps)


# --------------------------------------------------------------------------- golden fixtures


@pytest.mark.parametrize("name", ["kalman", "motion_pipeline"])
def test_golden_fixture_passes(golden_dir: Path, name: str) -> None:
    results = run_fixture(golden_dir / name)
    failed = [r.line() for r in results if not r.ok]
    assert results and not failed, failed


# --------------------------------------------------------------------------- smoothing


@pytest.mark.parametrize("frames", [2, 3, 31, 64, 65, 300])
def test_kalman_matches_textbook_recursion(frames: int) -> None:
    y = np.cumsum(np.random.default_rng(frames).standard_normal((frames, 4)), axis=0)
    ours = kalman_smooth(torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(ours, reference_kalman(y), rtol=0, atol=1e-11)


def test_kalman_strength_scales_process_noise() -> None:
    y = np.random.default_rng(1).standard_normal((200, 3))
    ours = kalman_smooth(torch.from_numpy(y), strength=4.0).numpy()
    np.testing.assert_allclose(ours, reference_kalman(y, q=0.05 / 16), rtol=0, atol=1e-11)
    # stronger smoothing -> smaller frame-to-frame changes; 0 is off
    tv = [np.abs(np.diff(kalman_smooth(torch.from_numpy(y), strength=s).numpy(), axis=0)).sum()
          for s in (0.5, 1.0, 4.0)]
    assert tv[0] > tv[1] > tv[2]
    assert torch.equal(kalman_smooth(torch.from_numpy(y), strength=0.0), torch.from_numpy(y))


def test_kalman_constant_dtype_shape_and_errors() -> None:
    const = torch.full((500, 5), 3.25)
    out = kalman_smooth(const)
    assert out.dtype == torch.float32 and out.shape == const.shape
    assert torch.equal(out, const)
    one = torch.randn(1, 7)
    assert torch.equal(kalman_smooth(one), one)
    assert kalman_smooth(torch.randn(10)).shape == (10,)
    with pytest.raises(InputError):
        kalman_smooth(torch.randn(10, 2), strength=-1.0)
    with pytest.raises(InputError):
        kalman_smooth(torch.randn(10, 2), observation_cov=0.0)


# --------------------------------------------------------------------------- normalisation, padding


def test_norm_stats_validation(golden_dir: Path) -> None:
    arrays = load_file(str(golden_dir / "motion_pipeline" / "norm.safetensors"))
    stats = M.NormStats.from_dict({k: v.numpy() for k, v in arrays.items()})
    assert stats.motion_mean().shape == (70,) and stats.motion_std().shape == (70,)
    broken = dict(arrays)
    del broken["exp_std"]
    with pytest.raises(ModelFileError, match="exp_std"):
        M.NormStats.from_dict(broken)
    with pytest.raises(ModelFileError):
        M.NormStats.from_dict({**arrays, "t_std": torch.zeros(3)})


def test_normalize_source_and_denormalize(pipeline_fixture: dict, source: dict) -> None:
    stats, out = pipeline_fixture["stats"], pipeline_fixture["outputs"]
    input_x, ori_kp = M.normalize_source(source, stats)
    torch.testing.assert_close(input_x, out["input_x"], rtol=0, atol=0)
    torch.testing.assert_close(ori_kp, out["ori_kp"], rtol=0, atol=0)
    raw = M.denormalize(out["motion_norm"], stats)
    torch.testing.assert_close(raw.yaw[:, None], out["raw_yaw"], rtol=0, atol=0)
    torch.testing.assert_close(raw.exp.reshape(raw.num_frames, 63), out["raw_exp"], rtol=0, atol=0)
    # smoothing leaves scale alone, as the official code does
    smooth = M.smooth_motion(raw)
    torch.testing.assert_close(smooth.scale, out["scale"], rtol=0, atol=0)
    torch.testing.assert_close(smooth.t, out["t"], rtol=0, atol=0)


@pytest.mark.parametrize("frames", [1, 5, 31, 32, 63, 64, 65, 150])
def test_pad_audio_features_wraps_around(frames: int) -> None:
    feat = torch.arange(frames, dtype=torch.float32)[:, None].expand(frames, 3).contiguous()
    padded, pad = M.pad_audio_features(feat)
    assert padded.shape[0] % 64 == 0 and padded.shape[0] == frames + pad and 0 <= pad < 64
    assert torch.equal(padded[:frames], feat)
    assert torch.equal(padded[:, 0], torch.arange(frames + pad, dtype=torch.float32) % frames)
    if pad <= frames:  # where the official code works it appends the first `pad` rows
        assert torch.equal(padded, torch.cat([feat, feat[:pad]]))
    with pytest.raises(AudioError):
        M.pad_audio_features(torch.zeros(0, 512))


# --------------------------------------------------------------------------- windowed sampler


@pytest.mark.parametrize("frames", [1, 5, 31, 64, 65])
def test_generate_any_length(small_denoiser, pipeline_fixture: dict, frames: int) -> None:
    input_x = pipeline_fixture["outputs"]["input_x"]
    ori_kp = pipeline_fixture["outputs"]["ori_kp"]
    feat = pipeline_fixture["inputs"]["aud_feat"][:frames]
    calls: list[tuple[int, int, int, int]] = []
    with torch.inference_mode():
        out, extras = M.generate_motion_normalized(
            small_denoiser, input_x, ori_kp, feat, steps=2,
            generator=torch.Generator().manual_seed(3), callback=lambda *a: calls.append(a),
            return_intermediates=True,
        )
    n_win = -(-frames // 64)
    assert out.shape == (frames, 70) and bool(torch.isfinite(out).all())
    assert extras["window_samples"].shape == (n_win, 64, 70)
    torch.testing.assert_close(extras["window_ref_kps"][0], input_x[0])
    if n_win > 1:  # window k is conditioned on the last frame of window k-1
        torch.testing.assert_close(extras["window_ref_kps"][1], extras["window_samples"][0, -1])
    assert calls == [(w, n_win, s, 2) for w in range(n_win) for s in range(2)]


def test_generate_seeded_and_cancellable(small_denoiser, pipeline_fixture: dict) -> None:
    out = pipeline_fixture["outputs"]
    feat = pipeline_fixture["inputs"]["aud_feat"][:70]

    def run(seed: int) -> torch.Tensor:
        with torch.inference_mode():
            return M.generate_motion_normalized(
                small_denoiser, out["input_x"], out["ori_kp"], feat, steps=2,
                generator=torch.Generator().manual_seed(seed),
            )

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)

    class Cancelled(Exception):
        pass

    def cancel(window: int, n_windows: int, step: int, n_steps: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        M.generate_motion_normalized(small_denoiser, out["input_x"], out["ori_kp"], feat, steps=2,
                                     callback=cancel)
    with pytest.raises(InputError):
        M.generate_motion_normalized(small_denoiser, out["input_x"], out["ori_kp"], feat, steps=2,
                                     init_noise=torch.zeros(1, 64, 70))


# --------------------------------------------------------------------------- driving keypoints


def test_driving_keypoints_absolute_and_relative(pipeline_fixture: dict, source: dict) -> None:
    out = pipeline_fixture["outputs"]
    cols = [out["scale"][:, None], out["yaw"], out["pitch"], out["roll"], out["t"], out["exp"]]
    smooth = M.Motion(torch.cat(cols, dim=1))
    torch.testing.assert_close(M.driving_keypoints(smooth, source), out["x_d"], rtol=0, atol=1e-6)
    tr = M.driving_transform(smooth, source)
    assert bool((tr.translation[:, 2] == 0).all())
    # relative motion: frame 0 reproduces the source pose exactly (up to rounding)
    rel = M.driving_keypoints(smooth, source, relative=True)
    assert rel.shape == (smooth.num_frames, 21, 3)
    torch.testing.assert_close(rel[0], transform_keypoint(source)[0], rtol=0, atol=1e-5)
    # a head that does not move gives the same keypoints every frame except for expression
    still = E.scale_expression(E.still_head(smooth), 0.0)
    x_still = M.driving_keypoints(still, source)
    torch.testing.assert_close(x_still, x_still[:1].expand_as(x_still), rtol=0, atol=0)


# --------------------------------------------------------------------------- edits


def test_scale_expression_and_pose() -> None:
    mo = make_motion()
    zero = E.scale_expression(mo, 0.0)
    assert bool((zero.exp == 0).all())
    torch.testing.assert_close(zero.data[:, :7], mo.data[:, :7], rtol=0, atol=0)
    double = E.scale_expression(mo, 2.0, center="mean")
    torch.testing.assert_close(double.exp - mo.exp, mo.exp - mo.exp.mean(0, keepdim=True))
    frozen = E.scale_pose(mo, 0.0, center="first")
    assert torch.equal(frozen.data[:, 1:7], mo.data[:1, 1:7].expand(mo.num_frames, 6))
    torch.testing.assert_close(E.scale_pose(mo, 1.0).data, mo.data)
    halved = E.scale_pose(mo, 0.5, center="mean")
    torch.testing.assert_close(halved.yaw.std(), 0.5 * mo.yaw.std())
    with pytest.raises(InputError):
        E.scale_pose(mo, 1.0, center="middle")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        E.scale_expression(mo, float("nan"))


def test_still_head(source: dict) -> None:
    mo = make_motion()
    still = E.still_head(mo)
    for angle in (still.yaw, still.pitch, still.roll):
        assert bool((angle == angle[0]).all())
    assert bool((still.t == mo.t[0]).all())
    assert torch.equal(still.exp, mo.exp)
    to_src = E.still_head(mo, source)
    assert bool((to_src.yaw == source["yaw"].reshape(())).all())
    assert bool((to_src.t == source["t"]).all())


def test_blend() -> None:
    a, b = make_motion(40, seed=1), make_motion(30, seed=2)
    mix = E.blend(a, b, 0.25)
    assert mix.num_frames == 30
    torch.testing.assert_close(mix.data, 0.75 * a.data[:30] + 0.25 * b.data)
    assert torch.equal(E.blend(a, b, 0.0).data, a.data[:30])
    with pytest.raises(InputError):
        E.blend(a, make_motion(30, fps=30.0), 0.5)
    with pytest.raises(InputError):
        E.blend(a, b, 1.5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    mo = make_motion(33, fps=30.0)
    path = E.save_motion(tmp_path / "talk.safetensors", mo)
    back = E.load_motion(path)
    assert back.fps == 30.0 and torch.equal(back.data, mo.data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.safetensors"]  # no temp files left
    E.save_motion(path, make_motion(5))  # overwrite in place
    assert E.load_motion(path).num_frames == 5
    save_file({"x": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="not a KDTalker motion file"):
        E.load_motion(tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        E.load_motion(tmp_path / "missing.safetensors")


def test_plot_motion() -> None:
    img = E.plot_motion(make_motion(60), width=320, height=200)
    assert img.shape == (200, 320, 3) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    colourful = (img.max(dim=2).values - img.min(dim=2).values) > 0.3
    assert int(colourful.sum()) > 500  # curves were drawn
    assert E.plot_motion(make_motion(1), width=64, height=64).shape == (64, 64, 3)

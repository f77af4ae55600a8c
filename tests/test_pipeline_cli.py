"""End to end: the library pipeline and the CLI on a real photo and real speech.

The slow tests use random FULL-size weights in the official file layouts (tests/model_files.py):
the frames are meaningless, but every shape, file and byte that reaches the user is real.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from media import write_wav

from kdtalker_core import cli, options, pipeline, precision
from kdtalker_core.audio import load_audio_file
from kdtalker_core.errors import AudioError, InputError
from kdtalker_core.motion import Motion
from kdtalker_core.video import Mp4Writer, probe_mp4

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "data" / "speech_16k_mono.wav"


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_without_weights_fails_with_the_doctor_message(tmp_path, capsys, sample_portrait):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, _, err = _run_cli(["generate", "--models-dir", str(tmp_path / "empty"), "--image", str(sample_portrait),
                           "--audio", str(SPEECH), "--out", str(out_dir / "talk.mp4")], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "KDTalker.pth" in err and "wav2lip.pth" in err and str(tmp_path / "empty") in err
    assert "huggingface.co" in err
    assert list(out_dir.iterdir()) == []


def test_bad_inputs_fail_before_loading_models(tmp_path, capsys, sample_portrait):
    bad_image = tmp_path / "photo.png"
    bad_image.write_bytes(b"not an image at all")
    rc, _, err = _run_cli(["generate", "--models-dir", str(tmp_path), "--image", str(bad_image),
                           "--audio", str(SPEECH), "--out", str(tmp_path / "a.mp4")], capsys)
    assert rc == 2 and err.startswith("error: ") and "photo.png" in err

    import imageio.v3 as iio

    no_face = tmp_path / "wall.png"
    iio.imwrite(no_face, np.full((200, 240, 3), 128, np.uint8))
    rc, _, err = _run_cli(["generate", "--models-dir", str(tmp_path), "--image", str(no_face),
                           "--audio", str(SPEECH), "--out", str(tmp_path / "n.mp4")], capsys)
    assert rc == 2 and err.startswith("error: No face") and "wall.png" in err, err

    empty = write_wav(tmp_path / "empty.wav", np.zeros(0))
    rc, _, err = _run_cli(["generate", "--models-dir", str(tmp_path), "--image", str(sample_portrait),
                           "--audio", str(empty), "--out", str(tmp_path / "b.mp4")], capsys)
    assert rc == 2 and err.startswith("error: ") and "audio" in err.lower()

    rc, _, err = _run_cli(["generate", "--models-dir", str(tmp_path), "--image", str(sample_portrait),
                           "--audio", str(SPEECH), "--out", str(tmp_path / "c.avi")], capsys)
    assert rc == 2 and ".mp4" in err

    rc, _, err = _run_cli(["generate", "--models-dir", str(tmp_path), "--image", str(sample_portrait),
                           "--audio", str(SPEECH), "--max-seconds", "-1", "--out", str(tmp_path / "d.mp4")], capsys)
    assert rc == 2 and "duration_seconds" in err and "-1" in err
    assert not any(p.suffix in (".mp4", ".avi") for p in tmp_path.iterdir())


def _generate_parser():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return sub.choices["generate"]


def test_cli_and_library_share_one_set_of_defaults_and_choices():
    """The CLI's defaults and menus, and the library's keyword defaults, are options.py's."""
    args = cli.build_parser().parse_args(["generate"])
    assert options.GenerateOptions.from_mapping(vars(args)) == options.DEFAULTS
    assert (args.precision, args.attention, args.device) == (
        options.MODEL_DEFAULTS.precision, options.MODEL_DEFAULTS.attention, options.MODEL_DEFAULTS.device)
    assert args.precision == "auto"
    choices = {a.dest: a.choices for a in _generate_parser()._actions if a.choices}
    assert tuple(choices["precision"]) == precision.PRECISION_CHOICES
    assert tuple(choices["attention"]) == options.ATTENTION_BACKENDS
    assert tuple(choices["face_order"]) == options.FACE_ORDERS
    assert tuple(choices["crop_mode"]) == options.CROP_MODES
    # the old flag spellings still parse
    old = cli.build_parser().parse_args(["generate", "--max-seconds", "2", "--no-paste-back", "--chunk-size", "3"])
    assert (old.duration_seconds, old.paste_back, old.chunk_size) == (2.0, False, 3)

    import inspect

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    d = options.DEFAULTS
    assert [default(pipeline.sample_motion, k) for k in ("seed", "steps", "eta", "smoothing")] == [
        d.seed, d.steps, d.eta, d.smoothing]
    assert default(pipeline.render, "chunk_size") == default(pipeline.iter_render, "chunk_size") == d.chunk_size
    assert default(pipeline.encode_audio, "fps") == d.fps
    assert default(pipeline.prepare_portrait, "order") == d.face_order
    assert default(pipeline.load_models, "precision") == "auto"
    assert not hasattr(pipeline, "resolve_precision") or pipeline.resolve_precision is precision.resolve_precision


def test_options_are_validated_with_the_option_named():
    with pytest.raises(InputError, match="steps"):
        options.GenerateOptions(steps=0)
    with pytest.raises(InputError, match="face_order"):
        options.DEFAULTS.replace(face_order="random")
    with pytest.raises(InputError, match="duration_seconds"):
        options.GenerateOptions(duration_seconds=0)


def test_check_inputs_trims_speech_once_and_fails_without_models(sample_portrait):
    """start/duration are applied once, in 16 kHz samples; too little speech fails at once."""
    waveform, sr = load_audio_file(SPEECH)
    job = options.GenerateOptions(start_seconds=0.2, duration_seconds=0.5)
    inputs = pipeline.read_inputs(sample_portrait, SPEECH, job)
    assert inputs.speech.shape == (8000,) and inputs.num_frames == 12
    full = pipeline.trim_speech(waveform, sr)
    torch.testing.assert_close(inputs.speech, full[3200:11200])
    assert inputs.photo.shape == (512, 512, 3) and inputs.crop.source.shape == (256, 256, 3)
    with pytest.raises(AudioError, match="shorter than one video frame"):
        pipeline.check_inputs(inputs.photo, waveform, sr, job.replace(duration_seconds=0.02))
    with pytest.raises(AudioError, match="past the end"):
        pipeline.check_inputs(inputs.photo, waveform, sr, job.replace(start_seconds=1e4))


def test_mp4_writer_streams_chunks_and_appears_only_when_finished(tmp_path, sample_portrait):
    """The CLI's sink: chunks in, an mp4 with the speech out; nothing at the path before finish or
    after abort; odd frame sizes are padded to even."""
    import imageio.v3 as iio

    photo = torch.from_numpy(iio.imread(sample_portrait)[:301, :255].copy()).float() / 255
    speech, _ = load_audio_file(SPEECH)
    out = tmp_path / "clip.mp4"
    writer = Mp4Writer(out)
    writer.start(25.0, speech[0, : 5 * 640], 16000)
    for n in (2, 3):
        writer.write(photo[None].expand(n, -1, -1, -1))
    assert not out.exists()
    assert writer.finish() == 5 and [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask, "a normal file's mode, not the temp file's 0600"
    info = probe_mp4(out)
    assert info["frames"] == 5 and info["fps"] == 25.0 and abs(info["audio_seconds"] - 0.2) < 0.07

    aborted = Mp4Writer(tmp_path / "aborted.mp4")
    aborted.start(25.0)
    aborted.write(photo[None])
    aborted.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_doctor_reports_found_and_missing(tmp_path, capsys, official_models_dir):
    rc, out, _ = _run_cli(["doctor", "--models-dir", str(tmp_path)], capsys)
    assert rc == 2 and "MISSING" in out and "torch" in out
    assert "render       " in out  # frames side by side or one at a time
    rc, out, _ = _run_cli(["doctor", "--models-dir", str(official_models_dir)], capsys)
    assert rc == 0 and "KDTalker.pth" in out and "warping_module" in out


@pytest.fixture(scope="module")
def models(official_models_dir):
    return pipeline.load_models(official_models_dir, device="cpu", precision="fp32")


@pytest.mark.slow
def test_load_models_leaves_no_checkpoint_data_for_the_cyclic_gc(official_models_dir, tmp_path, monkeypatch):
    """The loaded files' tensors are freed when load_models returns, not whenever Python's cyclic
    GC next runs (the restricted unpickling of KDTalker.pth's pickled cfg leaves cycles: ~700 MB
    kept through a whole render at full size)."""
    import gc
    import sys
    import types

    class DictConfig:  # stands in for omegaconf's class, as pickled in the released KDTalker.pth
        def __init__(self, content: dict) -> None:
            self._content = content

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    pkg, sub = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.dictconfig")
    sub.DictConfig, pkg.dictconfig = DictConfig, sub
    models_dir = tmp_path / "models"
    for src in Path(official_models_dir).rglob("*"):  # the same files, linked; KDTalker.pth rewritten
        dst = models_dir / src.relative_to(official_models_dir)
        if src.is_file() and src.name != "KDTalker.pth":
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    ckpt = models_dir / "kdtalker" / "KDTalker.pth"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    data = torch.load(Path(official_models_dir) / "kdtalker" / "KDTalker.pth", weights_only=True)
    data["cfg"] = DictConfig({"run": {"lr": 2e-6}})
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "omegaconf", pkg)
        m.setitem(sys.modules, "omegaconf.dictconfig", sub)
        torch.save(data, ckpt)
    del data
    gc.collect()
    gc.disable()
    try:
        models = pipeline.load_models(models_dir, device="cpu", precision="fp32")
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        stranded = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert models.denoiser is not None
    assert sum(t.numel() * t.element_size() for t in stranded) < 1 << 20


@pytest.mark.slow
def test_photo_to_pasted_frames_with_one_frame_of_audio(models, sample_portrait):
    """One video frame of speech (40 ms: the official code crashes under 32 frames) -> one frame,
    pasted into the full 512x512 astronaut photo with the background untouched."""
    import imageio.v3 as iio

    photo = iio.imread(sample_portrait)
    waveform, sr = load_audio_file(SPEECH)
    audio = pipeline.encode_audio(models, waveform[:, 8000:8000 + 640], sr)
    assert audio.num_frames == 1 and audio.features.shape == (1, 512)
    portrait = pipeline.prepare_portrait(models, photo)
    assert portrait.feature_3d.shape == (1, 32, 16, 64, 64) and portrait.x_s.shape == (1, 21, 3)
    motion = pipeline.sample_motion(models, portrait, audio, steps=2)
    assert motion.data.shape == (1, 70) and torch.isfinite(motion.data).all()
    # a bf16 setting on a CPU keeps the denoiser in fp32 and must not round its inputs
    bf16_on_cpu = dataclasses.replace(models, precision="bf16")
    assert torch.equal(pipeline.sample_motion(bf16_on_cpu, portrait, audio, steps=2).data, motion.data)
    ticks: list[tuple[int, int]] = []
    result = pipeline.render(models, portrait, motion, chunk_size=4, callback=lambda d, t: ticks.append((d, t)))
    assert ticks[-1] == (1, 1)
    assert result.frames.shape == (1, *photo.shape[:2], 3) and result.fps == 25.0
    frames = result.frames
    assert torch.isfinite(frames).all() and float(frames.min()) >= 0 and float(frames.max()) <= 1
    outside = result.mask == 0
    assert 0.3 < float(outside.float().mean()) < 0.99
    original = torch.from_numpy(photo).float() / 255
    assert torch.equal(frames[0][outside], original[outside]), "background must be the photo's, exactly"
    assert not torch.equal(frames[0], original), "the face must be rendered"

    raw = next(pipeline.iter_render(models, portrait, motion, paste_back=False))
    assert raw.shape == (1, 512, 512, 3)


def _stage_log() -> tuple[list[tuple[str, int, int]], pipeline.StageCallback]:
    log: list[tuple[str, int, int]] = []
    return log, lambda stage, done, total: log.append((stage, done, total))


def _check_stage_log(log: list[tuple[str, int, int]]) -> None:
    """Every stage, in order, each one contiguous: starts at 0, never goes back, ends at done == total."""
    order = [stage for i, (stage, _, _) in enumerate(log) if i == 0 or log[i - 1][0] != stage]
    assert order == list(pipeline.STAGES), order
    for stage in pipeline.STAGES:
        reports = [(d, t) for s, d, t in log if s == stage]
        assert reports[0][0] == 0 and reports[-1][0] == reports[-1][1] > 0, (stage, reports)
        assert len({t for _, t in reports}) == 1, (stage, reports)
        assert [d for d, _ in reports] == sorted(d for d, _ in reports), (stage, reports)


@pytest.mark.slow
def test_generate_reports_every_stage_and_streams_to_a_sink(models, sample_portrait, tmp_path):
    """One entry point: in memory (frames returned) or streamed into the mp4 writer (frames=None);
    the stage callback covers audio, portrait, motion, render and encode, in order; a cancel from
    the callback leaves no file behind."""
    import imageio.v3 as iio

    photo = iio.imread(sample_portrait)
    waveform, sr = load_audio_file(SPEECH)
    job = options.GenerateOptions(steps=2, chunk_size=1, start_seconds=0.5)

    log, on_stage = _stage_log()
    result = pipeline.generate(models, photo, waveform, sr, job.replace(duration_seconds=0.04), on_stage=on_stage)
    _check_stage_log(log)
    assert result.frames.shape == (1, 512, 512, 3) and result.num_frames == 1 and result.fps == 25.0
    assert result.mask.shape == (512, 512) and result.speech.shape == (640,)
    assert result.precision == "fp32" and set(result.seconds) == set(pipeline.STAGES)

    log, on_stage = _stage_log()
    out = tmp_path / "talk.mp4"
    two_frames = job.replace(duration_seconds=0.08)
    streamed = pipeline.generate(models, photo, waveform, sr, two_frames, on_stage=on_stage, sink=Mp4Writer(out))
    _check_stage_log(log)
    assert ("motion", 1, 2) in log and [(d, t) for s, d, t in log if s == "render"] == [(0, 2), (1, 2), (2, 2)]
    assert streamed.frames is None and streamed.num_frames == 2 and streamed.speech.shape == (1280,)
    assert probe_mp4(out)["frames"] == 2

    def cancel(stage, done, total):
        if stage == "render" and done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.generate(models, photo, waveform, sr, two_frames, on_stage=cancel,
                          sink=Mp4Writer(tmp_path / "cancelled.mp4"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"], "a cancelled sink leaves nothing"


@pytest.mark.slow
def test_cli_generate_writes_playable_mp4_with_speech(official_models_dir, tmp_path, capsys, sample_portrait):
    out = tmp_path / "talk.mp4"
    rc, stdout, err = _run_cli(["generate", "--models-dir", str(official_models_dir), "--image",
                                str(sample_portrait), "--audio", str(SPEECH), "--max-seconds", "0.12",
                                "--steps", "2", "--chunk-size", "2", "--out", str(out)], capsys)
    assert rc == 0, err
    assert "3 frames" in stdout
    assert f"precision {precision.describe('auto', 'cpu')}" in stdout, "the summary says what auto chose"
    assert [line.split()[0] for line in err.replace("\r", "\n").splitlines() if line.strip()][-1] == "encode"
    info = probe_mp4(out)
    assert info["frames"] == 3 and info["fps"] == 25.0
    assert abs(info["audio_seconds"] - 0.12) < 0.07  # AAC pads to whole 1024-sample frames
    assert [p.name for p in tmp_path.iterdir()] == ["talk.mp4"], "no temporary files left behind"


def test_cli_convert_round_trips_to_single_safetensors(official_models_dir, tmp_path, capsys):
    """convert: official .pth files -> kdtalker.safetensors + Kijai-layout LivePortrait files that
    hold exactly the same tensors and are found and preferred by the finder."""
    from kdtalker_core import weights as ck

    out = tmp_path / "converted"
    rc, stdout, err = _run_cli(["convert", "--models-dir", str(official_models_dir), "--out-dir", str(out)],
                               capsys)
    assert rc == 0, err
    assert (out / "kdtalker" / "kdtalker.safetensors").is_file() and "kdtalker.safetensors" in stdout
    paths = ck.find_model_files(out)
    assert paths.kdtalker_is_bundle and paths.liveportrait["warping_module"].suffix == ".safetensors"
    original = ck.load_kdtalker_bundle(ck.find_model_files(official_models_dir))
    converted = ck.load_kdtalker_bundle(paths)
    for part in ("denoiser", "audio_encoder"):
        a, b = getattr(original, part), getattr(converted, part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lp_a = ck.load_liveportrait(official_models_dir / "liveportrait")
    lp_b = ck.load_liveportrait(out / "liveportrait")
    assert all(torch.equal(lp_a["spade_generator"][k], lp_b["spade_generator"][k]) for k in lp_a["spade_generator"])


def test_cli_download_explains_what_to_do_when_it_cannot(tmp_path, capsys, monkeypatch):
    """download is opt-in; without huggingface_hub (or offline) it exits 2 with instructions."""
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError("No module named 'huggingface_hub'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    rc, _, err = _run_cli(["download", "--models-dir", str(tmp_path)], capsys)
    assert rc == 2 and err.startswith("error: ") and "huggingface_hub" in err and "README" in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- frame rate and performance options


def test_fps_30_on_two_seconds_of_speech_gives_60_frames_and_aligned_speech(sample_portrait):
    """Motion is made at 25 fps whatever --fps: 2 s of speech = 50 motion frames -> 60 output frames at
    30 fps, and the speech handed to the video covers exactly those frames (2 s)."""
    job = options.GenerateOptions(fps=30, duration_seconds=2.0)
    inputs = pipeline.read_inputs(sample_portrait, SPEECH, job)
    assert inputs.speech.shape == (32000,) and inputs.motion_frames == 50 and inputs.num_frames == 60
    assert pipeline.read_inputs(sample_portrait, SPEECH, job.replace(fps=24)).num_frames == 48
    # a clip that is not a whole number of output frames: the speech is cut / padded to the frames
    motion = Motion(torch.zeros(51, 70), 25.0)
    at_30 = pipeline.shape_motion(motion, job)
    assert (at_30.num_frames, at_30.fps) == (61, 30.0)  # round(2.04 s * 30)
    speech = torch.arange(1, 51 * 640 + 1, dtype=torch.float32)
    fitted = pipeline.speech_for_frames(speech, at_30.num_frames, at_30.fps)
    assert torch.equal(fitted, speech[:round(61 / 30 * 16000)])  # 2.033 s: cut
    assert pipeline.shape_motion(Motion(torch.zeros(49, 70), 25.0), job).num_frames == 59  # 1.96 s -> 1.967 s
    padded = pipeline.speech_for_frames(speech[:49 * 640], 59, 30.0)
    assert padded.shape == (round(59 / 30 * 16000),) and torch.equal(padded[:49 * 640], speech[:49 * 640])
    assert not padded[49 * 640:].any(), "padded with silence"
    assert pipeline.speech_for_frames(speech, 51, 25.0) is speech
    # defaults: the sampled motion itself, untouched
    assert pipeline.shape_motion(motion, options.DEFAULTS) is motion


def test_performance_options_are_validated_and_default_to_off():
    d = options.DEFAULTS
    assert d.performance().is_identity and d.pose_video is None
    for name, bad in (("blink_rate", -1.0), ("blink_duration", 0.0), ("eye_open", 2.0), ("mouth_open", -0.1),
                      ("silence_calm", 1.5), ("pose_mode", "sideways"), ("pose_fit", "stretch"),
                      ("pose_expression", 2.0), ("blink_rate", float("nan"))):
        with pytest.raises(InputError, match=name):
            d.replace(**{name: bad})
    perf = d.replace(blink_rate=12, eye_open=0.5, mouth_open=1.3, stitching=True, seed=7).performance()
    assert (perf.blink_rate, perf.blink_seed, perf.eye_open, perf.mouth_open, perf.stitching) == (12, 7, 0.5, 1.3, True)
    args = cli.build_parser().parse_args(
        ["generate", "--blink-rate", "15", "--blink-duration", "0.3", "--eye-open", "0.8", "--mouth-open", "1.2",
         "--silence-calm", "0.5", "--stitching", "--fps", "30", "--pose-video", "clip.mp4", "--pose-mode",
         "absolute", "--pose-fit", "pingpong", "--pose-expression", "0.25"])
    got = options.GenerateOptions.from_mapping(vars(args))
    assert got == d.replace(blink_rate=15, blink_duration=0.3, eye_open=0.8, mouth_open=1.2, silence_calm=0.5,
                            stitching=True, fps=30, pose_video="clip.mp4", pose_mode="absolute", pose_fit="pingpong",
                            pose_expression=0.25)
    choices = {a.dest: a.choices for a in _generate_parser()._actions if a.choices}
    assert tuple(choices["pose_mode"]) == options.POSE_MODES and tuple(choices["pose_fit"]) == options.POSE_FITS


def test_missing_pose_video_fails_before_loading_models(tmp_path, capsys, sample_portrait):
    rc, _, err = _run_cli(["generate", "--models-dir", str(tmp_path), "--image", str(sample_portrait), "--audio",
                           str(SPEECH), "--pose-video", str(tmp_path / "nope.mp4"), "--out",
                           str(tmp_path / "o.mp4")], capsys)
    assert rc == 2 and "nope.mp4" in err and "does not exist" in err


@pytest.mark.slow
def test_cli_fps_30_writes_frames_at_30_fps_with_speech_of_the_same_length(official_models_dir, tmp_path, capsys,
                                                                             sample_portrait):
    out = tmp_path / "talk30.mp4"
    rc, stdout, err = _run_cli(["generate", "--models-dir", str(official_models_dir), "--image",
                                str(sample_portrait), "--audio", str(SPEECH), "--duration-seconds", "0.2",
                                "--steps", "2", "--chunk-size", "3", "--fps", "30", "--out", str(out)], capsys)
    assert rc == 0, err
    assert "6 frames (0.20 s at 30 fps)" in stdout
    info = probe_mp4(out)
    assert info["frames"] == 6 and info["fps"] == 30.0 and abs(info["video_seconds"] - 0.2) < 1e-9
    assert abs(info["audio_seconds"] - 0.2) < 0.07  # AAC pads to whole 1024-sample frames


def _photo(sample_portrait) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(sample_portrait)


@pytest.fixture(scope="module")
def default_run(models, sample_portrait):
    """run() with default options (2 steps, two 25 fps frames) and the same job done stage by stage."""
    waveform, sr = load_audio_file(SPEECH)
    job = options.GenerateOptions(steps=2, chunk_size=2, start_seconds=0.5, duration_seconds=0.08)
    inputs = pipeline.check_inputs(_photo(sample_portrait), waveform, sr, job)
    return inputs, pipeline.run(models, inputs)


@pytest.mark.slow
def test_default_options_reproduce_the_stage_by_stage_path_bit_for_bit(models, default_run, sample_portrait):
    inputs, result = default_run
    waveform, sr = load_audio_file(SPEECH)
    audio = pipeline.encode_audio(models, waveform, sr, start_seconds=0.5, duration_seconds=0.08)
    portrait = pipeline.prepare_portrait(models, _photo(sample_portrait))
    motion = pipeline.sample_motion(models, portrait, audio, steps=2)
    frames = pipeline.render(models, portrait, motion, chunk_size=2).frames
    assert torch.equal(result.motion.data, motion.data) and result.motion.fps == 25.0
    assert torch.equal(result.speech, audio.waveform_16k)
    assert torch.equal(result.frames, frames)


@pytest.mark.slow
def test_eye_mouth_and_stitching_options_reach_the_renderer(models, default_run):
    """Render-time options change x_d (and so the frames) without touching the motion."""
    inputs, base = default_run
    assert models.retarget_eye is not None and models.retarget_lip is not None and models.stitching is not None
    assert {"retarget_eye", "retarget_lip", "stitching"} <= set(models.modules())
    job = inputs.options.replace(eye_open=0.3, mouth_open=1.6)
    result = pipeline.run(models, dataclasses.replace(inputs, options=job))
    assert torch.equal(result.motion.data, base.motion.data), "render-time options leave the motion alone"
    assert not torch.equal(result.frames, base.frames)
    portrait = pipeline.prepare_portrait(models, inputs.photo, crop=inputs.crop)
    x_plain = pipeline.driving_keypoints(models, portrait, base.motion)
    x_eyes = pipeline.driving_keypoints(models, portrait, base.motion,
                                        performance=options.DEFAULTS.replace(eye_open=0.3).performance())
    assert not torch.equal(x_eyes, x_plain)
    assert torch.equal(pipeline.driving_keypoints(models, portrait, base.motion,
                                                  performance=options.DEFAULTS.performance()), x_plain)
    # blinks (3 s at 30 a minute): x_d moves where the eyelids close, nowhere else
    from kdtalker_core.blink import blink_curve

    still = Motion(base.motion.data[:1].repeat(75, 1), 25.0)
    blinks = options.DEFAULTS.replace(blink_rate=30.0, seed=3).performance()
    moved = (pipeline.driving_keypoints(models, portrait, still, performance=blinks)
             - pipeline.driving_keypoints(models, portrait, still)).abs().amax((1, 2)).cpu() > 1e-5
    closure = blink_curve(75, 25.0, 30.0, blinks.blink_duration, 3)
    assert moved.any() and not moved[closure == 0].any() and moved[closure > 0.05].all()
    # stitching changes x_d too
    stitched = options.DEFAULTS.replace(stitching=True).performance()
    assert not torch.equal(pipeline.driving_keypoints(models, portrait, base.motion, performance=stitched), x_plain)
    # a frame range renders exactly those frames of the whole clip
    one = pipeline.render(models, portrait, base.motion, frames=slice(1, 2), chunk_size=1)
    assert one.frames.shape[0] == 1 and torch.equal(one.frames[0], base.frames[1])


@pytest.mark.slow
def test_silence_calming_and_frame_rate_shape_the_sampled_motion(models, sample_portrait, sample_speech):
    """run()'s motion = sample at 25 fps -> calm silences -> resample; calming changes pause frames only."""
    speech = torch.cat([load_audio_file(SPEECH)[0].reshape(-1)[:16000], torch.zeros(12800)])  # 1 s speech, 0.8 s pause
    job = options.GenerateOptions(steps=2, silence_calm=1.0)
    inputs = pipeline.check_inputs(_photo(sample_portrait), speech, 16000, job)
    portrait = pipeline.prepare_portrait(models, inputs.photo, crop=inputs.crop)
    audio = pipeline.encode_audio(models, inputs.speech, 16000)
    sampled = pipeline.sample_motion(models, portrait, audio, steps=2)
    calm = pipeline.shape_motion(sampled, job, speech=audio.waveform_16k, portrait=portrait)
    changed = (calm.data != sampled.data).any(1)
    assert changed[-10:].all() and not changed[:20].any(), "only the pause at the end is calmed"
    at_30 = pipeline.shape_motion(sampled, job.replace(fps=30), speech=audio.waveform_16k, portrait=portrait)
    from kdtalker_core import retime

    assert torch.equal(at_30.data, retime.resample_motion(calm, 30).data) and at_30.num_frames == 54


@pytest.mark.slow
def test_pose_video_drives_the_head_and_speech_keeps_the_lips(models, default_run, tmp_path):
    """A driving clip made from the portrait itself (shifted): relative pose -> frame 0 has the portrait's
    own head pose; the expression stays the speech motion's; the motion's scale is rendered."""
    from kdtalker_core.video import write_mp4

    inputs, base = default_run
    photo = torch.from_numpy(inputs.photo).float() / 255
    clip = torch.stack([torch.roll(photo, shifts=(4 * i, 3 * i), dims=(0, 1)) for i in range(3)])
    video = tmp_path / "pose.mp4"
    write_mp4(video, [clip], 25.0)
    job = inputs.options.replace(pose_video=str(video))
    log, on_stage = _stage_log()
    result = pipeline.run(models, dataclasses.replace(inputs, options=job), on_stage=on_stage)
    assert [s for s, d, t in log if d == 0] == ["audio", "portrait", pipeline.POSE_STAGE, "motion", "render",
                                                 "encode"]
    src = {k: v.cpu() for k, v in pipeline.prepare_portrait(models, inputs.photo, crop=inputs.crop).kp_info.items()}
    m = result.motion.data.cpu()
    assert m.shape == base.motion.data.shape
    torch.testing.assert_close(m[0, 1:4], torch.cat([src["yaw"], src["pitch"], src["roll"]], 1)[0],
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(m[0, 0], src["scale"].reshape(()), atol=1e-5, rtol=0)
    assert torch.equal(m[:, 7:], base.motion.data.cpu()[:, 7:]), "the lips still follow the speech"
    assert not torch.equal(m[:, 1:7], base.motion.data.cpu()[:, 1:7])
    assert result.frames.shape == base.frames.shape and not torch.equal(result.frames, base.frames)


@pytest.mark.slow
def test_encode_audio_always_feeds_the_model_25_fps_features(models, sample_portrait):
    """encode_audio(fps=30) (the Encode Audio node's fps) makes the same 25 fps features; sample_motion
    then resamples its motion to 30 fps (no rendering here)."""
    waveform, sr = load_audio_file(SPEECH)
    at_25 = pipeline.encode_audio(models, waveform, sr, duration_seconds=0.4)
    at_30 = pipeline.encode_audio(models, waveform, sr, fps=30, duration_seconds=0.4)
    assert at_30.fps == 25.0 and at_30.output_fps == 30.0 and torch.equal(at_30.features, at_25.features)
    portrait = pipeline.prepare_portrait(models, _photo(sample_portrait))
    motion_25 = pipeline.sample_motion(models, portrait, at_25, steps=2)
    motion_30 = pipeline.sample_motion(models, portrait, at_30, steps=2)
    from kdtalker_core import retime

    assert motion_25.num_frames == 10 and motion_30.num_frames == 12 and motion_30.fps == 30.0
    assert torch.equal(motion_30.data, retime.resample_motion(motion_25, 30).data)


def test_unknown_device_is_a_usage_error(capsys):
    from kdtalker_core import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["generate", "--device", "tpu7"])
    assert info.value.code == 2
    assert "unknown device 'tpu7'" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["generate", "--device", "cuda:1"]).device == "cuda:1"

"""Several faces in one photo: trusted detections (the astronaut's weak second "face" is dropped), a
two-face photo built from the real astronaut portrait and its mirror image, and (slow, full-size
random weights) the composited video: both faces move, the background is the photo's, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdtalker_core import face as fm
from kdtalker_core import multiface, pipeline
from kdtalker_core.audio import load_audio_file
from kdtalker_core.errors import FaceError, InputError
from kdtalker_core.image_io import read_image
from kdtalker_core.motion import EXP_COLS, NUM_KP
from kdtalker_core.options import DEFAULTS
from kdtalker_core.retarget import LIP_KEYPOINTS

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "kdtalker_core" / "assets" / "sample_portrait.jpg"
SPEECH = ROOT / "kdtalker_core" / "assets" / "sample_speech.wav"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return read_image(PORTRAIT)


@pytest.fixture(scope="module")
def two_faces(astronaut: np.ndarray) -> np.ndarray:
    """(512, 1024, 3) uint8: the astronaut on the left, her mirror image on the right."""
    return np.ascontiguousarray(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1))


# ---------------------------------------------------------------- trusted detections


def test_astronaut_weak_second_detection_is_dropped(astronaut: np.ndarray) -> None:
    raw = fm.detect_faces(astronaut, trusted=False)
    assert len(raw) == 2
    real, weak = raw
    assert real.score > 1.0 and weak.score < 0.25 * real.score
    assert abs(weak.area - real.area) < 0.02 * real.area  # "largest first" alone cannot tell them apart
    trusted = fm.detect_faces(astronaut)
    assert len(trusted) == 1 and trusted[0].box == real.box
    assert np.array_equal(trusted[0].landmarks, real.landmarks)
    for order in ("detector", "largest", "left_to_right", "top_to_bottom"):
        assert fm.choose_face(trusted, 0, order).box == real.box
    with pytest.raises(FaceError, match="only 1 face was found"):
        fm.find_face(astronaut, index=1)


def test_default_choice_is_the_official_first_detection(astronaut: np.ndarray) -> None:
    raw_first = fm.detect_faces(astronaut, trusted=False)[0]
    assert fm.find_face(astronaut).box == raw_first.box
    crop = fm.crop_portrait(astronaut)
    ref = fm.crop_portrait(astronaut, face=raw_first)
    assert np.array_equal(crop.source, ref.source)


def test_most_confident_detection_is_always_kept() -> None:
    lm = np.zeros((68, 2), np.int64)
    weak_only = [fm.FaceDetection(box=(0, 0, 90, 90), landmarks=lm, score=0.05)]
    assert fm.trusted_faces(weak_only) == weak_only
    strong = fm.FaceDetection(box=(0, 0, 90, 90), landmarks=lm, score=2.0)
    weakish = fm.FaceDetection(box=(200, 0, 290, 90), landmarks=lm, score=0.45)  # < 0.25 * 2.0
    assert fm.trusted_faces([strong, weakish], check_landmarks=False) == [strong]
    assert fm.trusted_faces([strong, weakish], min_relative_score=0.2, check_landmarks=False) == [strong, weakish]


def test_landmark_plausibility(astronaut: np.ndarray) -> None:
    real = fm.detect_faces(astronaut)[0]
    assert fm.landmark_problems(real.landmarks, real.box) == []
    lm = real.landmarks.astype(np.float64)
    flipped = lm.copy()
    flipped[:, 1] = 2 * lm[:, 1].mean() - lm[:, 1]  # mouth above the eyes
    assert any("not in order" in p for p in fm.landmark_problems(flipped, real.box))
    squashed = lm.copy()
    eyes_y = lm[36:48, 1].mean()
    squashed[:, 1] = eyes_y + (lm[:, 1] - eyes_y) * 0.3  # mouth nearly on the eye line
    assert any("mouth is" in p for p in fm.landmark_problems(squashed, real.box))
    lopsided = lm.copy()
    lopsided[27:36, 0] += 80  # the nose far to one side
    assert any("nose" in p for p in fm.landmark_problems(lopsided, real.box))
    assert any("box widths" in p for p in fm.landmark_problems(lm, (0, 0, 1000, 1000)))
    # a detection with implausible landmarks is dropped even with a good score
    bad = fm.FaceDetection(box=real.box, landmarks=flipped.astype(np.int64), score=real.score)
    assert fm.trusted_faces([real, bad]) == [real]


def test_two_face_photo_both_detected_in_order(two_faces: np.ndarray, astronaut: np.ndarray) -> None:
    raw = fm.detect_faces(two_faces, trusted=False)
    faces = fm.detect_faces(two_faces)
    assert len(raw) == 4 and len(faces) == 2  # the two weak suit windows are dropped
    left, right = (fm.choose_face(faces, i, "left_to_right") for i in (0, 1))
    assert left.center[0] < 512 < right.center[0]
    w = two_faces.shape[1]
    # the right face is the mirror image of the left one: same place, mirrored (within a few pixels)
    mirrored = np.stack([w - 1 - right.landmarks[:, 0], right.landmarks[:, 1]], axis=1).mean(axis=0)
    assert np.abs(mirrored - left.landmarks.mean(axis=0)).max() <= 4
    assert fm.choose_face(faces, 0, "left_to_right").box == fm.detect_faces(astronaut)[0].box


# ---------------------------------------------------------------- jobs, tracks


def test_tracks_are_padded_and_a_shared_track_counts_once() -> None:
    a = torch.full((100,), 0.6)
    b = torch.full((60,), 0.7)
    pa, pb, pa2 = multiface.pad_tracks([a, b, a])
    assert pa.shape == pb.shape == (100,) and pa is pa2 and torch.equal(pb[60:], torch.zeros(40))
    shared = multiface.mix_tracks([pa, pa])
    assert torch.equal(shared, pa)  # not doubled
    mixed = multiface.mix_tracks([pa, pb])
    assert float(mixed.abs().max()) == pytest.approx(1.0)  # 1.3 would clip: scaled down
    assert float(mixed[80]) == pytest.approx(0.6 / 1.3)


def test_hold_to_length_cuts_or_holds_the_last_frame() -> None:
    from kdtalker_core.motion import Motion

    m = Motion(torch.randn(5, 70), 30.0)
    assert multiface.hold_to_length(m, 5) is m
    assert torch.equal(multiface.hold_to_length(m, 3).data, m.data[:3])
    longer = multiface.hold_to_length(m, 8)
    assert longer.fps == 30.0 and torch.equal(longer.data[:5], m.data)
    assert torch.equal(longer.data[5:], m.data[4:5].expand(3, 70))
    with pytest.raises(InputError):
        multiface.hold_to_length(m, 0)


def test_check_inputs_pairs_faces_with_tracks(two_faces: np.ndarray) -> None:
    wav, sr = load_audio_file(SPEECH)
    other = wav[:, : sr // 2].clone()
    opts = DEFAULTS.replace(face_order="left_to_right")
    shared = multiface.check_inputs(two_faces, [(wav, sr)], [1, 0], opts)
    assert shared.speeches[0] is shared.speeches[1] and shared.seeds == [0, 1]
    centres = [c.face.center[0] for c in shared.crops]
    assert centres[0] > 512 > centres[1]  # face 1 (right) first: the paste order is the given order
    own = multiface.check_inputs(two_faces, [(wav, sr), (other, sr)], [0, 1], opts, seeds=[7, 3])
    assert own.speeches[1].shape[0] == 8000 and own.seeds == [7, 3]
    assert own.num_frames == shared.num_frames
    with pytest.raises(InputError, match="2 face indices but 3 audio"):
        multiface.check_inputs(two_faces, [(wav, sr)] * 3, [0, 1], opts)
    with pytest.raises(InputError, match="repeat"):
        multiface.check_inputs(two_faces, [(wav, sr)], [0, 0], opts)
    with pytest.raises(FaceError, match="only 2 faces"):
        multiface.check_inputs(two_faces, [(wav, sr)], [0, 2], opts)
    with pytest.raises(InputError, match="paste_back"):
        multiface.check_inputs(two_faces, [(wav, sr)], [0, 1], opts.replace(paste_back=False))


# ---------------------------------------------------------------- rendering (slow)


@pytest.fixture(scope="module")
def models(official_models_dir):
    return pipeline.load_models(official_models_dir, device="cpu", precision="fp32")


@pytest.mark.slow
def test_two_faces_render_into_one_video(models, two_faces: np.ndarray) -> None:
    """2 frames, 2 DDIM steps: face 0 speaks, face 1 gets silence (idle: its lips at the photo's own);
    both face regions change over time; every pixel outside both masks is the photo's in every frame."""
    wav, sr = load_audio_file(SPEECH)
    speech = wav[:, sr: sr + int(0.08 * sr)]
    quiet = torch.zeros_like(speech)
    opts = DEFAULTS.replace(steps=2, chunk_size=2, face_order="left_to_right")
    inputs = multiface.check_inputs(two_faces, [(speech, sr), (quiet, sr)], [0, 1], opts)
    log: list[tuple[str, int, int]] = []
    result = multiface.run(models, inputs, on_stage=lambda s, d, t: log.append((s, d, t)))
    assert [s for i, (s, _, _) in enumerate(log) if i == 0 or log[i - 1][0] != s] == list(pipeline.STAGES)
    frames = result.frames
    assert frames is not None and frames.shape == (2, 512, 1024, 3) and result.num_frames == 2
    assert result.speech.shape == (int(0.08 * 16000),)

    photo = torch.from_numpy(two_faces).float() / 255
    portraits = result.portraits
    masks = [p.paste_mask for p in portraits]
    outside = result.mask == 0
    assert torch.equal(result.mask, torch.maximum(masks[0], masks[1]))
    assert 0.5 < float(outside.float().mean()) < 0.98
    for t in range(2):
        assert torch.equal(frames[t][outside], photo[outside]), f"background changed in frame {t}"
    for k, m in enumerate(masks):
        inside = m > 0.5
        assert bool((masks[1 - k][inside] == 0).all())  # the two faces do not overlap here
        assert not torch.equal(frames[0][inside], frames[1][inside]), f"face {k} did not move"
        assert not torch.equal(frames[0][inside], photo[inside]), f"face {k} was not rendered"

    # a face whose own track falls silent goes idle there: lips at the photo's own expression
    # (speech 0.4 s then 0.6 s of silence: 10 + 15 frames; pauses count from 0.12 s, edges are ramped)
    track = torch.cat([load_audio_file(SPEECH)[0][0, 16000:22400], torch.zeros(9600)])
    motion = multiface.face_motion(models, portraits[1], track, opts, seed=5)
    neutral = portraits[1].kp_info["exp"].reshape(NUM_KP, 3)[list(LIP_KEYPOINTS)]
    lips = motion.data[:, EXP_COLS].reshape(-1, NUM_KP, 3)[:, list(LIP_KEYPOINTS)]
    assert motion.num_frames == 25
    assert torch.allclose(lips[16:], neutral.expand_as(lips[16:]), atol=1e-6)
    assert not torch.allclose(lips[:8], neutral.expand_as(lips[:8]), atol=1e-3)
    loud = multiface.face_motion(models, portraits[1], track, opts, seed=5, idle_strength=0.0)
    assert not torch.allclose(loud.data[16:], motion.data[16:], atol=1e-3)

    # the first face is pasted exactly as the single-face pipeline pastes it
    first = result.motions[0].with_data(result.motions[0].data[:1])
    single = pipeline.render(models, portraits[0], first).frames[0]
    inside0 = masks[0] > 0
    assert torch.equal(frames[0][inside0], single[inside0])


# ---------------------------------------------------------------- CLI (no weights needed)


def test_cli_repeatable_face_and_audio_pairs(tmp_path, capsys, two_faces: np.ndarray) -> None:
    import imageio.v3 as iio

    from kdtalker_core import cli

    photo = tmp_path / "two.png"
    iio.imwrite(photo, two_faces)
    args = cli.build_parser().parse_args(["generate", "--face-index", "0", "--audio", "a.wav",
                                          "--face-index", "1", "--audio", "b.wav"])
    assert args.face_index == [0, 1] and [p.name for p in args.audio] == ["a.wav", "b.wav"]
    single = cli.build_parser().parse_args(["generate", "--face-index", "1"])
    assert single.face_index == 1 and single.audio == cli.SAMPLE_AUDIO  # one face: plain values, as before
    base = ["generate", "--image", str(photo), "--models-dir", str(tmp_path / "none"), "--out",
            str(tmp_path / "out.mp4")]
    # the inputs are checked before any model is looked for
    rc = cli.main([*base, "--face-index", "0", "--face-index", "1", "--audio", str(SPEECH), "--audio", str(SPEECH),
                   "--audio", str(SPEECH)])
    assert rc == 2 and "2 face indices but 3 audio tracks" in capsys.readouterr().err
    rc = cli.main([*base, "--face-index", "0", "--face-index", "2", "--audio", str(SPEECH)])
    assert rc == 2 and "only 2 faces were found" in capsys.readouterr().err
    # valid pairs (one shared track) get as far as the model files
    rc = cli.main([*base, "--face-index", "0", "--face-index", "1", "--audio", str(SPEECH)])
    err = capsys.readouterr().err
    assert rc == 2 and "KDTalker.pth" in err  # the missing-weights message: the inputs passed
    assert not (tmp_path / "out.mp4").exists()


# ---------------------------------------------------------------- the node and its example workflow (slow)


def _stand_in_core_nodes(node: dict, kwargs: dict) -> tuple:
    """ComfyUI core nodes the two-face workflow uses, as the ComfyUI source defines them
    (comfy_extras/nodes_images.py ImageFlip / ImageStitch without resizing, nodes_video.py CreateVideo)."""
    if node["type"] == "ImageFlip":
        assert node["widgets_values"] == ["y-axis: horizontally"]
        return (torch.flip(kwargs["image"], dims=[2]),)
    if node["type"] == "ImageStitch":
        assert node["widgets_values"][:3] == ["right", False, 0]
        return (torch.cat([kwargs["image1"], kwargs["image2"]], dim=2),)
    if node["type"] == "CreateVideo":
        return (kwargs,)
    return ()


@pytest.mark.slow
def test_two_faces_workflow_runs_through_the_nodes(official_models_dir, tmp_path_factory) -> None:
    import asyncio

    import test_nodes as tn  # the ComfyUI stand-in and its workflow runner

    root = tmp_path_factory.mktemp("comfyui")  # as test_nodes' comfy_root / extra_liveportrait fixtures
    tn.folder_paths.set_base_path(str(root))
    for d in ("models", "input", "output", "temp"):
        (root / d).mkdir()
    extra = root / "elsewhere" / "liveportrait"
    extra.mkdir(parents=True)
    tn.folder_paths.add_model_folder_path("liveportrait", str(extra))
    package = tn._import_like_comfyui(tn.ROOT)

    extension = asyncio.run(package.comfy_entrypoint())
    asyncio.run(extension.on_load())
    nodes = {n.GET_SCHEMA().node_id: n for n in asyncio.run(extension.get_node_list())}
    assert "KDTalkerComposeFaces" in nodes
    tn.link_tree(official_models_dir / "kdtalker", root / "models" / "kdtalker")
    tn.link_tree(official_models_dir / "liveportrait", extra)
    handle = tn._execute(nodes["KDTalkerLoadModels"], kdtalker_checkpoint="KDTalker.pth", wav2lip_checkpoint="auto",
                         liveportrait=str(extra), precision="fp32", attention="auto", device="auto",
                         use_ema=False)[0]
    wf = tn._load_workflow("kdtalker_two_faces.json")
    image = tn._portrait_image()
    inputs = {"LoadImage": (image, torch.zeros(image.shape[:3])), "LoadAudio": (tn._speech(0.08),),
              "KDTalkerLoadModels": (handle,)}
    results = tn._run_workflow(wf, nodes, inputs, {"KDTalkerSampleMotion": {"steps": 2}}, _stand_in_core_nodes)
    (compose,) = [n["id"] for n in wf["nodes"] if n["type"] == "KDTalkerComposeFaces"]
    frames, mask, audio, fps = results[compose]
    assert frames.shape == (2, 512, 1024, 3) and mask.shape == (1, 512, 1024) and fps == 25.0
    assert audio["waveform"].shape[-1] == round(2 / 25 * audio["sample_rate"])
    photo = torch.cat([image, torch.flip(image, dims=[2])], dim=2)[0]
    outside = mask[0] == 0
    assert torch.equal(frames[0][outside], photo[outside]) and torch.equal(frames[1][outside], photo[outside])
    for half in (slice(0, 512), slice(512, 1024)):  # a face in each half, both moving
        inside = mask[0][:, half] > 0.5
        assert inside.any() and not torch.equal(frames[0][:, half][inside], frames[1][:, half][inside])

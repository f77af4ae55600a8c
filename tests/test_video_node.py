"""Render Video (streamed mp4 + native VIDEO), Render's frame range, first-run sample inputs, and
errors / Cancel as a ComfyUI user meets them. Runs in-process against tests/comfy_stub, like
tests/test_nodes.py (whose fixtures and helpers it shares)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import test_nodes  # puts tests/comfy_stub first on sys.path; shares its fixtures and helpers
import torch

# The ComfyUI stand-in, as test_nodes imported it (it puts tests/comfy_stub on sys.path first).
mm = test_nodes.mm
folder_paths = test_nodes.folder_paths
io = test_nodes.io
InputImpl = sys.modules["comfy_api.latest"].InputImpl

# test_nodes' fixtures, used here by name.
comfy_root = test_nodes.comfy_root
extra_liveportrait = test_nodes.extra_liveportrait
package = test_nodes.package
nodes = test_nodes.nodes
models_handle = test_nodes.models_handle
progress_hook = test_nodes.progress_hook
WORKFLOWS = test_nodes.WORKFLOWS
_execute = test_nodes._execute
_portrait_image = test_nodes._portrait_image
_speech = test_nodes._speech

ASSETS = Path(__file__).resolve().parents[1] / "kdtalker_core" / "assets"
#: Frames of the one-pass Render, kept for the comparison with the streamed mp4.
_SHARED: dict[str, torch.Tensor] = {}


def _lib(package, name: str):
    """A module of the library copy the nodes use (a subpackage of the custom-node package)."""
    return sys.modules.get(f"{package[0].__name__}.kdtalker_core.{name}") or __import__(
        f"{package[0].__name__}.kdtalker_core.{name}", fromlist=["_"])


def _leftovers(root: Path) -> list[Path]:
    return [p for p in (root / "output").rglob("*") if p.is_file() and ".part" in p.name]


# ----------------------------------------------------------------------------------------- first run


def test_on_load_puts_the_sample_inputs_in_the_input_folder(package, comfy_root):
    for name in ("sample_portrait.jpg", "sample_speech.wav"):
        assert (comfy_root / "input" / name).read_bytes() == (ASSETS / name).read_bytes()
    for wf_path in sorted(WORKFLOWS.glob("*.json")):
        wf = json.loads(wf_path.read_text())
        for node in wf["nodes"]:
            if node["type"] in ("LoadImage", "LoadAudio", "LoadVideo"):
                assert (comfy_root / "input" / node["widgets_values"][0]).is_file(), (wf_path.name, node["type"])


def test_sample_inputs_never_replace_a_users_file(package, tmp_path, monkeypatch):
    samples = sys.modules[f"{package[0].__name__}.nodes.samples"]
    mine = tmp_path / "sample_portrait.jpg"
    mine.write_bytes(b"my own photo")
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path))
    written = samples.install_sample_inputs()
    assert written == [tmp_path / "sample_speech.wav", tmp_path / "kdtalker_sample_driving.mp4"]
    assert mine.read_bytes() == b"my own photo"
    assert (tmp_path / "sample_speech.wav").read_bytes() == (ASSETS / "sample_speech.wav").read_bytes()
    assert samples.install_sample_inputs() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kdtalker_sample_driving.mp4", "sample_portrait.jpg",
                                                          "sample_speech.wav"]


# ----------------------------------------------------------------------------------------- schema


def test_render_video_schema(nodes):
    schema = nodes["KDTalkerRenderVideo"].GET_SCHEMA()
    assert [o.io_type for o in schema.outputs] == ["VIDEO", "STRING"]
    assert schema.is_output_node
    render = nodes["KDTalkerRender"].GET_SCHEMA()
    by_id = {i.id: i for i in render.inputs}
    assert by_id["start_frame"].default == 0 and by_id["frame_count"].default == 0
    assert by_id["start_frame"].optional and by_id["frame_count"].optional, "old API prompts lack them"


def test_frame_range_refuses_a_start_past_the_end(package):
    render_mod = sys.modules[f"{package[0].__name__}.nodes.render"]
    motion = _lib(package, "motion").Motion(torch.zeros(10, 70), 25.0)
    with pytest.raises(_lib(package, "errors").InputError) as info:
        render_mod.frame_range(motion, 10, 0)
    assert "start_frame 10 is past the end" in str(info.value).splitlines()[0]
    assert render_mod.frame_range(motion, 8, 5).num_frames == 2
    assert render_mod.frame_range(motion, 0, 0) is motion


# ----------------------------------------------------------------------------------------- full runs


@pytest.fixture(scope="module")
def prepared(nodes, models_handle):
    """(portrait, motion of 3 frames, the audio Encode Audio passes on)."""
    portrait = _execute(nodes["KDTalkerPreparePortrait"], image=_portrait_image(), models=models_handle,
                        face_index=0, order="detector", crop_mode="official")[0]
    features, audio = _execute(nodes["KDTalkerEncodeAudio"], audio=_speech(3 / 25), models=models_handle,
                               fps=25.0, start_seconds=0.0, duration_seconds=0.0).args
    motion = _execute(nodes["KDTalkerSampleMotion"], portrait=portrait, audio_features=features,
                      models=models_handle, seed=0, steps=2, eta=0.0, smoothing=1.0)[0]
    assert motion.num_frames == 3
    return portrait, motion, audio


@pytest.mark.slow
def test_render_segments_equal_one_pass(nodes, models_handle, prepared, progress_hook):
    portrait, motion, audio = prepared
    common = dict(portrait=portrait, motion=motion, models=models_handle, chunk_size=2, paste_back=True,
                  audio=audio)
    whole = _execute(nodes["KDTalkerRender"], **common).args
    first = _execute(nodes["KDTalkerRender"], start_frame=0, frame_count=2, **common).args
    rest = _execute(nodes["KDTalkerRender"], start_frame=2, frame_count=0, **common).args
    assert first[0].shape[0] == 2 and rest[0].shape[0] == 1
    assert torch.equal(torch.cat([first[0], rest[0]]), whole[0])
    joined = torch.cat([first[2]["waveform"], rest[2]["waveform"]], dim=-1)
    assert torch.equal(joined, whole[2]["waveform"]), "each segment carries the audio under its frames"
    assert first[3] == rest[3] == whole[3] == 25.0
    _SHARED["frames"] = whole[0]


@pytest.mark.slow
def test_render_video_writes_a_complete_mp4_and_returns_video(nodes, models_handle, prepared, comfy_root,
                                                              progress_hook):
    portrait, motion, audio = prepared
    before = mm.soft_empty_cache_calls
    out = _execute(nodes["KDTalkerRenderVideo"], portrait=portrait, motion=motion, models=models_handle,
                   chunk_size=2, paste_back=True, filename_prefix="video/KDTalker", crf=18, audio=audio)
    video, path = out.args
    assert mm.soft_empty_cache_calls > before
    assert isinstance(video, InputImpl.VideoFromFile) and isinstance(video, io.Video.Type)
    assert Path(path) == comfy_root / "output" / "video" / "KDTalker_00001_.mp4" and Path(path).is_file()
    assert out.ui.as_dict() == {"images": [{"filename": "KDTalker_00001_.mp4", "subfolder": "video",
                                            "type": "output"}], "animated": (True,)}
    assert video.get_dimensions() == (512, 512)
    assert video.get_frame_count() == 3 and float(video.get_frame_rate()) == 25.0
    with av.open(path) as container:
        assert [s.codec_context.name for s in container.streams] == ["h264", "aac"]
    components = video.get_components()
    assert components.images.shape == (3, 512, 512, 3)
    seconds = components.audio["waveform"].shape[-1] / components.audio["sample_rate"]
    assert abs(seconds - 0.12) <= 2048 / components.audio["sample_rate"], "AAC pads by at most two frames"
    frames = _SHARED.get("frames")
    if frames is not None:  # the same frames as the IMAGE path, up to H.264 at crf 18
        mse = float(((components.images - frames) ** 2).mean())
        assert 10 * np.log10(1.0 / max(mse, 1e-12)) > 30.0
    again = _execute(nodes["KDTalkerRenderVideo"], portrait=portrait, motion=motion, models=models_handle,
                     chunk_size=8, paste_back=False, filename_prefix="video/KDTalker", crf=23)
    assert Path(again[1]).name == "KDTalker_00002_.mp4" and again[0].get_dimensions() == (512, 512)
    assert _leftovers(comfy_root) == []


@pytest.mark.slow
def test_cancel_leaves_no_file_and_releases_the_models(nodes, models_handle, prepared, comfy_root,
                                                       progress_hook):
    portrait, motion, audio = prepared
    out_dir = comfy_root / "output" / "cancelled"
    before = mm.soft_empty_cache_calls
    mm.interrupt_current_processing(True)  # Cancel pressed: the first progress update raises
    with pytest.raises(mm.InterruptProcessingException):
        _execute(nodes["KDTalkerRenderVideo"], portrait=portrait, motion=motion, models=models_handle,
                 chunk_size=1, paste_back=True, filename_prefix="cancelled/KDTalker", crf=18, audio=audio)
    assert mm.soft_empty_cache_calls > before, "models are released on Cancel too"
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
    assert _leftovers(comfy_root) == []


@pytest.mark.slow
def test_cancel_stops_within_one_rendered_frame(nodes, models_handle, prepared, progress_hook):
    portrait, motion, _audio = prepared
    warps = []

    def press_cancel_during_first_frame(module, args, output):
        warps.append(1)
        mm.interrupt_current_processing(True)

    handle = models_handle.models.warping_network.register_forward_hook(press_cancel_during_first_frame)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _execute(nodes["KDTalkerRender"], portrait=portrait, motion=motion, models=models_handle,
                     chunk_size=8, paste_back=True)
    finally:
        handle.remove()
    assert len(warps) == 1, f"{len(warps)} frames were rendered after Cancel was pressed in the first"


# ----------------------------------------------------------------------------------------- errors


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0]


@pytest.mark.slow
def test_user_errors_reach_the_node_with_what_to_do(package, nodes, models_handle, prepared):
    errors = _lib(package, "errors")
    blank = torch.full((1, 256, 256, 3), 0.5)
    with pytest.raises(errors.FaceError) as info:
        _execute(nodes["KDTalkerPreparePortrait"], image=blank, models=models_handle, face_index=0,
                 order="detector", crop_mode="official")
    assert "No face was found in the portrait image" in _first_line(info.value)
    with pytest.raises(errors.FaceError) as info:
        _execute(nodes["KDTalkerPreparePortrait"], image=_portrait_image(), models=models_handle, face_index=3,
                 order="detector", crop_mode="official")
    assert "Face index 3" in _first_line(info.value) and "use an index from 0" in _first_line(info.value)

    def encode(waveform: torch.Tensor, rate: int = 16000):
        return _execute(nodes["KDTalkerEncodeAudio"], audio={"waveform": waveform, "sample_rate": rate},
                        models=models_handle, fps=25.0, start_seconds=0.0, duration_seconds=0.0)

    cases = [(torch.zeros(1, 1, 0), "empty"), (torch.full((1, 1, 16000), float("nan")), "NaN"),
             (torch.zeros(1, 1, 100), "too short")]
    for waveform, words in cases:
        with pytest.raises(errors.AudioError) as info:
            encode(waveform)
        line = _first_line(info.value)
        assert words in line and ("Give" in line or "Re-export" in line), line
        assert line.startswith("Encode Audio, input 'audio': "), "the error names the node input"
    features, _ = encode(torch.zeros(1, 2, 44100), 44100).args  # silence is valid
    assert features.num_frames == 25 and torch.isfinite(features.features).all()


# ----------------------------------------------------------------------------------------- memory management


@pytest.mark.slow
def test_models_are_in_comfy_memory_management(nodes, models_handle, prepared):
    """The networks are one ModelPatcher: counted, unloaded by "Unload models", loaded back on use."""
    patcher = models_handle.patcher
    size = sum(t.nelement() * t.element_size() for t in patcher.model.state_dict().values())
    assert patcher.model_size() == size > 100 * 2**20, "every network's weights are counted"
    portrait, _motion, _audio = prepared
    features = _execute(nodes["KDTalkerEncodeAudio"], audio=_speech(0.2), models=models_handle, fps=25.0,
                        start_seconds=0.0, duration_seconds=0.0)[0]
    assert mm.current_loaded_models[0].model is patcher, "the node acquired the models through ComfyUI"
    mm.unload_all_models()  # the "Unload models" button / POST /free {"unload_models": true}
    assert patcher not in mm.loaded_models() and patcher.loaded_size() == 0
    calls = mm.load_models_gpu_calls
    motion = _execute(nodes["KDTalkerSampleMotion"], portrait=portrait, audio_features=features,
                      models=models_handle, seed=0, steps=1, eta=0.0, smoothing=1.0)[0]
    assert motion.num_frames == 5
    assert mm.load_models_gpu_calls > calls and mm.current_loaded_models[0].model is patcher
    assert patcher.loaded_size() == size

"""The ComfyUI nodes, run in-process against a ComfyUI stand-in (tests/comfy_stub).

The package is imported exactly the way ComfyUI imports a custom node folder (``__init__.py`` as a
package named after its path, then ``comfy_entrypoint()``). Checks: every node's V3 schema, model
folder registration, the "models not found" message, progress / cancel, the motion utilities, the
example workflows (node types and link types), and a full run of the example workflows on random
full-size weights written in the official file layout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "tests" / "comfy_stub"
if str(STUB) not in sys.path:
    sys.path.insert(0, str(STUB))

import comfy.model_management as mm  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
from comfy_api.latest import ComfyExtension, io  # noqa: E402
from model_files import link_tree  # noqa: E402  (tests/model_files.py)

WORKFLOWS = ROOT / "workflows"
SPEECH = ROOT / "tests" / "data" / "speech_16k_mono.wav"
PORTRAIT = ROOT / "kdtalker_core" / "assets" / "sample_portrait.jpg"
OUR_TYPES = {"KDTALKER_MODELS", "KDTALKER_PORTRAIT", "KDTALKER_AUDIO_FEATURES", "KDTALKER_MOTION"}
CORE_TYPES = {"IMAGE", "MASK", "AUDIO", "FLOAT", "INT", "BOOLEAN", "COMBO", "STRING", "VIDEO"}
WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "COMBO", "STRING"}

# Sockets of the ComfyUI core / VideoHelperSuite nodes the example workflows use (from their source:
# nodes.py LoadImage/PreviewImage, comfy_extras/nodes_audio.py LoadAudio, comfy_extras/nodes_video.py
# CreateVideo/SaveVideo/LoadVideo/GetVideoComponents, videohelpersuite/nodes.py VideoCombine). inputs: name ->
# accepted types.
FOREIGN_NODES: dict[str, tuple[dict[str, set[str]], list[str]]] = {
    "LoadImage": ({}, ["IMAGE", "MASK"]),
    "LoadAudio": ({}, ["AUDIO"]),
    "PreviewImage": ({"images": {"IMAGE"}}, []),
    "CreateVideo": ({"images": {"IMAGE"}, "fps": {"FLOAT"}, "audio": {"AUDIO"}, "bit_depth": {"INT"}},
                    ["VIDEO"]),
    "SaveVideo": ({"video": {"VIDEO"}}, ["VIDEO"]),
    "LoadVideo": ({}, ["VIDEO"]),
    "GetVideoComponents": ({"video": {"VIDEO"}}, ["IMAGE", "AUDIO", "FLOAT", "INT"]),
    "ImageBatch": ({"image1": {"IMAGE"}, "image2": {"IMAGE"}}, ["IMAGE"]),
    "ImageFlip": ({"image": {"IMAGE"}}, ["IMAGE"]),
    "ImageStitch": ({"image1": {"IMAGE"}, "image2": {"IMAGE"}}, ["IMAGE"]),
    "VHS_VideoCombine": ({"images": {"IMAGE", "LATENT"}, "frame_rate": {"FLOAT", "INT"}, "audio": {"AUDIO"},
                          "meta_batch": {"VHS_BatchManager"}, "vae": {"VAE"}}, ["VHS_FILENAMES"]),
}
FRONTEND_ONLY = {"Note", "MarkdownNote"}


# ----------------------------------------------------------------------------------------- loading


def _import_like_comfyui(package_dir: Path):
    """What ComfyUI's ``load_custom_node`` does for a custom-node folder."""
    module_name = str(package_dir).replace(".", "_x_")
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, package_dir / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _execute(node: type[io.ComfyNode], **kwargs: Any) -> io.NodeOutput:
    """Run a node the way ComfyUI's executor does: inside ``torch.inference_mode()`` (execution.py
    wraps every prompt in it), so tensors a node creates are inference tensors, as in ComfyUI."""
    with torch.inference_mode():
        return node.execute(**kwargs)


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory) -> Path:
    """A fresh ComfyUI base folder (models/, input/, output/) for this module."""
    root = tmp_path_factory.mktemp("comfyui")
    folder_paths.set_base_path(str(root))
    for d in ("models", "input", "output", "temp"):
        (root / d).mkdir()
    return root


@pytest.fixture(scope="module")
def extra_liveportrait(comfy_root) -> Path:
    """A liveportrait folder outside models/, added as extra_model_paths.yaml would (before us)."""
    extra = comfy_root / "elsewhere" / "liveportrait"
    extra.mkdir(parents=True)
    folder_paths.add_model_folder_path("liveportrait", str(extra))
    return extra


@pytest.fixture(scope="module")
def package(comfy_root, extra_liveportrait):
    module = _import_like_comfyui(ROOT)
    extension = asyncio.run(module.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    asyncio.run(extension.on_load())
    nodes = asyncio.run(extension.get_node_list())
    return module, {n.GET_SCHEMA().node_id: n for n in nodes}


@pytest.fixture(scope="module")
def nodes(package) -> dict[str, type[io.ComfyNode]]:
    return package[1]


# ----------------------------------------------------------------------------------------- schema


def test_entrypoint_registers_every_node_with_a_valid_schema(nodes):
    assert len(nodes) >= 12
    expected = {"KDTalker", "KDTalkerLoadModels", "KDTalkerPreparePortrait", "KDTalkerEncodeAudio",
                "KDTalkerSampleMotion", "KDTalkerRender", "KDTalkerScaleMotion", "KDTalkerStillHead",
                "KDTalkerBlendMotion", "KDTalkerSaveMotion", "KDTalkerLoadMotion", "KDTalkerPlotMotion"}
    assert expected <= set(nodes)
    for node_id, cls in nodes.items():
        schema = cls.GET_SCHEMA()
        assert node_id.startswith("KDTalker")
        assert schema.category == "KDTalker" or schema.category.startswith("KDTalker/")
        assert schema.display_name and "KDTalker" in schema.display_name
        assert schema.description
        for inp in schema.inputs:
            assert inp.tooltip and len(inp.tooltip) > 10, f"{node_id}.{inp.id} has no tooltip"
            assert inp.io_type in OUR_TYPES | CORE_TYPES, (node_id, inp.id, inp.io_type)
            if inp.io_type == "COMBO" and inp.default is not None:  # file lists may be empty
                assert inp.default in inp.options, (node_id, inp.id)
            if inp.io_type in ("INT", "FLOAT"):
                assert inp.min <= inp.default <= inp.max, (node_id, inp.id)
        for out in schema.outputs:
            assert out.io_type in OUR_TYPES | CORE_TYPES, (node_id, out.id, out.io_type)
            assert out.tooltip


def test_widgets_use_the_library_defaults_and_menus(package, nodes):
    """Node widgets read kdtalker_core.options: the same defaults and menus as the CLI and library."""
    options = importlib.import_module(f"{package[0].__name__}.kdtalker_core.options")  # the nodes' copy
    defaults = dataclasses.asdict(options.DEFAULTS)
    aliases = {"order": "face_order"}
    menus = {"precision": options.PRECISIONS, "attention": options.ATTENTION_BACKENDS, "device": options.DEVICES,
             "order": options.FACE_ORDERS, "crop_mode": options.CROP_MODES}
    checked = set()
    for node_id, cls in nodes.items():
        for inp in cls.GET_SCHEMA().inputs:
            key = aliases.get(inp.id, inp.id)
            if key in defaults and inp.io_type in WIDGET_TYPES:
                expected = 0 if defaults[key] is None else defaults[key]  # a widget has no None: 0 = unset
                assert inp.default == expected, (node_id, inp.id, inp.default)
                checked.add(key)
            if inp.id in menus and inp.io_type == "COMBO":
                assert tuple(inp.options) == tuple(menus[inp.id]), (node_id, inp.id)
                checked.add(inp.id)
    assert {"seed", "steps", "eta", "smoothing", "fps", "chunk_size", "paste_back", "face_index", "face_order",
            "crop_mode", "precision", "attention", "device"} <= checked
    load = {i.id: i.default for i in nodes["KDTalkerLoadModels"].GET_SCHEMA().inputs}
    assert (load["precision"], load["attention"], load["device"]) == (
        options.MODEL_DEFAULTS.precision, options.MODEL_DEFAULTS.attention, options.MODEL_DEFAULTS.device)


def test_custom_types_are_ours_and_consistent(nodes):
    """Every custom socket type some node outputs is consumed somewhere, and vice versa."""
    produced = {o.io_type for c in nodes.values() for o in c.GET_SCHEMA().outputs} & OUR_TYPES
    consumed = {i.io_type for c in nodes.values() for i in c.GET_SCHEMA().inputs} & OUR_TYPES
    assert produced == consumed == OUR_TYPES


def test_image_outputs_are_comfy_images_and_video_sockets_match(nodes):
    render = nodes["KDTalkerRender"].GET_SCHEMA()
    assert [o.io_type for o in render.outputs] == ["IMAGE", "MASK", "AUDIO", "FLOAT"]
    one = nodes["KDTalker"].GET_SCHEMA()
    assert [o.io_type for o in one.outputs] == ["IMAGE", "AUDIO", "FLOAT", "VIDEO"]
    assert [i.io_type for i in one.inputs[:3]] == ["IMAGE", "AUDIO", "KDTALKER_MODELS"]


def test_model_folders_registered_after_extra_model_paths(package, comfy_root, extra_liveportrait):
    kd = folder_paths.get_folder_paths("kdtalker")
    lp = folder_paths.get_folder_paths("liveportrait")
    assert str(comfy_root / "models" / "kdtalker") in kd
    assert lp[0] == str(extra_liveportrait), "a folder from extra_model_paths.yaml keeps its priority"
    assert str(comfy_root / "models" / "liveportrait") in lp
    assert {".pth", ".safetensors"} <= folder_paths.folder_names_and_paths["kdtalker"][1]


def test_missing_models_error_names_files_folders_and_sources(package, nodes, comfy_root):
    # The nodes use the library bundled in the custom-node folder (a subpackage of it, imported
    # relatively), so the error class is that copy's.
    ModelFileError = importlib.import_module(f"{package[0].__name__}.kdtalker_core.errors").ModelFileError

    with pytest.raises(ModelFileError) as info:
        _execute(nodes["KDTalkerLoadModels"], kdtalker_checkpoint="auto", wav2lip_checkpoint="auto",
                                            liveportrait="auto", precision="fp32", attention="auto",
                                            device="cpu", use_ema=False)
    message = str(info.value)
    assert "KDTalker.pth" in message
    assert str(comfy_root / "models" / "kdtalker") in message
    assert "huggingface.co" in message


# ----------------------------------------------------------------------------------------- helpers


def _speech(seconds: float) -> dict[str, Any]:
    from kdtalker_core.audio import load_audio_file

    wav, sr = load_audio_file(SPEECH)
    return {"waveform": wav[None, :, : int(round(seconds * sr))].float(), "sample_rate": sr}


def _portrait_image() -> torch.Tensor:
    import imageio.v3 as iio

    return torch.from_numpy(np.asarray(iio.imread(PORTRAIT))[..., :3].copy()).float().div(255)[None]


def _motion(frames: int = 30, fps: float = 25.0, seed: int = 0):
    from kdtalker_core.motion import Motion

    g = torch.Generator().manual_seed(seed)
    return Motion(torch.randn(frames, 70, generator=g), fps)


class _ProgressRecorder:
    def __init__(self) -> None:
        self.values: list[tuple[int, int]] = []

    def __call__(self, value, total, preview, node_id=None) -> None:
        mm.throw_exception_if_processing_interrupted()  # what ComfyUI's server hook does
        self.values.append((value, total))


@pytest.fixture
def progress_hook():
    rec = _ProgressRecorder()
    comfy.utils.set_progress_bar_global_hook(rec)
    yield rec
    comfy.utils.set_progress_bar_global_hook(None)
    mm.interrupt_current_processing(False)


def test_node_progress_maps_stages_and_honours_cancel(package, progress_hook):
    progress_mod = sys.modules[package[0].__name__ + ".nodes.progress"]
    progress = progress_mod.NodeProgress({"a": 1.0, "b": 3.0})
    progress.stage("a")(1, 2)
    progress.stage("a")(2, 2)
    progress.stage("b")(3, 3)
    ticks = progress_mod.TICKS
    assert progress_hook.values == [(ticks // 8, ticks), (ticks // 4, ticks), (ticks, ticks)]
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        progress.stage("b")(1, 3)


# ----------------------------------------------------------------------------------------- motion tools


def test_motion_tools(nodes, comfy_root):
    a, b = _motion(30, seed=1), _motion(20, seed=2)
    scaled = _execute(nodes["KDTalkerScaleMotion"], motion=a, pose_scale=0.0, expression_scale=1.0,
                                                  reference="first")[0]
    pose = scaled.data[:, 1:7]
    torch.testing.assert_close(pose, pose[:1].expand_as(pose))
    torch.testing.assert_close(scaled.data[:, 7:], a.data[:, 7:])

    still = _execute(nodes["KDTalkerStillHead"], motion=a)[0]
    assert torch.equal(still.data[:, :7], a.data[:1, :7].expand(30, 7))

    mixed = _execute(nodes["KDTalkerBlendMotion"], motion_a=a, motion_b=b, weight=0.25)[0]
    assert mixed.num_frames == 20
    torch.testing.assert_close(mixed.data, 0.75 * a.data[:20] + 0.25 * b.data)

    saved = _execute(nodes["KDTalkerSaveMotion"], motion=a, filename_prefix="kdtalker/test")
    assert saved[0] is a
    files = sorted((comfy_root / "output" / "kdtalker").glob("test_*.motion.safetensors"))
    assert [f.name for f in files] == ["test_00001_.motion.safetensors"]
    choices = nodes["KDTalkerLoadMotion"].GET_SCHEMA().inputs[0].options
    assert "kdtalker/test_00001_.motion.safetensors [output]" in choices
    loaded = _execute(nodes["KDTalkerLoadMotion"],
        motion_file="kdtalker/test_00001_.motion.safetensors [output]")[0]
    torch.testing.assert_close(loaded.data, a.data)
    assert loaded.fps == a.fps

    chart = _execute(nodes["KDTalkerPlotMotion"], motion=a, width=256, height=128)[0]
    assert chart.shape == (1, 128, 256, 3) and chart.dtype == torch.float32
    assert 0.0 <= float(chart.min()) and float(chart.max()) <= 1.0 and float(chart.std()) > 0.01


# ----------------------------------------------------------------------------------------- workflows


def _widget_inputs(schema) -> list:
    return [i for i in schema.inputs if i.io_type in WIDGET_TYPES]


def _widget_values(schema, values: list) -> dict[str, Any]:
    """widgets_values (UI order, control_after_generate adds one value) -> {input id: value}."""
    out, k = {}, 0
    for inp in _widget_inputs(schema):
        if k == len(values) and inp.optional:  # a widget added after the workflow was saved: its default
            out[inp.id] = inp.default
            continue
        out[inp.id] = values[k]
        k += 2 if getattr(inp, "control_after_generate", None) else 1
    assert k == len(values), f"{schema.node_id}: {len(values)} widget values for {k} widgets"
    return out


def _load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.json")))
def test_workflow_nodes_and_links_are_valid(nodes, name):
    wf = _load_workflow(name)
    assert wf["version"] == 0.4
    by_id = {n["id"]: n for n in wf["nodes"]}
    assert len(by_id) == len(wf["nodes"]) and wf["last_node_id"] >= max(by_id)
    assert wf["last_link_id"] >= max(link[0] for link in wf["links"])
    for node in wf["nodes"]:
        typ = node["type"]
        assert typ in nodes or typ in FOREIGN_NODES or typ in FRONTEND_ONLY, f"unknown node type {typ}"
        if typ in nodes:
            schema = nodes[typ].GET_SCHEMA()
            sockets = {i.id: i for i in schema.inputs}
            for slot in node["inputs"]:
                assert slot["name"] in sockets and slot["type"] == sockets[slot["name"]].io_type
            assert [(o["name"], o["type"]) for o in node["outputs"]] == [
                (o.id, o.io_type) for o in schema.outputs]
            required = [i.id for i in schema.inputs if i.io_type not in WIDGET_TYPES and not i.optional]
            linked = {s["name"] for s in node["inputs"] if s["link"] is not None}
            assert set(required) <= linked, f"{typ} has unconnected required inputs"
            values = _widget_values(schema, node["widgets_values"])
            for inp in _widget_inputs(schema):
                v = values[inp.id]
                if inp.io_type == "COMBO":
                    assert v in inp.options, (typ, inp.id, v)
                elif inp.io_type in ("INT", "FLOAT"):
                    assert inp.min <= v <= inp.max, (typ, inp.id, v)
        elif typ in FOREIGN_NODES:
            accepted, outputs = FOREIGN_NODES[typ]
            for slot in node["inputs"]:
                assert slot["name"] in accepted and slot["type"] in accepted[slot["name"]], (typ, slot)
            assert [o["type"] for o in node["outputs"]] == outputs[: len(node["outputs"])]
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out = by_id[src]["outputs"][src_slot]
        inp = by_id[dst]["inputs"][dst_slot]
        assert out["type"] == typ == inp["type"], f"link {link_id}: {out['type']} -> {inp['type']} as {typ}"
        assert link_id in out["links"] and inp["link"] == link_id
    types = {n["type"] for n in wf["nodes"]}
    if name == "kdtalker_basic.json":
        assert {"LoadImage", "LoadAudio", "KDTalkerLoadModels", "KDTalker", "CreateVideo",
                "SaveVideo"} <= types
    elif name == "kdtalker_vhs.json":
        assert {"LoadImage", "LoadAudio", "KDTalker", "VHS_VideoCombine"} <= types
    elif name == "kdtalker_render_video.json":
        assert {"LoadImage", "LoadAudio", "KDTalkerSampleMotion", "KDTalkerRenderVideo"} <= types
    elif name == "kdtalker_segments.json":
        renders = [n for n in wf["nodes"] if n["type"] == "KDTalkerRender"]
        assert len(renders) == 2 and {"ImageBatch", "CreateVideo", "SaveVideo"} <= types
    elif name == "kdtalker_two_faces.json":
        assert {"KDTalkerComposeFaces", "ImageStitch", "CreateVideo", "SaveVideo"} <= types
    elif name == "kdtalker_pose_from_video.json":
        assert {"KDTalkerExtractVideoMotion", "KDTalkerMixMotion", "KDTalkerRender"} <= types
    else:
        assert name == "kdtalker_step_by_step.json", f"no expectations written for workflow {name}"
        assert {"KDTalkerPreparePortrait", "KDTalkerEncodeAudio", "KDTalkerSampleMotion", "KDTalkerRender",
                "KDTalkerScaleMotion", "CreateVideo", "SaveVideo"} <= types
        notes = [n["widgets_values"][0].lower() for n in wf["nodes"] if n["type"] in FRONTEND_ONLY]
        assert any("upscal" in t and "face restor" in t for t in notes)


# ----------------------------------------------------------------------------------------- full run


@pytest.fixture(scope="module")
def models_handle(nodes, comfy_root, extra_liveportrait, official_models_dir):
    # LivePortrait goes into the extra folder: proves extra_model_paths.yaml entries are searched.
    link_tree(official_models_dir / "kdtalker", comfy_root / "models" / "kdtalker")
    link_tree(official_models_dir / "liveportrait", extra_liveportrait)
    schema = nodes["KDTalkerLoadModels"].GET_SCHEMA()
    options = {i.id: i.options for i in schema.inputs if i.io_type == "COMBO"}
    assert "KDTalker.pth" in options["kdtalker_checkpoint"]
    assert "wav2lip.pth" in options["wav2lip_checkpoint"]
    assert str(extra_liveportrait) in options["liveportrait"]
    handle = _execute(nodes["KDTalkerLoadModels"],
        kdtalker_checkpoint="KDTalker.pth", wav2lip_checkpoint="auto", liveportrait=str(extra_liveportrait),
        precision="fp32", attention="auto", device="auto", use_ema=False)[0]
    assert handle.paths.liveportrait_dir == extra_liveportrait
    return handle


def _run_workflow(wf: dict, nodes: dict, inputs: dict[str, Any], overrides: dict[str, dict[str, Any]],
                  sink: Callable[[dict, dict[str, Any]], None]) -> dict[int, tuple]:
    """Execute a UI-format workflow: node types in ``inputs`` give those outputs, our other nodes run
    for real (``overrides`` replace widget values), foreign nodes go to ``sink(node, inputs)``.
    Returns node id -> outputs."""
    by_id = {n["id"]: n for n in wf["nodes"]}
    links = {link[0]: link for link in wf["links"]}
    results: dict[int, tuple] = {}
    for node in sorted(wf["nodes"], key=lambda n: n["order"]):
        typ = node["type"]
        if typ in FRONTEND_ONLY:
            continue
        kwargs: dict[str, Any] = {}
        for slot in node["inputs"]:
            if slot["link"] is not None:
                _, src, src_slot, _, _, _ = links[slot["link"]]
                kwargs[slot["name"]] = results[src][src_slot]
        if typ in inputs:
            results[node["id"]] = inputs[typ]
        elif typ in nodes:
            schema = nodes[typ].GET_SCHEMA()
            for key, value in _widget_values(schema, node["widgets_values"]).items():
                kwargs.setdefault(key, value)
            kwargs.update(overrides.get(typ, {}))
            results[node["id"]] = tuple(_execute(nodes[typ], **kwargs).args)
        else:
            results[node["id"]] = tuple(sink(by_id[node["id"]], kwargs) or ())
    return results


def _check_video_inputs(node: dict, kwargs: dict[str, Any], frames: int) -> None:
    """What CreateVideo / VHS_VideoCombine receive: IMAGE (T,H,W,3) CPU float, AUDIO, fps."""
    if node["type"] not in ("CreateVideo", "VHS_VideoCombine"):
        return
    images = kwargs["images"]
    assert images.dtype == torch.float32 and images.device.type == "cpu" and images.ndim == 4
    assert images.shape[0] == frames and images.shape[-1] == 3
    assert torch.isfinite(images).all() and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    fps = kwargs["fps" if node["type"] == "CreateVideo" else "frame_rate"]
    assert isinstance(fps, float) and fps == 25.0
    audio = kwargs["audio"]
    assert audio["waveform"].ndim == 3 and audio["waveform"].dtype == torch.float32
    assert audio["waveform"].shape[-1] == round(frames / fps * audio["sample_rate"])


def _run_example(name: str, nodes: dict, models_handle, frames: int, overrides: dict) -> tuple[dict, dict]:
    """Run workflows/<name> on the sample photo and ``frames`` frames of real speech.

    Load KDTalker Models yields the already loaded handle (loading is checked in the fixture);
    CreateVideo / VHS_VideoCombine inputs are checked; returns (workflow, node id -> outputs)."""
    image, speech = _portrait_image(), _speech(frames / 25.0)
    inputs = {"LoadImage": (image, torch.zeros(image.shape[:3])), "LoadAudio": (speech,),
              "KDTalkerLoadModels": (models_handle,)}
    seen: list[str] = []

    def sink(node, kwargs):
        seen.append(node["type"])
        _check_video_inputs(node, kwargs, frames)
        return (kwargs,) if node["type"] == "CreateVideo" else ()  # stands for the VIDEO

    wf = _load_workflow(name)
    before = mm.soft_empty_cache_calls
    results = _run_workflow(wf, nodes, inputs, overrides, sink)
    assert mm.soft_empty_cache_calls > before, "rendering must hand memory back to ComfyUI"
    assert seen.count("CreateVideo") == 1 and seen.count("SaveVideo") == 1
    return wf, results


@pytest.mark.slow
def test_basic_workflow_all_in_one_node(nodes, models_handle, progress_hook):
    """workflows/kdtalker_basic.json: LoadImage + LoadAudio -> KDTalker -> CreateVideo -> SaveVideo."""
    wf, results = _run_example("kdtalker_basic.json", nodes, models_handle, frames=1,
                               overrides={"KDTalker": {"steps": 2}})
    images, audio, fps, video = results[next(n["id"] for n in wf["nodes"] if n["type"] == "KDTalker")]
    parts = video.get_components()  # the VIDEO output: the same frames and speech at the same rate
    assert parts.images is images and parts.audio is audio and parts.frame_rate == fps == 25.0
    assert progress_hook.values[-1] == (1000, 1000)
    assert [v for v, _ in progress_hook.values] == sorted(v for v, _ in progress_hook.values)


@pytest.mark.slow
def test_step_by_step_workflow(nodes, models_handle, progress_hook):
    """workflows/kdtalker_step_by_step.json: every stage node, a motion edit, chunked rendering."""
    wf, results = _run_example("kdtalker_step_by_step.json", nodes, models_handle, frames=2,
                               overrides={"KDTalkerSampleMotion": {"steps": 2},
                                          "KDTalkerRender": {"chunk_size": 1}})
    image = _portrait_image()
    render_id = next(n["id"] for n in wf["nodes"] if n["type"] == "KDTalkerRender")
    images, mask, _audio, _fps = results[render_id]
    assert images.shape[1:3] == image.shape[1:3], "paste_back keeps the photo size"
    assert mask.shape == (1, *images.shape[1:3]) and float(mask.max()) > 0.5
    assert not torch.equal(images[0], image[0]), "the face was rendered into the photo"
    crop_id = next(n["id"] for n in wf["nodes"] if n["type"] == "KDTalkerPreparePortrait")
    assert results[crop_id][1].shape == (1, 256, 256, 3)
    render_ticks = [v for v, _ in progress_hook.values[-2:]]
    assert render_ticks == [500, 1000], "one progress update per rendered chunk"


@pytest.mark.slow
def test_pose_from_video_workflow(nodes, models_handle, comfy_root):
    """workflows/kdtalker_pose_from_video.json on the driving clip that on_load wrote into input/: Load Video
    and Get Video Components run as ComfyUI 0.33's do (comfy_extras/nodes_video.py), head pose from the
    clip, lips from the speech, and Render's motion_scale (on in the workflow) renders the clip's zoom."""
    from comfy_api.latest import InputImpl

    frames, clip_len = 2, 5
    image = _portrait_image()
    inputs = {"LoadImage": (image, torch.zeros(image.shape[:3])), "LoadAudio": (_speech(frames / 25.0),),
              "KDTalkerLoadModels": (models_handle,)}
    seen: list[str] = []
    clip_frames: list[int] = []

    def sink(node, kwargs):  # the core nodes, as their execute() in ComfyUI
        seen.append(node["type"])
        if node["type"] == "LoadVideo":
            return (InputImpl.VideoFromFile(folder_paths.get_annotated_filepath(node["widgets_values"][0])),)
        if node["type"] == "GetVideoComponents":  # + the clip cut to clip_len frames: M's cost is per frame
            parts = kwargs["video"].get_components()
            clip_frames.append(parts.images.shape[0])
            return parts.images[:clip_len], parts.audio, float(parts.frame_rate), kwargs["video"].get_bit_depth()
        _check_video_inputs(node, kwargs, frames)
        return (kwargs,) if node["type"] == "CreateVideo" else ()  # stands for the VIDEO

    wf = _load_workflow("kdtalker_pose_from_video.json")
    assert (comfy_root / "input" / "kdtalker_sample_driving.mp4").is_file()
    results = _run_workflow(wf, nodes, inputs, {"KDTalkerSampleMotion": {"steps": 2}}, sink)
    assert seen == ["LoadVideo", "GetVideoComponents", "PreviewImage", "CreateVideo", "SaveVideo"]
    by_type = {n["type"]: results[n["id"]] for n in wf["nodes"] if n["id"] in results}
    assert clip_frames == [75] and by_type["GetVideoComponents"][0].shape == (clip_len, 256, 256, 3)
    assert by_type["GetVideoComponents"][2] == 25.0
    video_motion, crops = by_type["KDTalkerExtractVideoMotion"]
    assert video_motion.num_frames == clip_len and crops.shape == (clip_len, 256, 256, 3)
    speech_motion = by_type["KDTalkerSampleMotion"][0]
    mixed = by_type["KDTalkerMixMotion"][0]
    assert mixed.num_frames == frames
    for field in ("yaw", "pitch", "roll", "t", "scale"):  # pose from the clip
        torch.testing.assert_close(getattr(mixed, field), getattr(video_motion, field)[:frames])
    torch.testing.assert_close(mixed.exp, speech_motion.exp)  # lips and eyes from the speech
    images = by_type["KDTalkerRender"][0]
    assert images.shape == (frames, *image.shape[1:3], 3)

    portrait = by_type["KDTalkerPreparePortrait"][0]
    # frame 0 is the clip's reference frame (the portrait's own scale); frame 1 is zoomed
    zoom = (mixed.scale.reshape(-1) / portrait.kp_info["scale"].reshape(()).to(mixed.scale)).tolist()
    assert zoom[0] == 1.0 and abs(zoom[1] - 1.0) > 1e-4, zoom
    flat = _execute(nodes["KDTalkerRender"], portrait=portrait, motion=mixed, models=models_handle, chunk_size=8,
                    paste_back=True, start_frame=1, frame_count=1)[0]  # no motion_scale: the portrait's scale
    assert not torch.equal(images[1], flat[0]), "motion_scale renders the clip's zoom"


@pytest.mark.slow
def test_sample_motion_seed_and_cancel(package, nodes, models_handle, progress_hook):
    """Same seed -> same motion; another seed -> another; Cancel stops sampling."""
    portrait, _preview = _execute(nodes["KDTalkerPreparePortrait"],
        image=_portrait_image(), models=models_handle, face_index=0, order="largest",
        crop_mode="official").args
    assert _preview.shape == (1, 256, 256, 3)
    features, audio = _execute(nodes["KDTalkerEncodeAudio"],
        audio=_speech(1.0), models=models_handle, fps=25.0, start_seconds=0.2, duration_seconds=0.5).args
    assert features.num_frames == 12
    assert audio["waveform"].shape[-1] == round(12 / 25 * audio["sample_rate"])

    def sample(seed):
        return _execute(nodes["KDTalkerSampleMotion"], portrait=portrait, audio_features=features,
                                                     models=models_handle, seed=seed, steps=2, eta=0.0,
                                                     smoothing=1.0)[0]

    attention = importlib.import_module(f"{package[0].__name__}.kdtalker_core.attention")  # the nodes' copy
    attention.set_attention_backend("math")  # as if another Load Models node had chosen "math"
    m1, m2, m3 = sample(7), sample(7), sample(8)
    assert attention.get_attention_backend() == models_handle.models.attention_backend, \
        "each node run uses its own models' attention backend"
    assert m1.num_frames == 12 and torch.equal(m1.data, m2.data) and not torch.equal(m1.data, m3.data)
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        sample(7)


def test_auto_precision_and_attention_follow_comfyui_flags(package, monkeypatch):
    """Load Models' "auto" obeys ComfyUI's --force-fp32 / --force-fp16 / --use-pytorch-cross-attention."""
    import comfy.cli_args as cli

    models_mod = importlib.import_module(f"{package[0].__name__}.nodes.models")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models_mod.model_precision("auto", cpu) == "auto"  # no flag: the library's policy decides
    monkeypatch.setattr(cli.args, "force_fp32", True)
    assert models_mod.model_precision("auto", cuda) == "fp32" and models_mod.model_precision("auto", cpu) == "fp32"
    assert models_mod.model_precision("bf16", cuda) == "bf16", "an explicit choice on the node wins"
    monkeypatch.setattr(cli.args, "force_fp32", False)
    monkeypatch.setattr(cli.args, "force_fp16", True)
    assert models_mod.model_precision("auto", cuda) == "fp16"
    assert models_mod.model_precision("auto", cpu) == "auto", "fp16 is never forced onto a CPU"
    monkeypatch.setattr(cli.args, "use_pytorch_cross_attention", True)
    assert models_mod.attention_backend("auto", cuda) == "sdpa"
    assert models_mod.attention_backend("math", cuda) == "math"


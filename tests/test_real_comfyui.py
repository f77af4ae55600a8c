"""The node package inside a REAL ComfyUI (not the stand-in in tests/comfy_stub).

Skipped unless ``COMFYUI_PATH`` names a ComfyUI checkout. ComfyUI runs in its own Python
(``COMFYUI_PYTHON``, default: this one), which needs ComfyUI's requirements and ours:

* in-process: a child Python imports ComfyUI's modules (``--cpu``), loads this folder with
  ComfyUI's own ``nodes.load_custom_node`` and reports every node's schema (a child, because this
  pytest process may already hold the stand-in's ``comfy`` modules and another torch);
* server: ``main.py --cpu`` on a free loopback port with this folder in ``custom_nodes``; checks the
  log, ``/object_info`` and the example workflows, then runs ``workflows/kdtalker_basic.json`` in API
  form over HTTP on the sample photo and 0.12 s of real speech (3 frames, 2 steps), and the other
  example workflows too, and reads the saved mp4 back. Models: symlinks to ``KDTALKER_TEST_MODELS``
  (a folder holding ``kdtalker/`` and ``liveportrait/``) or to random full-size weights in the
  official layout written here. ``KDTALKER_TEST_EXTRA_NODES`` (``os.pathsep``-separated folders) adds
  other node packages, e.g. ComfyUI-VideoHelperSuite for ``kdtalker_vhs.json``;
* over the same server: Render Video's VIDEO output saved again by ComfyUI's Save Video and split by
  Get Video Components (an mp4 with sound, native VIDEO); the two-segment IMAGE graph equal to one
  pass (PNG for PNG); each error class (a photo without a face, NaN / empty / corrupt audio, a missing
  model file) as an ``execution_error`` on the node that failed, with a good prompt succeeding right
  after; and ``POST /free`` handing the models' memory back (server RSS from ``/proc/<pid>/status``).

Written against ComfyUI 0.33.0 (commit 2f35f4a0); run it with 0.33 or newer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
SPEECH = ROOT / "tests" / "data" / "speech_16k_mono.wav"
PORTRAIT = ROOT / "kdtalker_core" / "assets" / "sample_portrait.jpg"
PACKAGE_NAME = "ComfyUI-KDTalker"
OUR_TYPES = {"KDTALKER_MODELS", "KDTALKER_PORTRAIT", "KDTALKER_AUDIO_FEATURES", "KDTALKER_MOTION"}
#: Node types an example workflow may use that neither ComfyUI nor we provide.
EXPECTED_FOREIGN = {"VHS_VideoCombine"}  # ComfyUI-VideoHelperSuite (kdtalker_vhs.json)
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3"}
SERVER_START_S = 240.0
RUN_S = 900.0

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (COMFYUI_PATH and (Path(COMFYUI_PATH) / "main.py").is_file()
                            and (Path(COMFYUI_PATH) / "nodes.py").is_file()),
                       reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to a Python with "
                              "ComfyUI's and this package's requirements) to test inside a real ComfyUI"),
]


def declared_node_ids() -> set[str]:
    """Node ids declared in nodes/*.py (read from the source, independent of any import)."""
    ids: set[str] = set()
    for path in (ROOT / "nodes").glob("*.py"):
        ids |= set(re.findall(r'node_id="(\w+)"', path.read_text()))
    return ids


# ----------------------------------------------------------------------------------------- in-process

_CHILD = r"""
import asyncio, json, os, sys
comfy_path, package_dir, base = sys.argv[1:4]
sys.path.insert(0, comfy_path)
os.chdir(comfy_path)
import comfy.options
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = base  # what --base-directory does
import folder_paths
import comfy.model_management
import nodes
before = set(nodes.NODE_CLASS_MAPPINGS)
loaded = asyncio.run(nodes.load_custom_node(package_dir, before, module_parent="custom_nodes"))
ours = {k: c for k, c in nodes.NODE_CLASS_MAPPINGS.items() if k not in before}
infos = {}
for node_id, cls in ours.items():
    schema = cls.GET_SCHEMA()  # ComfyUI validates the schema here
    infos[node_id] = {"info": cls.GET_NODE_INFO_V1(), "schema_id": schema.node_id,
                      "display": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id)}
print("@@RESULT@@" + json.dumps({
    "loaded": loaded, "nodes": infos, "nodes_module": os.path.abspath(nodes.__file__),
    "folders": {k: folder_paths.get_folder_paths(k) for k in ("kdtalker", "liveportrait")},
}, default=str))
"""


def test_package_loads_in_process_with_comfyuis_own_loader(tmp_path):
    base = tmp_path / "base"
    for d in ("models", "input", "output", "temp", "custom_nodes"):
        (base / d).mkdir(parents=True)
    link = base / "custom_nodes" / PACKAGE_NAME
    link.symlink_to(ROOT, target_is_directory=True)
    proc = subprocess.run([COMFYUI_PYTHON, "-c", _CHILD, COMFYUI_PATH, str(link), str(base)],
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Cannot import" not in log and "Traceback" not in log, log[-4000:]
    result = json.loads(log.split("@@RESULT@@", 1)[1].splitlines()[0])
    assert result["loaded"] is True
    # Our nodes/ folder must not shadow ComfyUI's nodes.py.
    assert Path(result["nodes_module"]) == (Path(COMFYUI_PATH) / "nodes.py").resolve()
    assert set(result["nodes"]) == declared_node_ids() and len(result["nodes"]) >= 12
    assert result["folders"]["kdtalker"][0] == str(base / "models" / "kdtalker")
    assert result["folders"]["liveportrait"][0] == str(base / "models" / "liveportrait")
    for node_id, entry in result["nodes"].items():
        info = entry["info"]
        assert entry["schema_id"] == node_id == info["name"]
        assert "KDTalker" in entry["display"] and info["category"].startswith("KDTalker")
        assert info["python_module"] == f"custom_nodes.{PACKAGE_NAME}"
        for section, names in info["input_order"].items():
            assert list(info["input"][section]) == names
        for spec in info["input"].get("required", {}).values():
            typ = spec[0]
            assert isinstance(typ, list) or typ in WIDGET_TYPES | OUR_TYPES | {"IMAGE", "AUDIO"}, (node_id, typ)
        assert len(info["output"]) == len(info["output_name"]) == len(info["output_is_list"])
        assert set(info["output"]) <= OUR_TYPES | {"IMAGE", "MASK", "AUDIO", "FLOAT", "VIDEO", "STRING"}


# ----------------------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_speech_clip(path: Path, seconds: float) -> None:
    """The first ``seconds`` of the real speech recording, as a WAV file."""
    with wave.open(str(SPEECH)) as src:
        params = src.getparams()
        data = src.readframes(int(round(seconds * params.framerate)))
    with wave.open(str(path), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(data)


def _link_models(models_dir: Path, tmp_factory) -> None:
    source = os.environ.get("KDTALKER_TEST_MODELS")
    if source:
        src = Path(source)
        if not ((src / "kdtalker").is_dir() and (src / "liveportrait").is_dir()):
            pytest.fail(f"KDTALKER_TEST_MODELS={source} must hold kdtalker/ and liveportrait/ folders")
    else:
        from model_files import write_official_models  # tests/model_files.py (needs torch here)

        src = write_official_models(tmp_factory.mktemp("weights"))
    from model_files import link_tree

    link_tree(src / "kdtalker", models_dir / "kdtalker")
    link_tree(src / "liveportrait", models_dir / "liveportrait")


class Server:
    """A ComfyUI server process on a loopback port, with its log file."""

    def __init__(self, base: Path, port: int):
        self.base, self.port, self.url = base, port, f"http://127.0.0.1:{port}"
        self.log_path = base / "server.log"
        args = [COMFYUI_PYTHON, "main.py", "--cpu", "--base-directory", str(base),
                "--listen", "127.0.0.1", "--port", str(port)]
        if "--database-url" in (Path(COMFYUI_PATH) / "comfy" / "cli_args.py").read_text():
            args += ["--database-url", "sqlite:///:memory:"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=COMFYUI_PATH, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats", timeout=5)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(1.0)
        raise AssertionError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def get(self, path: str, timeout: float = 60) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict, timeout: float = 60) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # ComfyUI explains a refused prompt in the body
            raise AssertionError(f"POST {path} -> {exc.code}: {exc.read().decode(errors='replace')}") from exc

    def post_empty(self, path: str, body: dict, timeout: float = 60) -> int:
        """POST JSON to an endpoint that answers with an empty body (``/free``); returns the status."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("comfy_base")
    for d in ("models", "input", "output", "temp", "user", "custom_nodes"):
        (base / d).mkdir()
    (base / "custom_nodes" / PACKAGE_NAME).symlink_to(ROOT, target_is_directory=True)
    for extra in filter(None, os.environ.get("KDTALKER_TEST_EXTRA_NODES", "").split(os.pathsep)):
        (base / "custom_nodes" / Path(extra).name).symlink_to(Path(extra).resolve(), target_is_directory=True)
    _link_models(base / "models", tmp_path_factory)
    shutil.copy(PORTRAIT, base / "input" / "sample_portrait.jpg")
    _write_speech_clip(base / "input" / "sample_speech.wav", 0.12)  # 3 frames at 25 fps
    srv = Server(base, _free_port())
    try:
        srv.wait_ready(SERVER_START_S)
        srv.rss_at_start = _rss(srv.proc.pid)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def object_info(server) -> dict[str, Any]:
    return server.get("/object_info", timeout=120)


def test_server_imports_the_package_without_error(server, object_info):
    log = server.log()
    line = next((ln for ln in log.splitlines() if ln.rstrip().endswith(f"custom_nodes/{PACKAGE_NAME}")), None)
    assert line is not None, f"no import-time line for {PACKAGE_NAME} in the log:\n{log[-4000:]}"
    assert "IMPORT FAILED" not in line, log[-4000:]
    assert f"Cannot import {server.base / 'custom_nodes' / PACKAGE_NAME}" not in log
    ours = {k for k, v in object_info.items() if v.get("python_module") == f"custom_nodes.{PACKAGE_NAME}"}
    assert ours == declared_node_ids()
    options = object_info["KDTalkerLoadModels"]["input"]["required"]
    assert "KDTalker.pth" in options["kdtalker_checkpoint"][1]["options"]
    assert "liveportrait" in options["liveportrait"][1]["options"]


def _input_spec(info: dict, name: str) -> list | None:
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return info["input"][section][name]
    return None


def _accepts(spec: list, typ: str) -> bool:
    declared = spec[0]
    if isinstance(declared, list) or declared == "*":
        return True
    return typ in declared.split(",")


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.json")))
def test_workflow_node_types_and_links_exist_in_the_server(object_info, name):
    wf = json.loads((WORKFLOWS / name).read_text())
    types = {n["type"] for n in wf["nodes"]} - FRONTEND_ONLY
    missing = types - set(object_info)
    assert missing <= EXPECTED_FOREIGN, f"{name}: unknown node types {sorted(missing - EXPECTED_FOREIGN)}"
    by_id = {n["id"]: n for n in wf["nodes"]}
    for _link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        src_node, dst_node = by_id[src], by_id[dst]
        if src_node["type"] in object_info:
            assert object_info[src_node["type"]]["output"][src_slot] == typ, (name, src_node["type"], src_slot)
        if dst_node["type"] in object_info:
            slot = dst_node["inputs"][dst_slot]["name"]
            spec = _input_spec(object_info[dst_node["type"]], slot)
            assert spec is not None and _accepts(spec, typ), (name, dst_node["type"], slot, typ)


def _widget_names(spec_inputs: dict, values: Iterator, out: dict[str, Any], prefix: str = "") -> None:
    """Assign UI ``widgets_values`` to input names the way the frontend orders widgets: input order,
    one extra value after ``control_after_generate`` widgets, a dynamic combo's chosen option's
    widgets right after it (named ``parent.child``)."""
    for section in ("required", "optional"):
        for name, spec in spec_inputs.get(section, {}).items():
            typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if not (isinstance(typ, list) or typ in WIDGET_TYPES) or opts.get("forceInput"):
                continue
            value = next(values, StopIteration)
            if value is StopIteration:
                return
            out[prefix + name] = value
            if opts.get("control_after_generate"):
                next(values, None)
            if typ == "COMFY_DYNAMICCOMBO_V3":
                chosen = next(o for o in opts["options"] if o["key"] == value)
                _widget_names(chosen["inputs"], values, out, f"{prefix}{name}.")


def ui_to_api(wf: dict, object_info: dict) -> dict[str, dict]:
    """A UI-format workflow -> the API prompt ``{id: {class_type, inputs}}`` that POST /prompt takes."""
    links = {link[0]: link for link in wf["links"]}
    prompt: dict[str, dict] = {}
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # notes, muted, bypassed
            continue
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values") or []
        if isinstance(values, dict):  # some packages (VideoHelperSuite) save widgets by name
            inputs.update({k: v for k, v in values.items() if not isinstance(v, dict)})
        else:
            _widget_names(object_info[node["type"]]["input"], iter(values), inputs)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


#: Per workflow: node type (or "#<node id>") -> input overrides that keep the CPU run short (3 frames,
#: 2 DDIM steps).
RUNS = {
    "kdtalker_basic.json": {"KDTalker": {"steps": 2}},
    "kdtalker_step_by_step.json": {"KDTalkerSampleMotion": {"steps": 2}},
    "kdtalker_vhs.json": {"KDTalker": {"steps": 2}},
    "kdtalker_render_video.json": {"KDTalkerSampleMotion": {"steps": 2}},
    # The two Render segments (nodes 7 and 8): frames 0-1 and 2-end of the 3-frame clip.
    "kdtalker_segments.json": {"KDTalkerSampleMotion": {"steps": 2}, "#7": {"start_frame": 0, "frame_count": 2},
                               "#8": {"start_frame": 2, "frame_count": 0}},
    "kdtalker_two_faces.json": {"KDTalkerSampleMotion": {"steps": 2}},
    # Its Load Video reads kdtalker_sample_driving.mp4, which the package writes into input/ on load.
    "kdtalker_pose_from_video.json": {"KDTalkerSampleMotion": {"steps": 2}},
}
#: Frame size (H, W) of each workflow's video: the 512x512 sample photo pasted back, or two of them side
#: by side (kdtalker_two_faces.json stitches the photo and its mirror image).
VIDEO_SIZES = {"kdtalker_two_faces.json": (512, 1024)}


def test_every_example_workflow_has_a_short_run():
    """A new example workflow needs an entry in RUNS (its short-run overrides), so it is run here too."""
    assert set(RUNS) == {p.name for p in WORKFLOWS.glob("*.json")}


def _finish_prompt(server: Server, prompt: dict) -> dict:
    """POST the prompt, poll /history until it finished (bounded), return its history entry."""
    answer = server.post("/prompt", {"prompt": prompt, "client_id": "kdtalker-test"})
    assert not answer.get("node_errors"), answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_S
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status", {})
        if status.get("completed") or status.get("status_str") == "error":
            return entry
        assert server.proc.poll() is None, server.log()[-4000:]
        time.sleep(1.0)
    raise AssertionError(f"prompt not finished within {RUN_S:.0f} s:\n{server.log()[-4000:]}")


def _run_prompt(server: Server, prompt: dict) -> dict:
    """Run the prompt to the end; it must succeed."""
    entry = _finish_prompt(server, prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    return entry


def _check_video_file(path: Path, frames: int, size: tuple[int, int], seconds: float) -> None:
    """The file holds ``frames`` video frames of ``size`` (H, W) at 25 fps and ~``seconds`` of audio."""
    import av

    with av.open(str(path)) as container:
        assert container.streams.video and container.streams.audio, f"{path}: needs video and audio"
        rate = float(container.streams.video[0].average_rate)
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio_rate = container.streams.audio[0].rate
        samples = sum(f.samples for f in container.decode(audio=0))
    assert len(images) == frames and images[0].shape == (*size, 3)
    assert rate == pytest.approx(25.0)
    # AAC codes whole 1024-sample frames, and muxers cut or pad the audio to whole frames.
    assert samples / audio_rate == pytest.approx(seconds, abs=1024 / audio_rate + 0.005)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_workflow_runs_over_http_and_saves_a_talking_video(server, object_info, name):
    pytest.importorskip("av")
    wf = json.loads((WORKFLOWS / name).read_text())
    missing = {n["type"] for n in wf["nodes"]} - FRONTEND_ONLY - set(object_info)
    if missing:
        pytest.skip(f"{name} needs {sorted(missing)}: link that node package into the test's custom_nodes "
                    "with KDTALKER_TEST_EXTRA_NODES")
    prompt = ui_to_api(wf, object_info)
    for node_id, node in prompt.items():
        overrides = {**RUNS[name].get(node["class_type"], {}), **RUNS[name].get(f"#{node_id}", {})}
        for key, value in overrides.items():
            assert key in node["inputs"], (node["class_type"], key)
            node["inputs"][key] = value
    entry = _run_prompt(server, prompt)
    videos = [item for out in entry["outputs"].values() for key in ("images", "gifs")
              for item in out.get(key, []) if item["filename"].endswith(".mp4")]
    assert len(videos) == 1, entry["outputs"]
    item = videos[0]
    assert item["type"] == "output"
    _check_video_file(server.base / "output" / item["subfolder"] / item["filename"], frames=3,
                      size=VIDEO_SIZES.get(name, (512, 512)), seconds=0.12)  # paste_back, as long as the clip
    if name == "kdtalker_step_by_step.json":
        saved = [t for out in entry["outputs"].values() for t in out.get("text", [])]
        assert len(saved) == 1 and (server.base / "output" / saved[0]).is_file()
        previews = [i for out in entry["outputs"].values() for i in out.get("images", []) if i["type"] == "temp"]
        assert len(previews) == 2  # the crop and the motion chart


# ----------------------------------------------------------------------------------------- graphs built here


def _api_prompt(object_info: dict, name: str, seed: int | None = None) -> dict[str, dict]:
    """An example workflow as an API prompt with the short-run overrides of :data:`RUNS` (and a seed)."""
    prompt = ui_to_api(json.loads((WORKFLOWS / name).read_text()), object_info)
    for node_id, node in prompt.items():
        node["inputs"].update({**RUNS[name].get(node["class_type"], {}), **RUNS[name].get(f"#{node_id}", {})})
        if seed is not None and "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    return prompt


def _node_id(prompt: dict, class_type: str) -> str:
    (node_id,) = [k for k, v in prompt.items() if v["class_type"] == class_type]
    return node_id


def _add_node(prompt: dict, object_info: dict, class_type: str, **inputs: Any) -> str:
    """Add a node with the widget defaults the server reports, overridden by ``inputs``; returns its id."""
    node_id = str(max(int(k) for k in prompt) + 100)
    values: dict[str, Any] = {}
    for name, spec in object_info[class_type]["input"].get("required", {}).items():
        opts = spec[1] if len(spec) > 1 else {}
        if "default" in opts:
            values[name] = opts["default"]
        elif spec[0] in ("COMBO", "COMFY_DYNAMICCOMBO_V3") and opts.get("options"):
            first = opts["options"][0]
            values[name] = first["key"] if isinstance(first, dict) else first
    prompt[node_id] = {"class_type": class_type, "inputs": {**values, **inputs}}
    return node_id


def _outputs(entry: dict, node_id: str, key: str = "images") -> list[dict]:
    return entry["outputs"].get(node_id, {}).get(key, [])


def _output_file(server: Server, item: dict) -> Path:
    return server.base / item["type"] / item["subfolder"] / item["filename"]


def _read_png(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_render_video_node_writes_an_mp4_with_sound_and_returns_native_video(server, object_info):
    """Render Video's VIDEO goes into ComfyUI's own Save Video (remuxed copy) and Get Video Components."""
    pytest.importorskip("av")
    prompt = _api_prompt(object_info, "kdtalker_render_video.json", seed=11)
    render = _node_id(prompt, "KDTalkerRenderVideo")
    prompt[render]["inputs"]["filename_prefix"] = "video/KDTalker_native"
    saved = _add_node(prompt, object_info, "SaveVideo", video=[render, 0], filename_prefix="video/KDTalker_resaved",
                      format="auto", codec="auto")
    parts = _add_node(prompt, object_info, "GetVideoComponents", video=[render, 0])
    frames = _add_node(prompt, object_info, "SaveImage", images=[parts, 0], filename_prefix="KDTalker_components")
    entry = _run_prompt(server, prompt)

    (ours,) = _outputs(entry, render)
    assert ours["filename"].startswith("KDTalker_native_") and ours["filename"].endswith(".mp4")
    assert ours["type"] == "output" and ours["subfolder"] == "video"
    _check_video_file(_output_file(server, ours), frames=3, size=(512, 512), seconds=0.12)
    (copy,) = _outputs(entry, saved)  # Save Video calls VIDEO.save_to(): works only on a real VIDEO value
    _check_video_file(_output_file(server, copy), frames=3, size=(512, 512), seconds=0.12)
    pngs = _outputs(entry, frames)  # Get Video Components decoded the VIDEO back into an IMAGE batch
    assert len(pngs) == 3 and _read_png(_output_file(server, pngs[0])).shape == (512, 512, 3)
    leftovers = [p.name for p in (server.base / "output" / "video").iterdir() if not p.name.endswith(".mp4")]
    assert not leftovers, leftovers


def test_segmented_render_equals_one_pass(server, object_info):
    """kdtalker_segments.json (frames 0-1 + 2-end through Image Batch) against one Render of every frame."""
    prompt = _api_prompt(object_info, "kdtalker_segments.json", seed=12)
    first = prompt["7"]["inputs"]
    batch = _node_id(prompt, "ImageBatch")
    joined = _add_node(prompt, object_info, "SaveImage", images=[batch, 0], filename_prefix="KDTalker_segments")
    whole = _add_node(prompt, object_info, "KDTalkerRender", **{**first, "start_frame": 0, "frame_count": 0})
    single = _add_node(prompt, object_info, "SaveImage", images=[whole, 0], filename_prefix="KDTalker_one_pass")
    entry = _run_prompt(server, prompt)
    a = [_read_png(_output_file(server, i)) for i in _outputs(entry, joined)]
    b = [_read_png(_output_file(server, i)) for i in _outputs(entry, single)]
    assert len(a) == len(b) == 3
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        diff = int(abs(x.astype(int) - y.astype(int)).max())
        assert diff == 0, f"frame {k}: segments differ from one pass by up to {diff}/255"


# ----------------------------------------------------------------------------------------- errors


def _write_photo_without_a_face(path: Path) -> None:
    """A 512x512 'landscape': sky and ground gradients with sensor-like noise, no face anywhere."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y = np.linspace(0.0, 1.0, 512)[:, None, None]
    sky = np.array([110, 160, 230]) * (1 - 0.4 * y)
    ground = np.array([70, 120, 40]) * (0.7 + 0.3 * y)
    img = np.where(y < 0.55, sky, ground) * np.ones((1, 512, 1))
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def _write_float_wav(path: Path, samples, rate: int = 16000) -> None:
    """A mono IEEE-float WAV (format 3) of ``samples`` (what a DAW exports; may hold NaN)."""
    import struct

    import numpy as np

    data = np.asarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _execution_error(entry: dict) -> dict:
    status = entry["status"]
    assert status["status_str"] == "error", json.dumps(status, indent=1)[-2000:]
    errors = [m[1] for m in status["messages"] if m[0] == "execution_error"]
    assert len(errors) == 1, status["messages"]
    return errors[0]


def _output_files(server: Server) -> set[str]:
    return {str(p.relative_to(server.base)) for p in (server.base / "output").rglob("*") if p.is_file()}


def _error_then_good_prompt(server: Server, bad: dict, good: dict, node_id: str, node_type: str,
                            words: tuple[str, ...]) -> str:
    """``bad`` fails on ``node_id`` with a message naming ``words``; nothing new in output/; ``good`` then runs."""
    before = _output_files(server)
    error = _execution_error(_finish_prompt(server, bad))
    message = error["exception_message"]
    assert (error["node_id"], error["node_type"]) == (node_id, node_type), error
    first_line = message.strip().splitlines()[0].lower()
    assert all(w.lower() in first_line for w in words), message
    assert _output_files(server) == before, "a failed prompt left files in output/"
    assert server.proc.poll() is None
    entry = _run_prompt(server, good)
    assert any(item["filename"].endswith(".mp4") for out in entry["outputs"].values() for item in out.get("images", []))
    return message


_SEED = iter(range(100, 200))


def _good(object_info: dict) -> dict:
    """The streaming graph with a fresh seed (so motion and rendering really run, nothing cached)."""
    return _api_prompt(object_info, "kdtalker_render_video.json", seed=next(_SEED))


def test_photo_without_a_face_fails_on_prepare_portrait(server, object_info):
    _write_photo_without_a_face(server.base / "input" / "no_face.png")
    bad = _good(object_info)
    bad[_node_id(bad, "LoadImage")]["inputs"]["image"] = "no_face.png"
    _error_then_good_prompt(server, bad, _good(object_info), _node_id(bad, "KDTalkerPreparePortrait"),
                            "KDTalkerPreparePortrait", ("face",))


@pytest.mark.parametrize("kind", ["nan", "empty", "corrupt", "not_audio"])
def test_bad_audio_fails_on_the_node_that_reads_it(server, object_info, kind):
    """NaN samples and a corrupt body (decoded to NaN/Inf) are refused by Encode Audio; a file with no
    samples or no audio at all is refused by ComfyUI's Load Audio, before our nodes see it."""
    import numpy as np

    name = f"bad_{kind}.wav"
    path = server.base / "input" / name
    if kind == "nan":  # a float WAV whose samples went NaN (a broken effect chain)
        samples = np.sin(np.linspace(0, 400, 3200)) * 0.3
        samples[800:1200] = np.nan
        _write_float_wav(path, samples)
    elif kind == "empty":  # a valid header and no samples
        _write_float_wav(path, [])
    elif kind == "corrupt":  # a float WAV header over a damaged body (bytes 0..255 over and over)
        _write_float_wav(path, np.zeros(512))
        path.write_bytes(path.read_bytes()[:44] + bytes(range(256)) * 8)
    else:  # not audio at all, under an audio name
        path.write_text("this is not a sound file\n" * 50)
    bad = _good(object_info)
    load, encode = _node_id(bad, "LoadAudio"), _node_id(bad, "KDTalkerEncodeAudio")
    bad[load]["inputs"]["audio"] = name
    node_id, node_type, words = {
        "nan": (encode, "KDTalkerEncodeAudio", ("nan",)),
        "corrupt": (encode, "KDTalkerEncodeAudio", ("nan",)),
        "empty": (load, "LoadAudio", ("audio",)),
        "not_audio": (load, "LoadAudio", ()),
    }[kind]
    message = _error_then_good_prompt(server, bad, _good(object_info), node_id, node_type, words)
    print(f"{kind} audio -> {node_type}: {message.strip().splitlines()[0][:200]}")


def test_missing_model_file_fails_on_load_models(server, object_info):
    kdtalker = server.base / "models" / "kdtalker" / "KDTalker.pth"
    hidden = kdtalker.with_name("KDTalker.pth.hidden")
    bad = _good(object_info)
    loader = _node_id(bad, "KDTalkerLoadModels")
    bad[loader]["inputs"]["precision"] = "fp32"  # inputs not run before: ComfyUI must execute the loader
    good = json.loads(json.dumps(bad))
    good[_node_id(good, "KDTalkerSampleMotion")]["inputs"]["seed"] = next(_SEED)
    os.rename(kdtalker, hidden)
    try:
        before = _output_files(server)
        error = _execution_error(_finish_prompt(server, bad))
    finally:
        os.rename(hidden, kdtalker)
    assert (error["node_id"], error["node_type"]) == (loader, "KDTalkerLoadModels"), error
    assert "KDTalker.pth" in error["exception_message"], error["exception_message"]
    assert _output_files(server) == before
    _run_prompt(server, good)


# ----------------------------------------------------------------------------------------- memory


def _rss(pid: int) -> int:
    """Resident set size of a process in bytes (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _last_model_load_bytes(log: str) -> int:
    """Size of the model ComfyUI loaded last, as its model management logs it ("loaded completely; X MB")."""
    sizes = re.findall(r"loaded completely;\s*([\d.]+) MB", log)
    assert sizes, "ComfyUI logged no model load: the networks bypass its model management"
    return int(float(sizes[-1]) * 2**20)


def _run_then_free(server: Server, object_info: dict) -> tuple[int, int]:
    """Run a fresh prompt, then ``POST /free {unload_models, free_memory}``: (RSS loaded, RSS freed)."""
    _run_prompt(server, _good(object_info))
    # ComfyUI 0.33's prompt worker reads the /free flags once per loop and then waits on its queue for up
    # to 1000 s; flags set in between (while it collects garbage right after a prompt) are only seen at the
    # next prompt. Let it reach its wait first, as a user clicking "Unload models" would.
    time.sleep(5.0)
    loaded = _rss(server.proc.pid)
    server.post_empty("/free", {"unload_models": True, "free_memory": True})
    # The worker unloads, drops its output cache and collects garbage; poll until the RSS stops falling.
    freed, steady, deadline = loaded, 0, time.monotonic() + 60.0
    while time.monotonic() < deadline and steady < 3:
        time.sleep(2.0)
        now = _rss(server.proc.pid)
        steady = steady + 1 if (now >= freed - (1 << 20) and freed < loaded - (1 << 20)) else 0
        freed = min(freed, now)
    return loaded, freed


def test_free_gives_the_models_memory_back(server, object_info):
    """After a run, ``POST /free {unload_models, free_memory}`` drops the server's RSS by the weights, and
    a second load/free cycle ends where the first did (nothing piles up).

    ComfyUI unloads the models and drops its output cache; the networks are then collected and the
    package trims the C heap (glibc keeps freed memory otherwise), so the process RSS really falls.
    """
    cycles = []
    mib = 2**20
    for k in (1, 2):
        loaded, freed = _run_then_free(server, object_info)
        weights = _last_model_load_bytes(server.log())
        cycles.append((loaded, freed))
        print(f"cycle {k}: server RSS {loaded / mib:.0f} MiB after a run, {freed / mib:.0f} MiB after /free "
              f"(-{(loaded - freed) / mib:.0f} MiB); models as ComfyUI counts them {weights / mib:.0f} MiB; "
              f"at start {server.rss_at_start / mib:.0f} MiB")
        assert loaded - freed >= weights, f"cycle {k}: POST /free did not give the models' memory back"
    assert cycles[1][1] <= cycles[0][1] + 64 * mib, "memory piles up from one load + /free cycle to the next"
    _run_prompt(server, _good(object_info))  # and the models load again afterwards

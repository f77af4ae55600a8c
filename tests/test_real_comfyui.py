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
  other node packages, e.g. ComfyUI-VideoHelperSuite for ``kdtalker_vhs.json``.
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
        assert set(info["output"]) <= OUR_TYPES | {"IMAGE", "MASK", "AUDIO", "FLOAT"}


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
}


def _run_prompt(server: Server, prompt: dict) -> dict:
    """POST the prompt, poll /history until it finished (bounded), return its history entry."""
    answer = server.post("/prompt", {"prompt": prompt, "client_id": "kdtalker-test"})
    assert not answer.get("node_errors"), answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_S
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status", {})
        if status.get("completed") or status.get("status_str") == "error":
            assert status["status_str"] == "success", json.dumps(status, indent=1)[-4000:]
            return entry
        assert server.proc.poll() is None, server.log()[-4000:]
        time.sleep(2.0)
    raise AssertionError(f"prompt not finished within {RUN_S:.0f} s:\n{server.log()[-4000:]}")


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
    _check_video_file(server.base / "output" / item["subfolder"] / item["filename"], frames=3, size=(512, 512),
                      seconds=0.12)  # paste_back: the full 512x512 sample photo, as long as the clip
    if name == "kdtalker_step_by_step.json":
        saved = [t for out in entry["outputs"].values() for t in out.get("text", [])]
        assert len(saved) == 1 and (server.base / "output" / saved[0]).is_file()
        previews = [i for out in entry["outputs"].values() for i in out.get("images", []) if i["type"] == "temp"]
        assert len(previews) == 2  # the crop and the motion chart

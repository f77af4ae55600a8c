"""Batch jobs: job files, resume, failures, interruption, local workers and a local Ray cluster.

The end-to-end tests run a 6-job batch (two real face photos: the astronaut and a mirrored crop of
it; three clips cut from the real sample speech; one photo with no face) with random FULL-size
weights, 2 frames a job, and compare every video with the one ``kdtalker generate`` writes alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media import write_wav

from kdtalker_core import batch, cli
from kdtalker_core.audio import load_audio_file
from kdtalker_core.errors import InputError
from kdtalker_core.options import GenerateOptions, ModelOptions

ROOT = Path(__file__).resolve().parents[1]
#: Batch-wide settings of the end-to-end runs: 2 frames (80 ms of speech), 2 DDIM steps, one frame a chunk.
FLAGS = ["--steps", "2", "--max-seconds", "0.08", "--chunk-size", "1", "--device", "cpu"]
DEFAULTS = GenerateOptions(steps=2, duration_seconds=0.08, chunk_size=1)
#: The jobs (line -> keys); line 3's photo has no face.
JOBS = {
    1: {"image": "inputs/astronaut.jpg", "audio": "inputs/clip1.wav", "out": "a1.mp4"},
    2: {"image": "inputs/mirrored.png", "audio": "inputs/clip2.wav", "out": "b2.mp4", "seed": 7},
    3: {"image": "inputs/no_face.png", "audio": "inputs/clip3.wav", "out": "none.mp4"},
    4: {"image": "inputs/astronaut.jpg", "audio": "inputs/clip2.wav", "out": "a2.mp4", "smoothing": 0},
    5: {"image": "inputs/mirrored.png", "audio": "inputs/clip3.wav", "out": "b3.mp4", "start_seconds": 0.2},
    6: {"image": "inputs/astronaut.jpg", "audio": "inputs/clip3.wav", "out": "sub/a3.mp4", "no_paste_back": True},
}
GOOD = [n for n in JOBS if n != 3]


def _make_inputs(folder: Path, sample_portrait: Path, sample_speech: Path) -> None:
    """Two real face photos, a photo without a face, three speech clips (0.5 s, different words)."""
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    photo = iio.imread(sample_portrait)
    (folder / "astronaut.jpg").write_bytes(sample_portrait.read_bytes())
    iio.imwrite(folder / "mirrored.png", np.ascontiguousarray(photo[20:500, ::-1][:, 32:502]))
    iio.imwrite(folder / "no_face.png", np.ascontiguousarray(photo[300:, 300:]))  # suit and flag only
    waveform, sr = load_audio_file(sample_speech)
    mono = waveform.mean(0).numpy()
    for k, start in enumerate((0.3, 1.4, 2.6), 1):
        write_wav(folder / f"clip{k}.wav", mono[int(start * sr): int((start + 0.5) * sr)], sr)


def _write_jobs(path: Path, jobs: dict[int, dict]) -> Path:
    lines = [""] * max(jobs)
    for number, keys in jobs.items():
        lines[number - 1] = json.dumps(keys)
    path.write_text("\n".join(lines) + "\n")
    return path


def _job_flags(keys: dict) -> list[str]:
    """A job's overrides as ``generate`` flags."""
    flags = []
    for key, value in keys.items():
        if key in batch.JOB_KEYS:
            continue
        if value is True:
            flags.append(f"--{key.replace('_', '-')}")
        else:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _report(path: Path) -> dict[int, dict]:
    return {line["job"]: line for line in map(json.loads, path.read_text().splitlines())}


def _decoded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All video frames (T,H,W,3) uint8 and all audio samples of an mp4."""
    import av

    frames, audio = [], []
    with av.open(str(path)) as c:
        for frame in c.decode(*c.streams):
            if isinstance(frame, av.VideoFrame):
                frames.append(frame.to_ndarray(format="rgb24"))
            else:
                audio.append(frame.to_ndarray().reshape(-1))
    return np.stack(frames), np.concatenate(audio)


def _assert_same_videos(out_dir: Path, reference_dir: Path) -> None:
    for number in GOOD:
        name = JOBS[number]["out"]
        ours, ref = out_dir / name, reference_dir / f"job{number}.mp4"
        frames, audio = _decoded(ours)
        ref_frames, ref_audio = _decoded(ref)
        assert frames.shape[0] == 2, name
        assert np.array_equal(frames, ref_frames), f"job {number}: frames differ from generate's"
        assert np.array_equal(audio, ref_audio), f"job {number}: audio differs from generate's"
        assert ours.read_bytes() == ref.read_bytes(), f"job {number}: the mp4 bytes differ from generate's"


def _videos(folder: Path) -> set[str]:
    """The finished videos under ``folder`` (paths relative to it)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.mp4") if not p.name.startswith(".")}


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part.mp4")]


# ----------------------------------------------------------------------------------- quick: no models


def test_job_files_jsonl_and_csv_with_line_numbered_errors(tmp_path):
    (tmp_path / "in").mkdir()
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text("\n".join([
        '{"image": "in/a.jpg", "audio": "in/a.wav", "out": "a.mp4", "seed": "3", "no_paste_back": true}',
        "# a comment",
        '{"image": "in/b.jpg", "audio": "/abs/b.wav", "out": "b.mp4", "max_seconds": 1.5, "face_index": 1, '
        '"pose_video": "in/head.mp4"}',
        '{"image": "in/c.jpg", "audio": "c.wav", "out": "c.mp4", "sed": 1}',
        '{"image": "in/d.jpg", "audio": "d.wav", "out": "a.mp4"}',
        '{"image": "in/e.jpg", "audio": "e.wav", "out": "e.avi"}',
        '{"image": "in/f.jpg", "audio": "f.wav", "out": "f.mp4", "steps": 0}',
        '{"image": "in/g.jpg", "out": "g.mp4"}',
        '{"image": "in/h.jpg", "audio": "h.wav", "out": "h.mp4", "precision": "bf16"}',
        "not json",
        '{"image": "in/i.jpg", "audio": "i.wav", "out": "../i.mp4"}',
        '{"image": "in/j.jpg", "audio": "j.wav", "out": "j.mp4", "seed": 1.5}',
    ]) + "\n")
    defaults = GenerateOptions(steps=4)
    jobs = {j.number: j for j in batch.read_jobs(jsonl, defaults)}
    assert sorted(jobs) == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    a, b = jobs[1], jobs[3]
    assert a.error is None and a.image == tmp_path / "in" / "a.jpg" and a.audio == tmp_path / "in" / "a.wav"
    assert a.options == GenerateOptions(steps=4, seed=3, paste_back=False)
    assert b.error is None and b.audio == Path("/abs/b.wav")
    assert b.options == GenerateOptions(steps=4, duration_seconds=1.5, face_index=1,
                                        pose_video=str(tmp_path / "in" / "head.mp4"))
    expected = {4: "unknown key 'sed'", 5: "also the output of line 1", 6: ".mp4", 7: "steps must be",
                8: "missing audio", 9: "precision is a batch setting", 10: "not valid JSON",
                11: "inside the output folder", 12: "seed must be int"}
    for number, text in expected.items():
        assert jobs[number].error.startswith(f"jobs.jsonl:{number}: ") and text in jobs[number].error, jobs[number]

    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text("image,audio,out,seed,paste_back,duration_seconds\n"
                        "in/a.jpg,in/a.wav,a.mp4,5,false,\n"
                        "\n"
                        "in/b.jpg,in/b.wav,b.mp4,,yes,0.5\n"
                        "in/c.jpg,in/c.wav,c.mp4,x,,\n")
    jobs = {j.number: j for j in batch.read_jobs(csv_file)}
    assert jobs[2].options == GenerateOptions(seed=5, paste_back=False)
    assert jobs[4].options == GenerateOptions(duration_seconds=0.5) and jobs[4].out == "b.mp4"
    assert jobs[5].error.startswith("jobs.csv:5: seed must be int")

    (tmp_path / "bad.csv").write_text("photo,sound\nx,y\n")
    with pytest.raises(InputError, match="header must name image, audio, out"):
        batch.read_jobs(tmp_path / "bad.csv")


def test_batch_of_bad_inputs_reports_every_job_and_loads_no_model(tmp_path, capsys, sample_portrait, sample_speech):
    """Jobs that fail their checks are reported with one-line errors (exit 2) without any model:
    the models folder is empty, so loading one would end the batch with a model error instead."""
    _make_inputs(tmp_path / "inputs", sample_portrait, sample_speech)
    write_wav(tmp_path / "inputs" / "short.wav", np.zeros(100))
    jobs = _write_jobs(tmp_path / "jobs.jsonl", {
        1: JOBS[3],
        2: {"image": "inputs/astronaut.jpg", "audio": "inputs/short.wav", "out": "short.mp4"},
        3: {"image": "inputs/missing.png", "audio": "inputs/clip1.wav", "out": "m.mp4"},
        4: {"image": "inputs/astronaut.jpg", "audio": "inputs/clip1.wav", "out": "bad.mp4", "smoothing": -1},
    })
    out_dir = tmp_path / "out"
    rc = cli.main(["batch", str(jobs), "--out-dir", str(out_dir), "--models-dir", str(tmp_path / "no_models")])
    err = capsys.readouterr().err
    assert rc == 2, err
    report = _report(out_dir / "report.jsonl")
    assert sorted(report) == [1, 2, 3, 4] and all(r["status"] == "failed" for r in report.values())
    assert report[1]["error"].startswith("No face") and "no_face.png" in report[1]["error"]
    assert "audio" in report[2]["error"].lower()
    assert "missing.png" in report[3]["error"]
    assert report[4]["error"].startswith("jobs.jsonl:4: smoothing must be in")
    assert all("\n" not in r["error"] for r in report.values())
    assert [p.name for p in out_dir.iterdir()] == ["report.jsonl"]


def test_models_that_do_not_load_end_the_batch(tmp_path, capsys, sample_portrait, sample_speech):
    """Model files that are there but corrupt: the first job to run stops the batch with the
    loader's one-line error (exit 2) instead of failing every job the same way."""
    _make_inputs(tmp_path / "inputs", sample_portrait, sample_speech)
    models = tmp_path / "models"
    for name in ("kdtalker/KDTalker.pth", "kdtalker/wav2lip.pth", "liveportrait/base_models/motion_extractor.pth",
                 "liveportrait/base_models/appearance_feature_extractor.pth",
                 "liveportrait/base_models/warping_module.pth", "liveportrait/base_models/spade_generator.pth"):
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).write_bytes(b"an interrupted download")
    jobs = _write_jobs(tmp_path / "jobs.jsonl", {1: JOBS[1], 2: JOBS[4]})
    rc = cli.main(["batch", str(jobs), "--out-dir", str(tmp_path / "out"), "--models-dir", str(models), *FLAGS])
    err = capsys.readouterr().err
    assert rc == 2 and "error: " in err and "KDTalker.pth" in err, err
    assert (tmp_path / "out" / "report.jsonl").read_text() == "" and _leftovers(tmp_path / "out") == []


def test_ray_missing_says_how_to_install(tmp_path, monkeypatch, capsys):
    jobs = _write_jobs(tmp_path / "jobs.jsonl", {1: JOBS[1]})
    monkeypatch.setitem(sys.modules, "ray", None)  # what a Python without Ray sees
    rc = cli.main(["batch", str(jobs), "--out-dir", str(tmp_path / "out"), "--ray"])
    err = capsys.readouterr().err
    assert rc == 2 and 'pip install "comfyui-kdtalker[ray]"' in err and "pip install ray" in err


# ----------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module", autouse=True)
def fixed_kernels():
    """Kernels fixed by setting, not by timing: the CPU kernel choices a timed probe makes (bf16
    Winograd, NNPACK, the float32 packing library) can differ between the batch's processes and
    this one on a busy machine, and with them the last bits of the frames."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("KDTALKER_BF16_WINOGRAD", "0"), ("KDTALKER_BF16_WINOGRAD3D", "0"),
                            ("KDTALKER_NNPACK", "0"), ("KDTALKER_PACKED_FP32", "mkl")):
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="module", autouse=True)
def two_torch_threads():
    """Every video of this module is computed on 2 torch threads (the Ray test's cluster has 2 CPUs,
    and torch's results can differ in the last bit between thread counts)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def case(tmp_path_factory, official_models_dir, sample_portrait, sample_speech):
    """The 6-job batch folder, and the 5 good videos as ``kdtalker generate`` writes them alone."""
    root = tmp_path_factory.mktemp("batch")
    _make_inputs(root / "inputs", sample_portrait, sample_speech)
    jobs = _write_jobs(root / "jobs.jsonl", JOBS)
    references = root / "generate"
    for number in GOOD:
        keys = JOBS[number]
        rc = cli.main(["generate", "--models-dir", str(official_models_dir), "--image", str(root / keys["image"]),
                       "--audio", str(root / keys["audio"]), "--out", str(references / f"job{number}.mp4"),
                       *FLAGS, *_job_flags(keys)])
        assert rc == 0
    return {"root": root, "jobs": jobs, "references": references, "models": official_models_dir}


def _batch_cli(case: dict, out_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kdtalker_core", "batch", str(case["jobs"]), "--out-dir", str(out_dir),
            "--models-dir", str(case["models"]), *FLAGS, *extra]


def _start_and_signal(command: list[str], out_dir: Path, sig: int, after_done: int) -> tuple[int, str]:
    """Start a batch process; once ``after_done`` jobs are done and the next one is writing its
    video (a ``.part.mp4`` exists), send ``sig``. Returns the exit code and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    report = out_dir / "report.jsonl"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = report.is_file() and sum('"done"' in line for line in report.read_text().splitlines())
            if done >= after_done and _leftovers(out_dir):
                proc.send_signal(sig)
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.slow
def test_local_batch_interrupted_killed_resumed_matches_generate(case, tmp_path, capsys):
    """Ctrl-C mid-job stops cleanly (no partial file); SIGKILL mid-job loses only that job; the rerun
    does exactly what was left; the 5 videos are identical to generate's; a last run only skips."""
    out_dir = tmp_path / "out"
    rc, err = _start_and_signal(_batch_cli(case, out_dir), out_dir, signal.SIGINT, after_done=1)
    assert rc == 1, err
    assert "stopping after the current chunk" in err
    assert _leftovers(out_dir) == []  # the job in progress removed its temporary file
    first = _report(out_dir / "report.jsonl")
    done_first = {n for n, r in first.items() if r["status"] == "done"}
    assert len(done_first) >= 1 and _videos(out_dir) == {JOBS[n]["out"] for n in done_first}

    rc, err = _start_and_signal(_batch_cli(case, out_dir), out_dir, signal.SIGKILL, after_done=1)
    assert rc == -signal.SIGKILL
    second = _report(out_dir / "report.jsonl")
    assert {n for n, r in second.items() if r["status"] == "skipped"} == done_first
    done_second = {n for n, r in second.items() if r["status"] == "done"}
    assert done_second and not done_second & done_first
    finished = done_first | done_second
    assert _videos(out_dir) == {JOBS[n]["out"] for n in finished}  # the killed job left no video...
    assert len(_leftovers(out_dir)) == 1  # ...only its temporary file, which the next run removes

    seen: list[batch.JobReport] = []
    stages: list[tuple[int, str, int, int]] = []
    summary = batch.run(case["jobs"], out_dir, defaults=DEFAULTS, models_dir=case["models"],
                        model_options=ModelOptions(device="cpu"), on_job=seen.append,
                        on_stage=lambda *event: stages.append(event))
    assert summary.exit_code == 2 and not summary.interrupted
    third = _report(out_dir / "report.jsonl")
    assert [r.job for r in seen] == list(third)
    rendered = {n for n, stage, done, total in stages if stage == "render" and done == total == 2}
    assert rendered == {n for n, r in third.items() if r["status"] == "done"}  # frame progress
    assert {n for n, r in third.items() if r["status"] == "skipped"} == finished
    assert {n for n, r in third.items() if r["status"] == "done"} == set(GOOD) - finished
    assert third[3]["status"] == "failed" and third[3]["error"].startswith("No face") and third[3]["out"] == "none.mp4"
    for number in GOOD:
        if third[number]["status"] == "done":
            assert third[number]["frames"] == 2 and third[number]["seconds"] > 0
    assert _leftovers(out_dir) == []
    _assert_same_videos(out_dir, case["references"])

    # Everything done: the next run renders nothing and loads no model (this models folder is empty).
    rc = cli.main(["batch", str(case["jobs"]), "--out-dir", str(out_dir), "--models-dir", str(tmp_path / "none"),
                   *FLAGS])
    capsys.readouterr()
    assert rc == 2
    last = _report(out_dir / "report.jsonl")
    assert {n: r["status"] for n, r in last.items()} == {**{n: "skipped" for n in GOOD}, 3: "failed"}
    assert all(last[n]["frames"] == 2 for n in GOOD)


@pytest.mark.slow
def test_two_worker_processes(case, tmp_path, monkeypatch):
    """--workers 2: two spawned processes (one model copy each, 1 torch thread each on 2 cores, so
    the last bits may differ from generate's 2-thread videos) share the jobs; progress comes back."""
    root = case["root"]
    jobs = tmp_path / "jobs.jsonl"
    absolute = [{**JOBS[n], "image": str(root / JOBS[n]["image"]), "audio": str(root / JOBS[n]["audio"])}
                for n in (1, 2, 3)]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in absolute))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    stages: list[tuple[int, str, int, int]] = []
    summary = batch.run(jobs, tmp_path / "out", defaults=DEFAULTS, models_dir=case["models"],
                        model_options=ModelOptions(device="cpu"), workers=2, on_stage=lambda *e: stages.append(e))
    assert summary.exit_code == 2
    report = _report(tmp_path / "out" / "report.jsonl")
    assert {n: r["status"] for n, r in report.items()} == {1: "done", 2: "done", 3: "failed"}
    for number in (1, 2):
        frames, _ = _decoded(tmp_path / "out" / JOBS[number]["out"])
        ref_frames, _ = _decoded(case["references"] / f"job{number}.mp4")
        assert frames.shape == ref_frames.shape
        assert np.abs(frames.astype(int) - ref_frames).mean() < 1.0
    assert {n for n, stage, done, total in stages if stage == "render" and done == total == 2} == {1, 2}
    assert _leftovers(tmp_path / "out") == []


@pytest.mark.slow
@pytest.mark.ray
def test_ray_batch_matches_generate(case, tmp_path):
    """The same batch as Ray actors on a local cluster (videos back through the object store)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out_dir = tmp_path / "ray_out"
        summary = batch.run(case["jobs"], out_dir, defaults=DEFAULTS, models_dir=case["models"],
                            model_options=ModelOptions(device="cpu"), ray_address="")
        assert summary.exit_code == 2
        report = _report(out_dir / "report.jsonl")
        assert {n: r["status"] for n, r in report.items()} == {**{n: "done" for n in GOOD}, 3: "failed"}
        assert report[3]["error"].startswith("No face")
        _assert_same_videos(out_dir, case["references"])

        again = batch.run(case["jobs"], out_dir, defaults=DEFAULTS, models_dir=case["models"], ray_address="")
        assert [r.status for r in again.reports].count("skipped") == 5 and again.exit_code == 2
    finally:
        ray.shutdown()

#!/usr/bin/env python
"""Peak memory of the graph paths against clip length: streamed video vs IMAGE batch.

Each measurement runs in a fresh child process (peak RSS only grows within a process). The child
loads the models, prepares the portrait and motion, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), runs ONE stage and reports the stage's peak RSS above the process's
size before it (and ``torch.cuda.max_memory_allocated`` on a GPU). Stages:

* ``motion``  audio of N seconds -> features -> motion (Encode Audio + Sample Motion);
* ``stream``  N frames rendered and encoded chunk by chunk into an mp4 (what Render Video does:
  :func:`kdtalker_core.pipeline.iter_render` into :func:`kdtalker_core.video.write_mp4`);
* ``image``   N frames rendered into one IMAGE batch (what Render does: :func:`pipeline.render`).

``--paste-back`` runs the render stages on a square photo of ``--photo-size`` pixels (the sample
portrait upscaled), so the paste-back cost at that size is included; ``--no-paste-back`` renders the
512x512 crop. Memory of the streamed path must not grow with N (slope ~0 MB/frame); the IMAGE path
grows by one float32 frame (H*W*3*4 bytes) per frame, by design.

Usage::

    python -m bench.bench_memory --models-dir DIR --motion-seconds 10,60,600 \\
        --frames 20,200 --photo-size 2048 --json bench/results/memory_paths.json
    python -m bench.bench_memory --frames 4,12 --motion-seconds 10,60 --steps 2   # quick look

Without ``--models-dir``, full-size random weights in the official layout are written to a
temporary folder first (tests/model_files.py): memory does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPEECH = ROOT / "kdtalker_core" / "assets" / "sample_speech.wav"
PORTRAIT = ROOT / "kdtalker_core" / "assets" / "sample_portrait.jpg"


# ----------------------------------------------------------------------------------------- child


def _rss_kb(field: str) -> int:
    """VmRSS / VmHWM of this process in kB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _speech_seconds(seconds: float):
    """The sample speech looped to ``seconds`` (16 kHz mono float32 tensor)."""
    import torch

    from kdtalker_core import audio as audio_mod

    wav, sr = audio_mod.load_audio_file(SPEECH)
    mono = audio_mod.to_mono_16k(wav, sr)
    need = int(round(seconds * 16000))
    return mono.repeat(-(-need // mono.shape[0]))[:need].contiguous().to(torch.float32)


def run_child(case: dict) -> dict:
    """Run one stage in this (fresh) process and return its measurements."""
    import numpy as np
    import torch
    from PIL import Image

    from kdtalker_core import pipeline
    from kdtalker_core.motion import Motion
    from kdtalker_core.video import write_mp4

    torch.set_num_threads(case["threads"])
    models = pipeline.load_models(case["models_dir"], device=case["device"], precision=case["precision"])
    dev = models.device
    photo = Image.open(PORTRAIT).convert("RGB")
    if case["stage"] != "motion" and case["paste_back"]:
        photo = photo.resize((case["photo_size"], case["photo_size"]), Image.Resampling.BICUBIC)
    portrait = pipeline.prepare_portrait(models, np.asarray(photo))
    motion = None
    if case["stage"] != "motion":
        frames = case["n"]
        feats = pipeline.encode_audio(models, _speech_seconds(min(frames, 64) / 25.0 + 0.1), 16000)
        base = pipeline.sample_motion(models, portrait, feats, steps=2).data
        reps = -(-frames // base.shape[0])
        motion = Motion(base.repeat(reps, 1)[:frames].contiguous(), 25.0)  # the motion is not what we measure
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    before = _rss_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    out: dict = {}
    if case["stage"] == "motion":
        feats = pipeline.encode_audio(models, _speech_seconds(case["n"]), 16000)
        m = pipeline.sample_motion(models, portrait, feats, steps=case["steps"])
        out["frames"] = m.num_frames
    elif case["stage"] == "stream":
        with tempfile.TemporaryDirectory() as tmp:
            chunks = pipeline.iter_render(models, portrait, motion, chunk_size=case["chunk_size"],
                                          paste_back=case["paste_back"])
            wav = _speech_seconds(case["n"] / 25.0)
            out["frames"] = write_mp4(Path(tmp) / "clip.mp4", chunks, 25.0, wav, 16000)
    else:
        result = pipeline.render(models, portrait, motion, chunk_size=case["chunk_size"],
                                 paste_back=case["paste_back"])
        out["frames"] = int(result.frames.shape[0])
        out["frame_shape"] = list(result.frames.shape[1:])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        out["device_peak_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    out.update(seconds=round(time.perf_counter() - t0, 2), rss_before_mb=round(before / 1024, 1),
               peak_rss_mb=round(_rss_kb("VmHWM") / 1024, 1))
    out["stage_peak_above_before_mb"] = round(out["peak_rss_mb"] - out["rss_before_mb"], 1)
    return out


# ----------------------------------------------------------------------------------------- parent


def _cases(args) -> list[dict]:
    common = dict(models_dir=str(args.models_dir), device=args.device, precision=args.precision,
                  threads=args.threads, steps=args.steps, chunk_size=args.chunk_size,
                  photo_size=args.photo_size)
    cases = [dict(common, stage="motion", n=float(s), paste_back=False)
             for s in filter(None, args.motion_seconds.split(","))]
    for stage in filter(None, args.paths.split(",")):
        for paste in ([True, False] if args.paste_back == "both" else [args.paste_back == "on"]):
            cases += [dict(common, stage=stage, n=int(n), paste_back=paste)
                      for n in filter(None, args.frames.split(","))]
    return cases


def _slopes(rows: list[dict]) -> list[dict]:
    """MB per unit (second of audio or frame) between the shortest and longest run of each series."""
    out = []
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault((r["stage"], r["paste_back"]), []).append(r)
    for (stage, paste), rs in series.items():
        rs = sorted(rs, key=lambda r: r["n"])
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        slope = (hi["stage_peak_above_before_mb"] - lo["stage_peak_above_before_mb"]) / (hi["n"] - lo["n"])
        growth = hi["peak_rss_mb"] / lo["peak_rss_mb"] - 1.0
        out.append({"stage": stage, "paste_back": paste, "from": lo["n"], "to": hi["n"],
                    "mb_per_unit": round(slope, 3), "unit": "second" if stage == "motion" else "frame",
                    "peak_rss_growth": f"{100 * growth:+.1f}%"})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=None, help="kdtalker/ + liveportrait/ (default: random)")
    p.add_argument("--motion-seconds", default="10,60,600", help="audio lengths for the motion stage ('' skips)")
    p.add_argument("--frames", default="20,200", help="frame counts for the render stages")
    p.add_argument("--paths", default="stream,image", help="render stages to measure: stream, image")
    p.add_argument("--paste-back", choices=["on", "off", "both"], default="both")
    p.add_argument("--photo-size", type=int, default=2048, help="square photo size with paste-back (pixels)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of the motion stage")
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return

    tmp = None
    if args.models_dir is None:
        from tests.model_files import write_official_models

        tmp = tempfile.TemporaryDirectory(prefix="kdtalker_bench_models_")
        args.models_dir = write_official_models(Path(tmp.name))
    rows = []
    for case in _cases(args):
        res = subprocess.run([sys.executable, "-m", "bench.bench_memory", "--child", json.dumps(case)], cwd=ROOT,
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"child failed: {case}")
        row = {"stage": case["stage"], "n": case["n"], "paste_back": case["paste_back"],
               **json.loads(res.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    import torch

    report = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
                    "device": args.device, "precision": args.precision, "cpus": os.cpu_count()},
        "args": {k: str(v) for k, v in vars(args).items() if k != "child"},
        "rows": rows,
        "slopes": _slopes(rows),
    }
    for s in report["slopes"]:
        print(f"{s['stage']:>6} paste_back={s['paste_back']!s:5} {s['from']}->{s['to']} {s['unit']}s: "
              f"{s['mb_per_unit']:+.3f} MB/{s['unit']}, peak RSS {s['peak_rss_growth']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

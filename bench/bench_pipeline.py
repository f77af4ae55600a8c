#!/usr/bin/env python
"""Stage-by-stage timing of OUR pipeline, laid out like ../shared/reference/bench_official.py.

Usage (full-size random weights in a models folder, e.g. the reference checkpoints)::

    python -m bench.bench_pipeline --models-dir /tmp/kdref_ckpts --frames 50 --steps 50 \
        --threads 2 --render-frames 4 --json bench/results/ours_cpu_fp32.json
    python -m bench.bench_pipeline --models-dir DIR --memory-seconds 10,60,600 --steps 10

Stages: a crop (dlib + landmarks + official crop), b source prep (M keypoint info + F volume + x_s),
c mel (16 kHz mono, mel, windows), d audio encoder, e motion sampling (64-frame windows, DDIM),
f denormalise + Kalman, g render (warp + decode; ``--render-frames K`` renders K frames for real
and extrapolates to N, as the official bench does), p paste-back, v video encode (H.264), h total.
A warm-up pass (2 DDIM steps, 1 frame) precedes the timed run. ``render_flops`` (skip with
``--no-flops``) puts the render on a roofline: the FLOPs one frame executes here (FlopCounterMode),
the official networks' 1233.6 GFLOP a frame, and the rate of the decoder's dominant convolution
measured on this device (CPU or CUDA) as the practical peak. Runs on CUDA when one is present
(``--device auto``, the default), else on the CPU. ``--precision auto|fp32|bf16`` follows
kdtalker_core.precision; the rendering networks are prepared as the pipeline does
(render.prepare_networks); ``--compile`` torch.compiles them (compile time shows in the warm-up).
The last line prints ``s/frame render <precision> <seconds>`` and the end-to-end frames/s, e.g.::

    python -m bench.bench_pipeline --models-dir DIR --frames 32 --render-frames 4 --precision bf16

``--memory-seconds`` instead measures peak memory of the motion path (audio -> features -> motion)
and of streaming ``--render-frames`` frames, for each audio length: memory must not grow with the
audio beyond the motion itself (70 floats a frame).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from kdtalker_core import audio as audio_mod  # noqa: E402
from kdtalker_core import face, motion, pipeline, precision, render  # noqa: E402
from kdtalker_core.backends import nnpack  # noqa: E402
from kdtalker_core.keypoints import get_kp_info, transform_keypoint  # noqa: E402
from kdtalker_core.video import write_mp4  # noqa: E402

DEFAULT_AUDIO = ROOT / "kdtalker_core" / "assets" / "sample_speech.wav"
DEFAULT_IMAGE = ROOT / "kdtalker_core" / "assets" / "sample_portrait.jpg"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Accumulates wall-clock seconds per stage (synchronising CUDA around each stage)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stages: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                _sync(timer.device)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                _sync(timer.device)
                timer.stages[name] = timer.stages.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()


def _audio_frames(path: Path, frames: int, fps: float = 25.0) -> torch.Tensor:
    """Speech cut or looped to exactly ``frames`` video frames at 16 kHz (as the official bench does)."""
    wav, sr = audio_mod.load_audio_file(path)
    mono = audio_mod.to_mono_16k(wav, sr)
    need = int(frames * 16000 / fps)
    reps = -(-need // mono.shape[0])
    return mono.repeat(reps)[:need]


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_once(models, photo, wav16k, *, steps: int, render_frames: int, chunk: int, timer: Timer,
             compile_render: bool = False) -> dict:
    """One pass over every stage; returns counts (frames, rendered)."""
    dev = models.device
    with torch.inference_mode():
        with timer("a_crop"):
            crop = face.crop_portrait(photo)
        with timer("b_source_prep"):
            source = torch.from_numpy(crop.source).to(dev).permute(2, 0, 1)[None].float().div(255)
            kp_info = get_kp_info(models.motion_extractor, source)
            f_s = models.appearance_extractor(source)
            x_s = transform_keypoint(kp_info)
        with timer("c_mel"):
            windows, _ = audio_mod.audio_to_mel_windows(wav16k.to(dev), 16000)
        with timer("d_audio_encoder"):
            feats = models.audio_encoder.encode_in_chunks(windows)
        with timer("e_motion_sampling"):
            input_x, ori_kp = motion.normalize_source(kp_info, models.norm)
            gen = torch.Generator(device=dev).manual_seed(0)
            m_norm = motion.generate_motion_normalized(models.denoiser, input_x, ori_kp, feats, steps=steps,
                                                       generator=gen,
                                                       dtype=next(models.denoiser.parameters()).dtype)
        with timer("f_denorm_kalman"):
            mo = motion.smooth_motion(motion.denormalize(m_norm.float(), models.norm), 1.0)
        x_d = motion.driving_keypoints(mo, kp_info)[:render_frames]
        photo_t = torch.from_numpy(photo).to(dev).float().div(255)
        mask = face.make_paste_mask(crop, photo.shape[:2], device=dev)
        chunks = []
        it = render.render_frames(models.warping_network, models.spade_decoder, f_s, x_s, x_d,
                                  chunk_size=chunk, dtype=models.dtype, compile=compile_render)
        while True:
            with timer("g_render"):
                c = next(it, None)
            if c is None:
                break
            with timer("p_paste_back"):
                chunks.append(face.paste_back(c, photo_t, crop, mask))
    with tempfile.TemporaryDirectory() as tmp, timer("v_video_encode"):
        write_mp4(Path(tmp) / "b.mp4", chunks, 25.0, wav16k[: int(render_frames * 640)], 16000)
    return {"frames": int(feats.shape[0]), "rendered": int(x_d.shape[0])}


def bench_stages(args, models) -> dict:
    import imageio.v3 as iio

    photo = face.to_rgb_uint8(iio.imread(args.image))
    wav = _audio_frames(args.audio, args.frames)
    if args.warmup:
        t0 = time.perf_counter()
        run_once(models, photo, _audio_frames(args.audio, 32), steps=2, render_frames=1, chunk=args.chunk_size,
                 timer=Timer(models.device), compile_render=args.compile)
        warmup_s = time.perf_counter() - t0
    else:
        warmup_s = float("nan")
    timer = Timer(models.device)
    t0 = time.perf_counter()
    counts = run_once(models, photo, wav, steps=args.steps, render_frames=min(args.render_frames, args.frames),
                      chunk=args.chunk_size, timer=timer, compile_render=args.compile)
    total = time.perf_counter() - t0
    n, k = counts["frames"], counts["rendered"]
    st = timer.stages
    per_frame = {s: st[s] / k for s in ("g_render", "p_paste_back", "v_video_encode")}
    stages = {s: v for s, v in st.items() if s not in per_frame}
    for s, v in per_frame.items():
        stages[s] = v * n
    stages["h_total"] = total + sum(per_frame.values()) * (n - k)
    motion_stages = sum(stages[s] for s in ("c_mel", "d_audio_encoder", "e_motion_sampling", "f_denorm_kalman"))
    return {
        "stages_s": {s: round(v, 4) for s, v in stages.items()},
        "render_per_frame_s": round(per_frame["g_render"], 4),
        "motion_stages_s": round(motion_stages, 4),
        "fps_end_to_end": round(n / stages["h_total"], 4),
        "frames": n, "frames_rendered": k, "render_extrapolated": k < n,
        "peak_memory_mb": round(_peak_mb(models.device), 1),
        "warmup_s (includes compilation with --compile)": round(warmup_s, 2),
    }


#: Direct-convolution FLOPs of one official render call at full size (warping module 342.07 GFLOP +
#: SPADE generator 891.57 GFLOP), counted by ../shared/reference/flops_official.py (FlopCounterMode).
OFFICIAL_RENDER_GFLOP = 342.07 + 891.57


def _probe_rate(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of the decoder's dominant operation (3x3 conv 512->512 at 64x64, batch 1, in the
    networks' dtype and layout) on ``device``: the practical peak the render can approach here."""
    fmt = torch.channels_last if (device.type == "cuda" or dtype != torch.float32) else torch.contiguous_format
    x = torch.randn(1, 512, 64, 64, device=device, dtype=dtype).contiguous(memory_format=fmt)
    w = (0.01 * torch.randn(512, 512, 3, 3, device=device, dtype=dtype)).contiguous(memory_format=fmt)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(4):
            _sync(device)
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * 512 * 512 * 9 * 64 * 64 / best / 1e9


def render_flops(models, render_s: float) -> dict:
    """FLOPs one rendered frame executes here (FlopCounterMode over W + G with the direct
    convolution: NNPACK's Winograd calls are not counted by it, so they are switched off for the
    count) against the official network's FLOPs and this device's measured convolution rate."""
    from torch.utils.flop_counter import FlopCounterMode

    dev = models.device
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 32, 16, 64, 64, generator=gen).to(dev)
    kp_s = (0.3 * torch.randn(1, 21, 3, generator=gen)).to(dev)
    kp_d = kp_s + 0.02 * torch.randn(1, 21, 3, generator=gen).to(dev)
    counter = FlopCounterMode(display=False)
    with counter:
        list(render.render_frames(models.warping_network, models.spade_decoder, feature, kp_s, kp_d,
                                  dtype=models.dtype, winograd=False, frame_threads=1))  # counted on this thread
    executed = counter.get_total_flops() / 1e9
    probe = _probe_rate(dev, models.dtype)
    return {
        "official_gflop_per_frame": round(OFFICIAL_RENDER_GFLOP, 1),
        "executed_gflop_per_frame": round(executed, 1),
        "executed_gflop_per_s": round(executed / render_s, 1),
        "official_equivalent_gflop_per_s": round(OFFICIAL_RENDER_GFLOP / render_s, 1),
        "probe_conv_gflop_per_s": round(probe, 1),
        "fraction_of_probe_rate": round(executed / render_s / probe, 3),
    }


def bench_memory(args, models) -> list[dict]:
    """Peak memory of motion generation + streamed rendering for several audio lengths."""
    import imageio.v3 as iio

    photo = iio.imread(args.image)
    portrait = pipeline.prepare_portrait(models, photo)
    rows = []
    for seconds in [float(s) for s in args.memory_seconds.split(",")]:
        frames = int(seconds * 25)
        wav = _audio_frames(args.audio, frames)
        if models.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(models.device)
        t0 = time.perf_counter()
        feats = pipeline.encode_audio(models, wav, 16000)
        mo = pipeline.sample_motion(models, portrait, feats, steps=args.steps)
        t_motion = time.perf_counter() - t0
        rendered = 0
        for chunk in pipeline.iter_render(models, portrait, mo, chunk_size=args.chunk_size):
            rendered += chunk.shape[0]
            if rendered >= args.render_frames:
                break
        rows.append({"audio_s": seconds, "frames": mo.num_frames, "motion_s": round(t_motion, 2),
                     "motion_frames_per_s": round(mo.num_frames / t_motion, 1),
                     "streamed_frames": rendered, "peak_memory_mb": round(_peak_mb(models.device), 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True, type=Path)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render-frames", type=int, default=4)
    ap.add_argument("--chunk-size", type=int, default=4)
    ap.add_argument("--precision", default="fp32", help="auto, fp32, bf16, fp16 (kdtalker_core.precision)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the rendering networks")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--no-flops", dest="flops", action="store_false",
                    help="skip the FLOP count of one rendered frame and the convolution-rate probe")
    ap.add_argument("--memory-seconds", default=None, help="e.g. 10,60,600: memory vs audio length instead")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    models = pipeline.load_models(args.models_dir, device=args.device, precision=args.precision)
    # Rendering networks cast once (bf16 weights, channels-last where it pays); a no-op when
    # load_models already did it.
    render.prepare_networks(models.warping_network, models.spade_decoder, models.dtype, models.device)
    load_s = time.perf_counter() - t0
    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
               "device": str(models.device), "precision": models.precision,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": precision.cpu_summary(),
               "nnpack_works": nnpack.works(), "compile": args.compile}
    if models.device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(models.device)
    result = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}, "model_load_s": round(load_s, 2)}
    if args.memory_seconds:
        result["memory_vs_audio_length"] = bench_memory(args, models)
    else:
        result.update(bench_stages(args, models))
        if args.flops:
            result["render_flops"] = render_flops(models, result["render_per_frame_s"])
    print(json.dumps(result, indent=1))
    if "render_per_frame_s" in result:
        tag = models.precision + ("+compile" if args.compile else "")
        print(f"s/frame render {tag} {result['render_per_frame_s']:.3f}"
              f"  end-to-end frames/s {result['fps_end_to_end']:.4f}  ({precision.cpu_summary()})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()

"""Benchmark chunked rendering (warp W + SPADE decode G) at full size, 512 px output.

Full-size networks with random weights (realistic BatchNorm statistics, spectral-norm vectors by
power iteration), one random 256-px appearance volume (1,32,16,64,64) and random driving keypoints.
For each precision the networks are made ready exactly as the pipeline does
(:func:`kdtalker_core.render.prepare_networks`: weights cast once, channels-last where it pays),
then ``--frames`` frames are rendered ``--repeats`` times. It reports seconds per frame for warp
and decode separately (forward hooks), min and median total s/frame over the repeats, frames/s,
the speed-up over the official fp32 render, peak RSS and the PSNR of each setting's frames against
the fp32 frames of the same keypoints.

    .venv/bin/python -m bench.bench_render                          # fp32 and auto, 2 frames x 3
    .venv/bin/python -m bench.bench_render --frames 4 --precision bf16 --repeats 1
    .venv/bin/python -m bench.bench_render --precisions fp32,bf16 --compile   # + torch.compile rows
    .venv/bin/python -m bench.bench_render --device cuda --frames 64 --chunks 8,16,32

``--precision X`` (or ``--precisions a,b``) takes auto / fp32 / bf16 / fp16; ``auto`` resolves by
:mod:`kdtalker_core.precision`; ``bf16-autocast`` times the old path (float32 NCHW weights under
autocast). ``--channels-last off`` keeps fp32 in the official NCHW layout. fp32 on CPU uses
NNPACK Winograd only where its probe wins (``--winograd on|off|auto``). Reduced precision on a
CPU without native bf16 instructions (AVX512-BF16 / AMX) runs PyTorch's slow reference kernels
(minutes per frame); such settings are skipped unless ``--force``. The last line is
``s/frame <precision> <min>`` for scripts.
Reference (official code, fp32, full size, a 2-core AVX2 EPYC): 8.07 s/frame (warp 2.29 + SPADE 5.79).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from kdtalker_core.backends import nnpack  # noqa: E402
from kdtalker_core.networks.spade import SPADEDecoder  # noqa: E402
from kdtalker_core.networks.warping import WarpingNetwork  # noqa: E402
from kdtalker_core.precision import PRECISIONS, cpu_summary, native_bf16, resolve_precision  # noqa: E402
from kdtalker_core.render import compile_networks, prepare_networks, render_frames  # noqa: E402

#: The official render per frame measured by ../shared/reference on an AVX2-only EPYC; pass
#: ``--official-s-per-frame`` with this machine's own number (bench_official.py) for a fair ratio.
OFFICIAL_CPU_S_PER_FRAME = {"warp": 2.29, "decode": 5.79, "total": 8.07}


def machine_line(device: torch.device) -> str:
    """CPU model and flags, torch's CPU capability, threads, NNPACK, load average (and the GPU)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    line = (f"cpu {cpu_summary()} x{os.cpu_count()}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"native bf16 {native_bf16('cpu')}, NNPACK works {nnpack.works()}, load avg {load[0]:.1f}")
    if device.type == "cuda":
        line += f"; gpu {torch.cuda.get_device_name(device)}"
    return line


def _rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _randomize_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


class _Timer:
    """Accumulates wall time of a module's forward calls (synchronising CUDA around them)."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.seconds = 0.0
        self.device = device
        self._start = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pre(self, *_: object) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_: object) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of frames in [0,1]."""
    mse = float(F.mse_loss(a.double(), b.double()))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def build_networks(seed: int) -> tuple[WarpingNetwork, SPADEDecoder]:
    """Full-size W and G with reproducible random weights, float32, eval mode, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    warp = WarpingNetwork()
    decoder = SPADEDecoder()
    _randomize_batchnorm(warp, gen)
    return warp.eval(), decoder.eval().fuse_spectral_norm()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2, help="frames rendered per repeat (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per setting (default 3)")
    ap.add_argument("--chunks", default="1", help="comma-separated chunk sizes (default 1)")
    ap.add_argument("--precision", default=None, help="one precision: auto, fp32, bf16, fp16")
    ap.add_argument("--precisions", default="fp32,auto", help="comma-separated precisions (default fp32,auto)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--force", action="store_true", help="run reduced precision even on slow CPUs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--official-s-per-frame", type=float, default=OFFICIAL_CPU_S_PER_FRAME["total"],
                    help="the official render's seconds per frame on THIS machine (bench_official.py "
                         "render_per_frame_s); the default 8.07 was measured on an AVX2-only EPYC")
    ap.add_argument("--winograd", choices=("auto", "on", "off"), default="auto",
                    help="fp32 decoder 3x3 convs through NNPACK (auto: the measured probe)")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                    help="activation layout (auto: render.default_channels_last)")
    ap.add_argument("--batched", action="store_true",
                    help="run each chunk as one batch (render's CPU default runs frames one by one)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    feature = torch.randn(1, 32, 16, 64, 64, generator=gen).to(device)
    kp_source = (0.6 * torch.rand(1, 21, 3, generator=gen) - 0.3).to(device)
    kp_all = (kp_source.cpu() + 0.03 * torch.randn(args.frames, 21, 3, generator=gen)).to(device)
    winograd = {"auto": None, "on": True, "off": False}[args.winograd]

    print(machine_line(device), flush=True)
    print(f"{'setting':14} {'chunk':>5} {'warp s/f':>9} {'decode s/f':>10} {'min s/f':>8} {'median':>8} "
          f"{'frames/s':>8} {'vs official':>11} {'peak RSS MB':>11} {'PSNR vs fp32':>12}", flush=True)
    names = [args.precision] if args.precision else args.precisions.split(",")
    settings = [(n, False) for n in names] + ([(n, True) for n in names] if args.compile else [])
    reference: torch.Tensor | None = None
    last = ""
    channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]
    for name, compiled in settings:
        legacy = name == "bf16-autocast"  # the old path: float32 weights, NCHW, autocast per call
        chosen = "bf16" if legacy else resolve_precision(name, device)
        dtype = PRECISIONS[chosen]
        if dtype != torch.float32 and device.type == "cpu" and not native_bf16(device) and not args.force:
            print(f"{name:14} skipped: this CPU has no native bf16/fp16 matrix instructions "
                  "(PyTorch falls back to slow reference kernels); use --force to run anyway")
            continue
        warp, decoder = build_networks(args.seed)
        if legacy:
            warp, decoder = warp.to(device), decoder.to(device)
        else:
            prepare_networks(warp, decoder, dtype, device, channels_last=channels_last)
        run_dtype = dtype if legacy else None
        label = f"{name}" + (f"={chosen}" if name == "auto" else "") + ("+compile" if compiled else "")
        if compiled:
            t0 = time.perf_counter()
            warp_run, decoder_run = compile_networks(warp, decoder)
        else:
            warp_run, decoder_run = warp, decoder
        warp_timer = _Timer(warp, device)
        dec_timer = _Timer(decoder, device)
        # Warm-up (kernel selection, allocator; compilation when asked) on one frame, not timed.
        t_warm = time.perf_counter()
        for _ in render_frames(warp_run, decoder_run, feature, kp_source, kp_all[:1], chunk_size=1,
                               winograd=winograd, dtype=run_dtype):
            pass
        if compiled:
            print(f"{label:14} compile + first frame {time.perf_counter() - t0:.1f} s", flush=True)
        del t_warm
        for chunk in [int(c) for c in args.chunks.split(",")]:
            totals, out = [], None
            warp_timer.seconds = dec_timer.seconds = 0.0
            _rss_reset()
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                micro = chunk if args.batched else None
                frames = [f.cpu() for f in render_frames(warp_run, decoder_run, feature, kp_source, kp_all,
                                                         chunk_size=chunk, micro_batch=micro, winograd=winograd,
                                                         dtype=run_dtype)]
                totals.append((time.perf_counter() - t0) / args.frames)
                out = torch.cat(frames)
            assert out is not None
            n = args.frames * args.repeats
            if chosen == "fp32" and not compiled and reference is None:
                reference = out
            quality = f"{psnr(out, reference):.1f} dB" if reference is not None else "-"
            best, median = min(totals), statistics.median(totals)
            warp_s, dec_s = warp_timer.seconds / n, dec_timer.seconds / n
            if compiled:  # hooks on the original modules do not fire inside compiled graphs
                warp_s = dec_s = float("nan")
            print(f"{label:14} {chunk:5d} {warp_s:9.3f} {dec_s:10.3f} {best:8.3f} {median:8.3f} {1 / best:8.3f} "
                  f"{args.official_s_per_frame / best:10.2f}x {_peak_rss_mb():11.0f} {quality:>12}",
                  flush=True)
            last = f"s/frame {label} {best:.3f}"
    if last:
        print(last)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark chunked rendering (warp W + SPADE decode G) at full size, 512 px output.

Full-size networks with random weights (realistic BatchNorm statistics, spectral-norm vectors by
power iteration), one random 256-px appearance volume (1,32,16,64,64) and random driving keypoints.
For each precision and chunk size it reports seconds per frame for warp and decode separately
(timed by forward hooks around the two networks inside ``render_frames``), frames per second, the
peak resident memory of that setting, and the PSNR of reduced-precision frames against the float32
frames of the same keypoints.

    .venv/bin/python bench/bench_render.py                 # 4 frames per setting, chunks 1,2,4
    .venv/bin/python bench/bench_render.py --frames 2 --chunks 2 --dtypes fp32
    .venv/bin/python bench/bench_render.py --device cuda --frames 64 --chunks 8,16,32

float32 on CPU uses render_frames' default NNPACK Winograd path for the decoder's 3x3
convolutions (``--no-winograd`` measures oneDNN's direct convolutions instead).
Reduced precision on a CPU without native bf16 instructions (AVX512-BF16 / AMX) runs PyTorch's
slow reference kernels (minutes per frame); such settings are skipped unless ``--force``.
Reference (official code, fp32, full size, the project's 2-core CPU): 8.07 s/frame
(warp 2.29 + SPADE 5.79).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtalker_core.networks.spade import SPADEDecoder  # noqa: E402
from kdtalker_core.networks.warping import WarpingNetwork  # noqa: E402
from kdtalker_core.render import cpu_has_fast_bf16, render_frames  # noqa: E402

OFFICIAL_CPU_S_PER_FRAME = {"warp": 2.29, "decode": 5.79, "total": 8.07}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(F.mse_loss(a.double(), b.double()))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=4, help="frames rendered per setting (default 4)")
    ap.add_argument("--chunks", default="1,2,4", help="comma-separated chunk sizes (default 1,2,4)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16,fp16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--force", action="store_true", help="run reduced precision even on slow CPUs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-winograd", action="store_true", help="decoder 3x3 convs without NNPACK")
    ap.add_argument("--batched", action="store_true",
                    help="run each chunk as one batch (render's CPU default runs frames one by one)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    warp = WarpingNetwork()
    decoder = SPADEDecoder()
    _randomize_batchnorm(warp, gen)
    warp = warp.eval().to(device)
    decoder = decoder.eval().to(device).fuse_spectral_norm()
    feature = torch.randn(1, 32, 16, 64, 64, generator=gen).to(device)
    kp_source = (0.6 * torch.rand(1, 21, 3, generator=gen) - 0.3).to(device)
    kp_all = (kp_source.cpu() + 0.03 * torch.randn(args.frames, 21, 3, generator=gen)).to(device)
    warp_timer = _Timer(warp, device)
    dec_timer = _Timer(decoder, device)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_has_fast_bf16()}, "
          f"load avg {load[0]:.1f}")
    print(f"{'dtype':5} {'chunk':>5} {'warp s/f':>9} {'decode s/f':>10} {'total s/f':>9} {'frames/s':>8} "
          f"{'vs official':>11} {'peak RSS MB':>11} {'PSNR vs fp32':>12}")
    reference: torch.Tensor | None = None
    chunks = [int(c) for c in args.chunks.split(",")]
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        if dtype != torch.float32 and device.type == "cpu" and not cpu_has_fast_bf16() and not args.force:
            print(f"{name:5} skipped: this CPU has no native bf16/fp16 matrix instructions "
                  "(PyTorch falls back to slow reference kernels); use --force to run anyway")
            continue
        # Warm-up (kernel selection, allocator) on one frame, not timed.
        opts = {"dtype": dtype, "winograd": False if args.no_winograd else None}
        for _ in render_frames(warp, decoder, feature, kp_source, kp_all[:1], chunk_size=1, **opts):
            pass
        for chunk in chunks:
            warp_timer.seconds = dec_timer.seconds = 0.0
            _rss_reset()
            t0 = time.perf_counter()
            micro = chunk if args.batched else None
            frames = [f.cpu() for f in render_frames(warp, decoder, feature, kp_source, kp_all,
                                                     chunk_size=chunk, micro_batch=micro, **opts)]
            total = time.perf_counter() - t0
            out = torch.cat(frames)
            n = out.shape[0]
            if dtype == torch.float32 and reference is None:
                reference = out
            psnr = f"{_psnr(out, reference):.1f} dB" if reference is not None else "-"
            per = total / n
            print(f"{name:5} {chunk:5d} {warp_timer.seconds / n:9.3f} {dec_timer.seconds / n:10.3f} "
                  f"{per:9.3f} {1 / per:8.3f} {OFFICIAL_CPU_S_PER_FRAME['total'] / per:10.2f}x "
                  f"{_peak_rss_mb():11.0f} {psnr:>12}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the KDTalker motion denoiser and one DDIM window on this machine (full size, random weights).

Measures, for float32 and bfloat16 weights:

* ``forward``: one ``MotionDenoiser.forward`` over 66 tokens (2 conditioning + 64 frames), the
  structure the official code runs at every step;
* ``reference forward``: the same with the plain modules (``MotionDenoiser.reference_forward``);
* ``eps step``: one step of ``window_eps_fn`` (context, rotary and bias tables cached), also with
  weight packing switched off (``backends.mkl_linear.force_fallback``) where it packs, and on CUDA
  without the CUDA graph (``KDTALKER_CUDA_GRAPH=0``; the default replays the captured step);
* ``window S steps``: one 64-frame window, ``window_eps_fn`` + ``sample_ddim`` with S DDIM steps;
* ``window 50 (uncached)``: 50 steps that call ``forward`` on the full token set every step.

With ``--official-src /tmp/kdtalker_src`` (and the official code's ``einops_exts`` and
``rotary-embedding-torch`` importable, e.g. via ``--extra-path``) the official SimpleTransModel is
timed on the same weights too. Times are the minimum over ``--repeats`` runs (the median is shown
as well; on a shared machine the minimum is the stable number).

Usage::

    python -m bench.bench_denoiser [--threads N] [--repeats R] [--dtypes float32,bfloat16] [--device cuda]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from kdtalker_core.backends import mkl_linear  # noqa: E402
from kdtalker_core.networks.denoiser import MotionDenoiser  # noqa: E402
from kdtalker_core.pipeline import resolve_device  # noqa: E402
from kdtalker_core.sampling import ddim_timesteps, linear_alphas_cumprod, sample_ddim  # noqa: E402

FRAMES = 64
FORWARD_GFLOP_NOTE = "official forward at 66 tokens is about 5.7 GFLOP; a cached eps step about 3.8"


def random_full_size(seed: int = 0) -> MotionDenoiser:
    """Full-size denoiser with fixture-like random weights (Linear N(0, 0.02), jittered norms)."""
    torch.manual_seed(seed)
    model = MotionDenoiser().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("freqs"):
                continue
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("beta"):
                p.normal_(0, 0.1)
            elif "relative_attention_bias" in name:
                p.normal_(0, 0.5)
            else:
                p.normal_(0, 0.02)
    return model


def _sync() -> None:
    """Wait for queued CUDA work (no-op without CUDA), so that wall times cover the kernels."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(min, median) wall seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def load_official(src: Path, extra_path: str | None) -> type | None:
    """The official SimpleTransModel class, or None when its dependencies are missing."""
    if extra_path:
        sys.path.insert(0, extra_path)
    folder = src / "model" / "temporaltrans"
    if not folder.is_dir():
        return None
    pkg = types.ModuleType("official_temporaltrans")
    pkg.__path__ = [str(folder)]
    sys.modules[pkg.__name__] = pkg
    try:
        for name in ("transformer_utils", "temptrans"):
            spec = importlib.util.spec_from_file_location(f"{pkg.__name__}.{name}", folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
    except ImportError as exc:
        print(f"(official model not timed: {exc})")
        return None
    return sys.modules[f"{pkg.__name__}.temptrans"].SimpleTransModel


def bench_dtype(
    model: MotionDenoiser,
    dtype_name: str,
    inputs: tuple[torch.Tensor, ...],
    repeats: int,
    uncached: bool,
    windows: dict[str, torch.Tensor],
) -> list[tuple[str, str, float, float]]:
    """Time forward, one cached step and whole windows for one weight dtype; store the window x0s."""
    ori, ref, aud, noise, tokens, context, t500, alphas = inputs
    rows = [("forward (66 tok)", dtype_name, *timed(lambda: model(tokens, t500, context), repeats))]
    rows.append(("reference forward (66 tok)", dtype_name,
                 *timed(lambda: model.reference_forward(tokens, t500, context), repeats)))
    eps_fn = model.window_eps_fn(ori, ref, aud)
    rows.append(("eps step (cached, 66 tok)", dtype_name, *timed(lambda: eps_fn(noise, t500), repeats)))
    if mkl_linear.packs(model.body.input_projection.weight.dtype):
        with mkl_linear.force_fallback():
            plain_eps = model.window_eps_fn(ori, ref, aud)
            rows.append(("eps step (no packing)", dtype_name,
                         *timed(lambda: plain_eps(noise, t500), repeats)))
    if noise.device.type == "cuda":
        eager_eps = model.window_eps_fn(ori, ref, aud, cuda_graph=False)
        rows.append(("eps step (no CUDA graph)", dtype_name, *timed(lambda: eager_eps(noise, t500), repeats)))
    for steps in (50, 10):
        schedule = ddim_timesteps(steps)

        def window(schedule: torch.Tensor = schedule) -> torch.Tensor:
            return sample_ddim(model.window_eps_fn(ori, ref, aud, schedule), noise, alphas, schedule)

        windows[f"{dtype_name}/{steps}"] = window()
        rows.append((f"window {steps} steps", dtype_name, *timed(window, max(1, repeats - 1), warmup=0)))
    if uncached:
        def full_forward_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(torch.cat([tokens[:, :2], x], 1), t, context)[:, 2:]

        rows.append(("window 50 (uncached forward)", dtype_name,
                     *timed(lambda: sample_ddim(full_forward_eps, noise, alphas, ddim_timesteps(50)),
                            1, warmup=0)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--official-src", type=Path, default=None)
    parser.add_argument("--extra-path", default=None, help="sys.path entry for the official deps")
    parser.add_argument("--skip-uncached", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA when present)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    where = (torch.cuda.get_device_name(device) + f", CUDA graph {os.environ.get('KDTALKER_CUDA_GRAPH', 'on')}"
             if device.type == "cuda" else f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {where}; {FORWARD_GFLOP_NOTE}")
    base = random_full_size()
    gen = torch.Generator().manual_seed(1)
    ori, ref = torch.randn(1, 70, generator=gen), torch.randn(1, 70, generator=gen)
    aud = torch.randn(1, FRAMES, 512, generator=gen)
    noise = torch.randn(1, FRAMES, 70, generator=gen)
    tokens = torch.cat([ori[:, None], ref[:, None], noise], dim=1)
    context = torch.cat([torch.zeros(1, 2, 512), aud], dim=1)
    t500 = torch.tensor([500])
    alphas = linear_alphas_cumprod()
    rows: list[tuple[str, str, float, float]] = []
    windows: dict[str, torch.Tensor] = {}

    official_cls = load_official(args.official_src, args.extra_path) if args.official_src else None
    if official_cls is not None:
        official = official_cls(embed_dim=64, num_classes=70, extra_feature_channels=67).eval()
        official.load_state_dict({k.removeprefix("point_model.model."): v
                                  for k, v in base.state_dict().items()})
        with torch.no_grad():
            rows.append(("official forward (66 tok)", "float32",
                         *timed(lambda: official(tokens, t500, context), args.repeats)))

            def official_window() -> None:
                sample_ddim(lambda x, t: official(torch.cat([tokens[:, :2], x], 1), t, context)[:, 2:],
                            noise, alphas, ddim_timesteps(50))

            rows.append(("official window 50 steps", "float32", *timed(official_window, 1, warmup=0)))

    inputs = tuple(t.to(device) for t in (ori, ref, aud, noise, tokens, context, t500, alphas))
    for dtype_name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        model = random_full_size().to(device, getattr(torch, dtype_name))
        rows += bench_dtype(model, dtype_name, inputs, args.repeats, not args.skip_uncached, windows)

    print(f"\n{'what':34s} {'dtype':9s} {'min':>10s} {'median':>10s}")
    for what, dt, best, med in rows:
        print(f"{what:34s} {dt:9s} {best * 1e3:9.1f}ms {med * 1e3:9.1f}ms")
    if "float32/50" in windows and "bfloat16/50" in windows:
        a, b = windows["float32/50"], windows["bfloat16/50"]
        print(f"\nbf16 vs fp32 window x0: max |diff| {float((a - b).abs().max()):.3e}, "
              f"fp32 x0 std {float(a.std()):.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

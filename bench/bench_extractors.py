"""Time one forward of the full-size LivePortrait motion extractor M on a (B,3,256,256) image.

Usage::

    .venv/bin/python -m bench.bench_extractors [--dtypes float32 bfloat16] [--repeats 5]
        [--threads N] [--device cpu] [--official-src /tmp/kdtalker_src]

Weights are random (full size: ConvNeXtV2-tiny, 28.1 M parameters); the time does not depend on
their values. Reports the best and median wall time of ``--repeats`` forwards after one warm-up.
With ``--official-src`` (a folder holding KDTalker's ``src/modules``) the official module is timed
on the same weights and input, and the largest output difference is printed.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kdtalker_core.networks.motion_extractor import MotionExtractor  # noqa: E402


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """(best, median) seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def _official_model(src: Path) -> torch.nn.Module:
    """KDTalker's own MotionExtractor from a source checkout (timing comparison only)."""
    sys.path.insert(0, str(src))
    module = importlib.import_module("src.modules.motion_extractor")
    return module.MotionExtractor(num_kp=21, backbone="convnextv2_tiny")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--official-src", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    ours = MotionExtractor().eval()
    models: dict[str, torch.nn.Module] = {"ours": ours}
    if args.official_src is not None:
        official = _official_model(args.official_src).eval()
        official.load_state_dict(ours.state_dict(), strict=True)
        models["official"] = official
    image = torch.rand(args.batch, 3, args.size, args.size)

    n_params = sum(p.numel() for p in ours.parameters())
    print(f"motion extractor: {n_params / 1e6:.1f} M params, input {tuple(image.shape)}, device {device}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        x = image.to(device=device, dtype=dtype)
        outputs = {}
        for name, model in models.items():
            model.to(device=device, dtype=dtype)
            with torch.inference_mode():
                best, median = _time(lambda m=model, x=x: m(x), args.repeats, device)
                outputs[name] = model(x)
            print(f"  {dtype_name:9s} {name:9s} best {best * 1e3:9.1f} ms  median {median * 1e3:9.1f} ms")
        if "official" in outputs:
            diff = max(float((outputs["ours"][k].float() - outputs["official"][k].float()).abs().max())
                       for k in outputs["ours"])
            print(f"  {dtype_name:9s} max |ours - official| over all heads: {diff:.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

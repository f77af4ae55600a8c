"""Benchmark Kalman smoothing of a long motion: ``kalman_smooth`` on (T, 69) float32.

Default: 15000 frames x 69 dims (10 minutes at 25 fps, every smoothed motion column). When the
reference environment ``/tmp/kdref-venv`` (with pykalman) exists, the official pykalman call is
timed in a subprocess (single-threaded BLAS) on the first ``--pykalman-frames`` frames of the same
data, and the results are compared; pykalman is never imported here and is not a dependency.

    python -m bench.bench_smoothing [--frames 15000] [--dims 69] [--repeats 5] [--threads 1]
                                    [--pykalman-frames 1000] [--pykalman-python PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdtalker_core.smoothing import kalman_smooth  # noqa: E402

DEFAULT_REF_PYTHON = Path("/tmp/kdref-venv/bin/python")

# Runs inside the reference venv: the official settings of inference.py's smooth(), one call per
# column group exactly as the official code does (pitch, yaw, roll: 1-D; t: 3-D; exp: 63-D) when
# there are 69 columns, else one call over all columns.
_PYKALMAN_SCRIPT = r"""
import sys, time
import numpy as np
from pykalman import KalmanFilter

seq = np.load(sys.argv[1])
groups = [(0, 1), (1, 2), (2, 3), (3, 6), (6, 69)] if seq.shape[1] == 69 else [(0, seq.shape[1])]
out = np.empty(seq.shape, dtype=np.float64)
start = time.perf_counter()
for a, b in groups:
    part = seq[:, a:b]
    n = b - a
    kf = KalmanFilter(initial_state_mean=part[0], transition_covariance=0.05 * np.eye(n),
                      observation_covariance=0.001 * np.eye(n))
    out[:, a:b] = kf.smooth(part)[0]
print(time.perf_counter() - start)
np.save(sys.argv[2], out.astype(np.float32))
"""


def make_motion_like(frames: int, dims: int, seed: int = 0) -> torch.Tensor:
    """Random-walk curves plus jitter, (frames, dims) float32: the shape of sampled motion."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((frames, dims)) * 0.1, axis=0)
    return torch.from_numpy((walk + rng.standard_normal((frames, dims)) * 0.05).astype(np.float32))


def time_ours(seq: torch.Tensor, repeats: int) -> tuple[list[float], torch.Tensor]:
    """Wall-clock seconds of each of ``repeats`` calls (after one warm-up) and the result."""
    out = kalman_smooth(seq)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = kalman_smooth(seq)
        times.append(time.perf_counter() - start)
    return times, out


def time_pykalman(python: Path, seq: torch.Tensor) -> tuple[float, np.ndarray]:
    """Run the official pykalman smoothing in ``python``'s environment; (seconds, result)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(src, seq.numpy())
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run([str(python), "-c", _PYKALMAN_SCRIPT, str(src), str(dst)],
                              capture_output=True, text=True, check=True, env=env)
        return float(proc.stdout.strip().splitlines()[-1]), np.load(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=15000)
    parser.add_argument("--dims", type=int, default=69)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    parser.add_argument("--pykalman-frames", type=int, default=1000,
                        help="frames for the pykalman run (it costs ~0.1 s per frame at 69 dims)")
    parser.add_argument("--pykalman-python", type=Path, default=DEFAULT_REF_PYTHON)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    seq = make_motion_like(args.frames, args.dims)
    times, ours = time_ours(seq, args.repeats)
    med = statistics.median(times)
    print(f"kalman_smooth  {args.frames} x {args.dims}: median {med * 1e3:.1f} ms "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}; {args.repeats} runs, "
          f"{torch.get_num_threads()} threads) = {args.frames / med:,.0f} frames/s")

    if not args.pykalman_python.exists():
        print(f"pykalman: skipped ({args.pykalman_python} not found)")
        return 0
    ref_frames = min(args.pykalman_frames, args.frames)
    ref_seq = seq[:ref_frames]
    try:
        ref_time, ref_out = time_pykalman(args.pykalman_python, ref_seq)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"pykalman: failed to run ({exc})")
        return 0
    ours_ref = ours[:ref_frames] if ref_frames == args.frames else kalman_smooth(ref_seq)
    err = float(np.abs(ours_ref.numpy() - ref_out).max())
    ours_time = statistics.median(time_ours(ref_seq, max(1, args.repeats // 2))[0])
    print(f"pykalman       {ref_frames} x {args.dims}: {ref_time * 1e3:.1f} ms "
          f"(official per-group calls); ours on the same data {ours_time * 1e3:.1f} ms "
          f"-> {ref_time / ours_time:.0f}x faster; max |ours - pykalman| = {err:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Wall-clock timing for the short probes that choose a CPU kernel per machine."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(fn: Callable[[], object], repeats: int = 3, calls: int = 1) -> float:
    """Fastest of ``repeats`` timings (seconds) of ``calls`` back-to-back calls of ``fn``, after one
    untimed warm-up call (kernel selection, allocation). The minimum is the stable figure on a
    shared machine."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best

"""Wall-clock timing for the short probes that choose a CPU kernel per machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def best_seconds(fn: Callable[[], object], repeats: int = 3, calls: int = 1) -> float:
    """Fastest of ``repeats`` timings (seconds) of ``calls`` back-to-back calls of ``fn``, after one
    untimed warm-up call (kernel selection, allocation). The minimum is the stable figure on a
    shared machine."""
    return best_seconds_interleaved([fn], repeats, calls)[0]


def best_seconds_interleaved(fns: Sequence[Callable[[], object]], repeats: int = 3,
                             calls: int = 1) -> list[float]:
    """:func:`best_seconds` of each of ``fns``, their timings taken in turn (a, b, a, b, ...) after
    one untimed warm-up call of each, so that a slow spell of a shared machine falls on all of
    them rather than on one. Seconds per ``calls`` calls, in the order of ``fns``."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best

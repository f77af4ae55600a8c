"""Render several frames at once on a multi-core CPU, one frame per thread.

A frame's convolutions parallelise well over cores, but much of a frame does not: small maps,
elementwise passes below PyTorch's parallel grain, per-batch-item kernels, the Python between
operations. On a 2-core Zen 5 EPYC VM (bf16) one frame took 2.15 s on one thread and 1.27 s on
two (1.69x). Rendering two frames side by side, each on its own thread with one intra-op
thread, keeps both cores busy all the time instead (see :func:`frame_threads`).

The workers are plain Python threads: PyTorch releases the GIL inside every operation, and each
worker sets its own intra-op thread count to 1 (OpenMP's and MKL's settings are per thread), so
the two frames never compete for the same OpenMP team. Thread-local state (inference mode,
autocast, context variables such as the decoder's NNPACK switch) does not cross into a worker:
the frame function enters what it needs itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")


def frame_threads(device: torch.device | str, dtype: torch.dtype) -> int:
    """How many frames render at once on ``device`` in ``dtype`` (1 = one at a time).

    CPU in a reduced precision with at least two intra-op threads: one frame per intra-op thread.
    float32 keeps one frame at a time: a second frame in flight costs its working set again
    (the float32 pipeline sits close to the official code's peak memory). CUDA batches frames
    instead. ``KDTALKER_FRAME_THREADS=N`` overrides the rule on the CPU (``1`` turns it off).
    """
    if torch.device(device).type != "cpu":
        return 1
    forced = os.environ.get("KDTALKER_FRAME_THREADS", "").strip()
    if forced.isdigit() and int(forced) >= 1:
        return int(forced)
    if dtype == torch.float32:
        return 1
    return max(1, torch.get_num_threads())


@contextmanager
def frame_pool(workers: int) -> Iterator[ThreadPoolExecutor | None]:
    """A pool of ``workers`` threads with one intra-op thread each (None for ``workers`` <= 1).

    On leaving, the calling thread's intra-op thread count is set back to what it was (a
    worker's setting also changes PyTorch's process-wide default that new threads start from).
    """
    if workers <= 1:
        yield None
        return
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kdtalker-frame",
                              initializer=torch.set_num_threads, initargs=(1,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def iter_in_order(pool: ThreadPoolExecutor, workers: int, fn: Callable[[int], T],
                  items: Sequence[int]) -> Iterator[T]:
    """Yield ``fn(i)`` for the items in order, computed on ``pool`` with at most ``workers`` in flight.

    A new item starts as soon as any running one finishes (a fast frame never waits for a slow
    neighbour), also while the caller holds a result: the next items keep computing while the
    caller works between ``next`` calls (a renderer's caller pasting back or encoding a chunk),
    so the pool does not idle at chunk boundaries. Before a result is yielded, the free workers
    are given their next items. If ``fn`` raises, or the iterator is closed early (a cancel from
    the caller's progress callback; use ``contextlib.closing``), no further item starts and the
    running ones (at most ``workers``) are waited for, so that nothing computes after that.
    """
    results: dict[int, T] = {}
    pending: dict[Future[T], int] = {}
    started = emitted = 0
    try:
        while emitted < len(items):
            while started < len(items) and len(pending) < max(1, workers):
                pending[pool.submit(fn, items[started])] = started
                started += 1
            if emitted in results:
                emitted += 1
                yield results.pop(emitted - 1)
                continue
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()
    finally:
        wait(pending)

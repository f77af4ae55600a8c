"""Keep the networks' large freed CPU blocks for the next frame (glibc malloc settings).

Rendering one frame allocates and frees the same large maps again and again (tens to a few
hundred MB each at 512 px). glibc serves every block above its mmap threshold (at most 32 MB)
with a fresh ``mmap`` and returns it on ``free``, so each frame pays page faults and page zeroing
for all of them again. :func:`reuse_large_blocks` (a whole render) keeps freed memory at the top
of the heap; :func:`large_blocks_from_heap` (the networks' computation of one chunk, inside it)
raises the mmap threshold above the largest map, so those maps come from, and go back to, the
heap. What runs between chunks (paste-back into a large photo, encoding, the caller's code) keeps
glibc's threshold, so its own large buffers do not settle in the heap. Leaving the render hands
the memory back (``malloc_trim``) and restores glibc's defaults.

Measured on a 2-core Zen 5 EPYC VM, bf16, 2 threads: W + G 1.24 -> 1.14 s a frame; the streamed
path (render, paste-back into a 2048x2048 photo, H.264) 30.2 -> 27.1 s for 20 frames and 89.3 ->
76.5 s for 60, peak RSS 2694 -> 2740 MB and 2904 -> 3001 MB. (Raising the threshold for the whole
render, the caller's work included, was as fast but cost 3100 / 3488 MB.) float32 keeps glibc's
defaults (:func:`wanted`): there the setting cost +400 MB against its memory target. Numbers do not
change. A no-op where the C library is not glibc (macOS, Windows, musl).
``KDTALKER_KEEP_BLOCKS``: ``0`` never, ``1`` always (float32 too), unset: :func:`wanted`'s rule.
:func:`advise_huge_pages` hints one large fresh tensor to transparent huge pages (Linux).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap while rendering (the largest map at 512 px,
#: float32 (1,512,256,256), is 128 MiB).
MMAP_THRESHOLD = 512 << 20
#: Free memory kept at the top of the heap while rendering.
TRIM_THRESHOLD = 1 << 30
#: glibc's defaults, restored afterwards (the mmap threshold's upper bound for its dynamic rule,
#: and twice that for trimming, which is where the dynamic rule ends up in a torch process).
_DEFAULT_MMAP_THRESHOLD = 32 << 20
_DEFAULT_TRIM_THRESHOLD = 64 << 20

_lock = threading.Lock()
_depth = 0


@functools.lru_cache(maxsize=1)
def _process_libc() -> ctypes.CDLL | None:
    """This process's C library (POSIX), or None."""
    if os.name != "posix":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc, when it is this process's C library and has mallopt / malloc_trim; else None."""
    libc = _process_libc()
    try:
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except AttributeError:  # also: no C library (None)
        return None


@functools.lru_cache(maxsize=1)
def _madvise():  # type: ignore[no-untyped-def]
    """madvise(addr, length, advice) on Linux (any C library), else None."""
    libc = _process_libc() if sys.platform.startswith("linux") else None
    fn = getattr(libc, "madvise", None)
    if fn is not None:
        fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        fn.restype = ctypes.c_int
    return fn


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def advise_huge_pages(t: torch.Tensor) -> None:
    """Ask Linux to back the untouched CPU tensor t with 2 MiB pages (a hint; errors are ignored).

    A fresh multi-MiB allocation is faulted in 4 KiB pages on first write: about 0.35 ms per MiB
    on the Zen 5 machine, 21 of the 130 ms of a 128->512 convolution at 256x256 (64 MiB output).
    With transparent huge pages in ``madvise`` mode the hint cuts that about fivefold. Only the
    whole 2 MiB pages inside t's storage are advised (nothing outside it). Not for memory that
    :func:`reuse_large_blocks` keeps in the heap: there it cost far more kernel time than it saved
    (see :mod:`kdtalker_core.backends.winograd`).
    """
    madvise = _madvise() if t.device.type == "cpu" else None
    if madvise is None:
        return
    storage = t.untyped_storage()
    start = storage.data_ptr()
    end = start + storage.nbytes()
    lo = -(-start // _HUGE_PAGE) * _HUGE_PAGE
    hi = end // _HUGE_PAGE * _HUGE_PAGE
    if hi - lo >= 2 * _HUGE_PAGE:
        madvise(lo, hi - lo, _MADV_HUGEPAGE)


def available() -> bool:
    """True when the settings can be applied here (glibc) and are not turned off by the environment."""
    return _libc() is not None and os.environ.get("KDTALKER_KEEP_BLOCKS", "").strip() != "0"


def wanted(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether rendering on ``device`` in ``dtype`` should keep large blocks: CPU and a reduced
    dtype (``KDTALKER_KEEP_BLOCKS=1`` adds float32, ``0`` turns it off everywhere)."""
    if torch.device(device).type != "cpu" or not available():
        return False
    if os.environ.get("KDTALKER_KEEP_BLOCKS", "").strip() == "1":
        return True
    return dtype != torch.float32


@contextmanager
def reuse_large_blocks(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed large blocks stay in the process for reuse; yields whether it is in effect.

    Process-wide while any such block is open (nesting and threads are counted); the last one to
    leave trims the heap and restores glibc's defaults.
    """
    global _depth
    active = bool(enabled) and available()
    if not active:
        yield False
        return
    libc = _libc()
    assert libc is not None
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def reusing() -> bool:
    """True while any :func:`reuse_large_blocks` block is in effect (in any thread)."""
    return _depth > 0


@contextmanager
def large_blocks_from_heap(enabled: bool = True) -> Iterator[None]:
    """Within the block, blocks up to :data:`MMAP_THRESHOLD` come from the heap (where
    :func:`reuse_large_blocks` keeps them when freed). Meant for the networks' own computation
    only: what runs between frames (paste-back, encoding, the caller's code) keeps glibc's mmap
    threshold, so its large buffers do not settle in the heap and fragment it."""
    active = bool(enabled) and _depth > 0 and available()
    libc = _libc()
    if active and libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    try:
        yield
    finally:
        if active and libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD)

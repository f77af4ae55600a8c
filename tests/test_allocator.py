"""Rendering keeps large freed blocks for reuse, and gives them back when it ends (glibc only)."""

from __future__ import annotations

import pytest
import torch

from kdtalker_core.backends import allocator

pytestmark = pytest.mark.skipif(not allocator.available(), reason="needs glibc malloc")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _touch_and_free(mb: int) -> None:
    t = torch.ones(mb << 20, dtype=torch.uint8)  # touched: every page is resident
    del t


def test_freed_large_blocks_stay_while_rendering_and_go_back_afterwards() -> None:
    _touch_and_free(256)
    base = _rss_mb()  # outside: a 256 MB block is mmapped and returned on free
    with allocator.reuse_large_blocks() as active:
        assert active
        _touch_and_free(256)  # between frames (the caller's work): still mmapped, returned at once
        assert _rss_mb() < base + 64
        with allocator.large_blocks_from_heap():
            _touch_and_free(256)  # the networks' own block: kept in the heap for the next frame
        assert _rss_mb() > base + 200
    assert _rss_mb() < base + 64  # leaving the render trims the heap


def test_nested_blocks_restore_only_at_the_outermost_exit_and_can_be_turned_off(monkeypatch) -> None:
    with allocator.large_blocks_from_heap():  # outside a render: no effect
        _touch_and_free(256)
    base = _rss_mb()
    with allocator.reuse_large_blocks():
        with allocator.reuse_large_blocks():
            pass
        assert allocator._depth == 1
        with allocator.large_blocks_from_heap():
            _touch_and_free(256)
        inner = _rss_mb()
        assert inner > base + 200
    assert _rss_mb() < inner - 200
    monkeypatch.setenv("KDTALKER_KEEP_BLOCKS", "0")
    with allocator.reuse_large_blocks() as active:
        assert not active


def test_rule_reduced_precision_on_the_cpu_only(monkeypatch) -> None:
    monkeypatch.delenv("KDTALKER_KEEP_BLOCKS", raising=False)
    assert allocator.wanted("cpu", torch.bfloat16)
    assert not allocator.wanted("cpu", torch.float32)  # float32 keeps its lower peak memory
    assert not allocator.wanted("meta", torch.bfloat16)
    monkeypatch.setenv("KDTALKER_KEEP_BLOCKS", "1")
    assert allocator.wanted("cpu", torch.float32)
    monkeypatch.setenv("KDTALKER_KEEP_BLOCKS", "0")
    assert not allocator.wanted("cpu", torch.bfloat16)

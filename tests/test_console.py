"""The console entry point sets process-wide allocation settings before torch's first allocation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_PROBE = """
import sys
from kdtalker_core.console import configure_process
configure_process()
import torch
x = torch.ones(256 << 20, dtype=torch.uint8)  # 256 MiB, touched
smaps = open('/proc/self/smaps_rollup').read()
print(sys.modules['os'].environ.get('THP_MEM_ALLOC_ENABLE'), smaps)
"""


def _anon_huge_kb(env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT, env=env,
                         check=True, timeout=120).stdout
    value = out.split()[0]
    match = re.search(r"AnonHugePages:\s+(\d+) kB", out)
    return value, int(match.group(1)) if match else 0


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_console_puts_large_tensors_on_huge_pages_unless_the_environment_says_no() -> None:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    value, huge = _anon_huge_kb(env)
    assert value == "1"
    mode = THP_MODE.read_text() if THP_MODE.exists() else ""
    if "[always]" in mode or "[madvise]" in mode:
        assert huge >= 128 * 1024  # most of the 256 MiB tensor sits on 2 MiB pages
    off_value, off_huge = _anon_huge_kb({**env, "THP_MEM_ALLOC_ENABLE": "0"})
    assert off_value == "0"  # a value the user exported wins
    if "[madvise]" in mode:
        assert off_huge < 64 * 1024


def test_python_dash_m_runs_the_cli_through_the_console_entry() -> None:
    out = subprocess.run([sys.executable, "-m", "kdtalker_core", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=120).stdout
    assert "generate" in out and "batch" in out

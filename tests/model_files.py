"""Random full-size weights written in the official file layouts (what users bring), for tests.

Values are numerically sane (finite renders) but meaningless. Files are stored as float16 to keep
them small and fast to write; the loaders accept fp16 and fp32 files alike.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def randomize(layout, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors (float16 storage) for a key -> (shape, dtype) layout."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in layout.items():
        if not dtype.startswith("float"):
            out[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
        elif key.endswith("running_var"):
            out[key] = torch.ones(shape).half()
        elif key.endswith("running_mean") or (key.endswith("bias") and len(shape) == 1):
            out[key] = (0.01 * torch.randn(shape, generator=g)).half()
        elif len(shape) <= 1:
            out[key] = (1.0 + 0.05 * torch.randn(shape, generator=g)).half()
        else:
            fan_in = math.prod(shape[1:])
            out[key] = (torch.randn(shape, generator=g) * (0.5 / math.sqrt(fan_in))).half()
    return out


def write_official_models(root: Path) -> Path:
    """Write root/kdtalker/{KDTalker.pth, wav2lip.pth} and the original LivePortrait tree under
    root/liveportrait (base_models/*.pth, retargeting_models/stitching_retargeting_module.pth)."""
    from kdtalker_core import weights as ck

    kd = root / "kdtalker"
    kd.mkdir(parents=True, exist_ok=True)
    torch.save({"model": randomize(ck.official_file_layout("KDTalker.pth"), 1), "epoch": 3},
               kd / "KDTalker.pth")
    torch.save({"state_dict": randomize(ck.official_file_layout("wav2lip.pth"), 2)}, kd / "wav2lip.pth")
    lp = root / "liveportrait"
    (lp / "base_models").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(ck.LIVEPORTRAIT_BASE):
        torch.save(randomize(ck.official_file_layout(f"{name}.pth"), 10 + k), lp / "base_models" / f"{name}.pth")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in randomize(ck.official_file_layout(f"{ck.STITCHING_NAME}.pth"), 20).items():
        group, rest = key.split("/", 1)
        groups.setdefault(group, {})[rest] = value
    (lp / "retargeting_models").mkdir(exist_ok=True)
    torch.save(groups, lp / "retargeting_models" / f"{ck.STITCHING_NAME}.pth")
    return root


def link_tree(src: Path, dst: Path) -> None:
    """Mirror the files of ``src`` under ``dst`` as symlinks (cheap 'copies' of big weights)."""
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(path, target)

"""Golden checker for ``kind == "crop"``: dlib detection + 68 landmarks, KDTalker's crop, 256x256 resize.

Runs the product path :func:`kdtalker_core.face.crop_portrait` in official mode with the official
bottom-clamp quirk (``bottom_clamp="width"``), and compares every intermediate: integers exactly,
``quad`` within its atol from meta.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..face import crop_portrait, official_crop
from ..golden_checks._common import CheckResult, compare, compare_exact, load_fixture, tolerance


def check(fixture_dir: Path, meta: dict[str, Any]) -> list[CheckResult]:
    """Compare landmarks, det_box_ltrb, rsize, crop_box, quad, quad_int, cropped, cropped_256."""
    fx = load_fixture(fixture_dir, meta)
    name = fx.name
    image = fx.inputs["image"].numpy()
    out_size = int(meta["outputs"]["cropped_256"]["shape"][0])
    crop = crop_portrait(image, mode="official", name=name, order="detector", face_index=0,
                         bottom_clamp="width", size=out_size, detect_max_side=None)
    p = crop.params
    actual = {
        "landmarks": torch.from_numpy(crop.face.landmarks),
        "det_box_ltrb": torch.tensor(crop.face.box, dtype=torch.int64),
        "rsize": torch.tensor(p.rsize, dtype=torch.int64),
        "crop_box": torch.tensor(p.crop_box, dtype=torch.int64),
        "quad": torch.tensor(p.quad, dtype=torch.float64),
        "quad_int": torch.tensor(p.quad_int, dtype=torch.int64),
        "cropped": torch.from_numpy(np.ascontiguousarray(official_crop(image, p, name=name))),
        "cropped_256": torch.from_numpy(np.ascontiguousarray(crop.source)),
    }
    results = []
    for key, expected in fx.outputs.items():
        if key not in actual:
            results.append(CheckResult(name, key, False, float("nan"), "checker has no such output"))
        elif expected.is_floating_point():
            atol, rtol = tolerance(meta, key)
            results.append(compare(name, key, actual[key], expected, atol, rtol))
        else:
            results.append(compare_exact(name, key, actual[key], expected))
    return results

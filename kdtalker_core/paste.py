"""Paste rendered face frames back into the original photo (torch, on the frames' device, batched).

The crop footprint and the feathered mask depend only on the portrait, so :func:`make_paste_mask` is
computed once per portrait and every frame uses the same sampling grid: the background can never
jitter, and photo pixels where the mask is 0 are copied bit for bit. Nothing here synchronises with
the host per frame (all geometry is host-side float64 constants).

Geometry: a crop's ``crop_to_photo`` affine (see :class:`CropPlacement`, which
:class:`~kdtalker_core.face.PortraitCrop` satisfies) maps the crop's unit square to photo edge
coordinates, so frames of any resolution (256, 512, ...) paste to the same place. This module does
not depend on :mod:`kdtalker_core.face`.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError


class CropPlacement(Protocol):
    """Where a square crop sits in its photo (what pasting needs of a portrait crop).

    Attributes:
        photo_hw: (height, width) of the photo the crop was cut from, pixels.
        crop_to_photo: (2, 3) float64 affine from unit-square crop coordinates (u, v) to photo edge
            coordinates (x, y) in pixels (pixel (i, j) covers [i, i+1) x [j, j+1)).
    """

    photo_hw: tuple[int, int]
    crop_to_photo: np.ndarray


def paste_geometry(
    crop: CropPlacement, photo_hw: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(crop_to_photo (2, 3) affine scaled to a photo of ``photo_hw`` = (H, W), footprint bounds).

    The bounds (x0, y0, x1, y1) are end-exclusive photo pixels, clipped to the photo.
    """
    h, w = int(photo_hw[0]), int(photo_hw[1])
    ch, cw = crop.photo_hw
    affine = np.diag([w / cw, h / ch]) @ crop.crop_to_photo
    corners = np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=np.float64) @ affine.T
    x0 = int(np.clip(np.floor(corners[:, 0].min()), 0, w))
    y0 = int(np.clip(np.floor(corners[:, 1].min()), 0, h))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()), x0, w))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()), y0, h))
    return affine, (x0, y0, x1, y1)


def _unit_coords(affine: np.ndarray, bounds: tuple[int, int, int, int], device: torch.device) -> torch.Tensor:
    """Crop unit-square coordinates (h, w, 2) [u, v] of the photo pixel centres inside ``bounds``."""
    x0, y0, x1, y1 = bounds
    inv = np.linalg.inv(np.vstack([affine, [0.0, 0.0, 1.0]]))[:2]
    # float32 on the device (MPS has no float64): use coordinates local to the footprint and fold its
    # origin into the (float64, host-side) constant term, so precision does not depend on photo size.
    off = inv[:, 2] + inv[:, 0] * x0 + inv[:, 1] * y0
    ys = torch.arange(y1 - y0, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(x1 - x0, device=device, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    u = float(inv[0, 0]) * xx + float(inv[0, 1]) * yy + float(off[0])
    v = float(inv[1, 0]) * xx + float(inv[1, 1]) * yy + float(off[1])
    return torch.stack([u, v], dim=-1)


def make_paste_mask(
    crop: CropPlacement,
    photo_hw: tuple[int, int] | None = None,
    feather: float = 0.08,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Feathered blend mask in photo space, (H, W) in [0, 1]; compute once per portrait.

    The mask is 1 inside the crop footprint, falls smoothly (smoothstep) to 0 over the outer
    ``feather`` fraction of the crop side, and is exactly 0 on and outside the footprint's border.

    Args:
        crop: the portrait crop.
        photo_hw: (H, W) of the photo to paste into (default: the photo the crop was cut from; another
            size rescales the footprint proportionally).
        feather: ramp width as a fraction of the crop side, in [0, 0.5]; 0 gives a hard edge.
        device, dtype: of the returned mask.
    """
    if not 0.0 <= feather <= 0.5:
        raise InputError(f"feather must be between 0 and 0.5 (a fraction of the crop side), got {feather}.")
    hw = tuple(crop.photo_hw) if photo_hw is None else (int(photo_hw[0]), int(photo_hw[1]))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    affine, bounds = paste_geometry(crop, hw)
    x0, y0, x1, y1 = bounds
    mask = torch.zeros(hw, device=dev, dtype=dtype)
    if x1 <= x0 or y1 <= y0:
        return mask
    uv = _unit_coords(affine, bounds, dev)
    dist = torch.minimum(uv, 1.0 - uv).amin(dim=-1)  # distance to the nearest crop edge, crop units
    if feather > 0:
        r = (dist / feather).clamp(0.0, 1.0)
        ramp = r * r * (3.0 - 2.0 * r)
    else:
        ramp = torch.ones_like(dist)
    ramp = torch.where(dist > 0, ramp, torch.zeros_like(ramp))
    mask[y0:y1, x0:x1] = ramp.to(dtype)
    return mask


def paste_back(
    frames: torch.Tensor, photo: torch.Tensor, crop: CropPlacement, mask: torch.Tensor
) -> torch.Tensor:
    """Blend rendered frames into the photo.

    Args:
        frames: (T, R, R, 3) float in [0, 1] (R = 512 for the renderer; any size works), on the device.
        photo: (H, W, 3) float tensor in [0, 1] (moved to the frames' device if needed).
        crop: the crop the frames were rendered from.
        mask: (H, W) from :func:`make_paste_mask` for this photo size; only its values inside the crop
            footprint are used.

    Returns:
        (T, H, W, 3) in the photo's dtype on the frames' device. Pixels where the mask is 0 (and every
        pixel outside the crop footprint) are exactly the photo's, identical in every frame.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be (T, R, R, 3), got {tuple(frames.shape)}.")
    if photo.ndim != 3 or photo.shape[-1] != 3:
        raise InputError(f"photo must be (H, W, 3), got {tuple(photo.shape)}.")
    h, w = int(photo.shape[0]), int(photo.shape[1])
    if tuple(mask.shape) != (h, w):
        raise InputError(f"mask is {tuple(mask.shape)} but the photo is {(h, w)}; make the mask with "
                         "make_paste_mask(crop, photo_hw=photo.shape[:2]).")
    device = frames.device
    photo = photo.to(device)
    t = frames.shape[0]
    out = photo.unsqueeze(0).expand(t, h, w, 3).clone()
    affine, bounds = paste_geometry(crop, (h, w))
    x0, y0, x1, y1 = bounds
    if x1 <= x0 or y1 <= y0 or t == 0:
        return out
    src = frames.permute(0, 3, 1, 2).to(torch.float32)
    # Footprint size in photo pixels along the crop's u and v axes; shrink first if much smaller
    # than the frames (a small face in a big photo), so the bilinear lookup does not alias.
    side_u = math.hypot(affine[0, 0], affine[1, 0])
    side_v = math.hypot(affine[0, 1], affine[1, 1])
    th = max(2, math.ceil(side_v))
    tw = max(2, math.ceil(side_u))
    if src.shape[-2] > 1.5 * th or src.shape[-1] > 1.5 * tw:
        src = F.interpolate(src, size=(min(th, src.shape[-2]), min(tw, src.shape[-1])), mode="bilinear",
                            antialias=True, align_corners=False)
    grid = _unit_coords(affine, bounds, device) * 2.0 - 1.0
    # one grid for every frame: fold the frames into channels of a single sample
    folded = src.reshape(1, t * 3, src.shape[-2], src.shape[-1])
    warped = F.grid_sample(folded, grid.unsqueeze(0), mode="bilinear", padding_mode="border",
                           align_corners=False)
    warped = warped.reshape(t, 3, y1 - y0, x1 - x0).permute(0, 2, 3, 1).to(photo.dtype)
    region = photo[y0:y1, x0:x1].unsqueeze(0)
    m = mask[y0:y1, x0:x1].to(device=device, dtype=photo.dtype).unsqueeze(0).unsqueeze(-1)
    blended = torch.where(m > 0, region + m * (warped - region), region)
    out[:, y0:y1, x0:x1] = blended
    return out

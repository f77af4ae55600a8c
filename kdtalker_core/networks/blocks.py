"""Convolution / normalisation building blocks shared by LivePortrait's F, W and G networks.

Attribute names (``conv``, ``norm``, ``conv1`` ...) follow the official checkpoints so that
``load_state_dict(strict=True)`` works on the released files. BatchNorm layers are used in eval
mode only (running statistics); nothing here is meant for training.

Coordinates: a normalised grid has components ordered (x, y, z) = (width, height, depth) axes,
each in [-1, 1] with the first/last sample exactly at -1/+1 (``align_corners``-style spacing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def to_compute(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """x in the networks' compute ``dtype``; channels-last (2D or 3D by rank) when asked.

    A no-op for float32 NCHW/NCDHW networks (the official layout), so fp32 numbers do not change.
    """
    if channels_last and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.to(dtype=dtype, memory_format=fmt)
    return x.to(dtype)


class SameBlock2d(nn.Module):
    """conv(k x k, same size) -> BatchNorm2d -> ReLU (or LeakyReLU 0.01). (B,Cin,H,W) -> (B,Cout,H,W)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1,
                 lrelu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.lrelu = lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        return F.leaky_relu(y, 0.01) if self.lrelu else F.relu(y)


class DownBlock2d(nn.Module):
    """conv3x3 -> BatchNorm2d -> ReLU -> 2x2 average pool. (B,Cin,H,W) -> (B,Cout,H/2,W/2)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class DownBlock3d(nn.Module):
    """conv3x3x3 -> BatchNorm3d -> ReLU -> average pool over (H, W) only.

    (B,Cin,D,H,W) -> (B,Cout,D,H/2,W/2).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.conv(x)))
        if y.dtype == torch.float32:
            return F.avg_pool3d(y, kernel_size=(1, 2, 2))
        # PyTorch has no reduced-precision avg_pool3d on the CPU: pool in float32, cast back.
        return F.avg_pool3d(y.float(), kernel_size=(1, 2, 2)).to(y.dtype)


class UpBlock3d(nn.Module):
    """nearest x2 upsampling of (H, W) -> conv3x3x3 -> BatchNorm3d -> ReLU.

    (B,Cin,D,H,W) -> (B,Cout,D,2H,2W).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2))
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x)))))). Shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Registration order (conv1, conv2, norm1, norm2) fixes the state-dict key order.
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels, affine=True)
        self.norm2 = nn.BatchNorm3d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return x + h


def _level_width(block_expansion: int, max_features: int, level: int) -> int:
    """Channel count of hourglass level ``level`` (level 0 = full resolution)."""
    return min(max_features, block_expansion * (2 ** level))


class HourglassEncoder(nn.Module):
    """``num_blocks`` DownBlock3d; returns the input and every level's output (coarsest last)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else _level_width(block_expansion, max_features, i)
            blocks.append(DownBlock3d(cin, _level_width(block_expansion, max_features, i + 1)))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x]
        for block in self.down_blocks:
            levels.append(block(levels[-1]))
        return levels


class HourglassDecoder(nn.Module):
    """UpBlock3d per level with skip concatenation, then conv3x3x3 -> BatchNorm3d -> ReLU.

    Output channels ``out_filters = block_expansion + in_features`` at the input resolution.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            width = _level_width(block_expansion, max_features, i + 1)
            cin = width if i == num_blocks - 1 else 2 * width
            blocks.append(UpBlock3d(cin, _level_width(block_expansion, max_features, i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        skips = list(levels)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """3D U-Net (H and W are halved per level, depth kept). (B,Cin,D,H,W) -> (B,out_filters,D,H,W).

    H and W must be divisible by ``2**num_blocks``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3,
                 max_features: int = 256) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def coordinate_grid_3d(spatial_size: tuple[int, int, int], dtype: torch.dtype,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised identity grid of a (D,H,W) volume: (D,H,W,3), last axis (x_w, y_h, z_d) in [-1,1]."""
    d, h, w = spatial_size
    axes = [2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1 for n in (w, h, d)]
    zz, yy, xx = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def keypoint_gaussians(kp: torch.Tensor, grid: torch.Tensor, variance: float) -> torch.Tensor:
    """Isotropic Gaussian bumps exp(-|g - kp|^2 / (2 variance)) around keypoints.

    kp (B,K,3) normalised (x,y,z); grid (D,H,W,3) from :func:`coordinate_grid_3d` -> (B,K,D,H,W).
    """
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / variance)

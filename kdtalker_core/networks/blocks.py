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

from . import winograd3d
from .fast_conv3d import conv3x3x3_upsampled, fold_batchnorm, upsample_phase_kernels, use_phase_form
from .kernel_cache import KernelCache
from .layout import channels_last_3d_copy, memory_format

#: Eval-mode BatchNorm is folded into the preceding convolution when the output has at least this
#: many voxels per channel (there the normalisation pass costs time; below it the folded weight
#: copy would cost more memory than the pass costs time).
FOLD_MIN_VOXELS = 16 * 32 * 32


def conv_norm(conv: nn.Conv2d | nn.Conv3d, norm: nn.modules.batchnorm._BatchNorm, x: torch.Tensor,
              cache: KernelCache, relu: bool = False) -> torch.Tensor:
    """``norm(conv(x))``, then ReLU when ``relu``; in eval mode on large maps one convolution with the norm folded in.

    The folded weight and bias are cached on ``cache`` (see :func:`fold_batchnorm`). bf16 CPU
    channels-last-3d 3x3x3 convolutions with many channels run as depth-folded Winograd
    (:mod:`.winograd3d`, transformed weights cached too, the ReLU applied as the outputs are
    stored). The result is a fresh tensor (safe to modify in place).
    """
    if norm.training or x[0, 0].numel() < FOLD_MIN_VOXELS:
        y = norm(conv(x))
        return F.relu_(y) if relu else y
    weight, bias = cache.cached("folded", lambda: fold_batchnorm(conv.weight, conv.bias, norm))
    if isinstance(conv, nn.Conv3d):
        if winograd3d.applicable(conv) and winograd3d.preferred(x, weight):
            u = cache.cached("winograd3d", lambda: winograd3d.transform_weight3d(weight))
            return winograd3d.conv3x3x3(x, u, bias, relu=relu)
        y = F.conv3d(x, weight, bias, padding=conv.padding)
    else:
        y = F.conv2d(x, weight, bias, padding=conv.padding)
    return F.relu_(y) if relu else y


def to_compute(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """x in the networks' compute ``dtype``; channels-last (2D or 3D by rank) when asked.

    A no-op for float32 NCHW/NCDHW networks (the official layout), so fp32 numbers do not change.
    A contiguous (B,C,D,H,W) CPU map going channels-last-3d takes
    :func:`~.layout.channels_last_3d_copy` (a blocked transpose instead of the strided conversion).
    """
    if not channels_last or x.dim() not in (4, 5):
        return x.to(dtype)
    if x.dim() == 4:
        return x.to(dtype=dtype, memory_format=torch.channels_last)
    if x.device.type != "cpu" or not x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d):
        return x.to(dtype=dtype, memory_format=torch.channels_last_3d)
    return channels_last_3d_copy(x, dtype)


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


class DownBlock3d(KernelCache):
    """conv3x3x3 -> BatchNorm3d -> ReLU -> average pool over (H, W) only.

    (B,Cin,D,H,W) -> (B,Cout,D,H/2,W/2).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = conv_norm(self.conv, self.norm, x, self, relu=True)
        if y.dtype == torch.float32:
            return F.avg_pool3d(y, kernel_size=(1, 2, 2))
        # PyTorch has no reduced-precision avg_pool3d on the CPU: the 2x2 means are summed in
        # float32 from strided views (same numbers as pooling a float32 copy: sums of four bf16/fp16
        # values are exact in float32; 10x faster than avg_pool3d on a channels-last copy), then cast
        # back in y's memory format, so a channels-last network stays channels-last.
        fmt = memory_format(y)
        acc = y[..., 0::2, 0::2].float()
        acc += y[..., 0::2, 1::2]
        acc += y[..., 1::2, 0::2]
        acc += y[..., 1::2, 1::2]
        return acc.mul_(0.25).to(dtype=y.dtype, memory_format=fmt)


class UpBlock3d(KernelCache):
    """nearest x2 upsampling of (H, W) -> conv3x3x3 -> BatchNorm3d -> ReLU.

    (B,Cin,D,H,W) -> (B,Cout,D,2H,2W). In eval mode on inputs of at least
    :data:`~.fast_conv3d.PHASE_MIN_PIXELS` pixels per slice, the upsampling and convolution run
    as :func:`~.fast_conv3d.conv3x3x3_upsampled` with the norm folded into the cached phase kernels.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not use_phase_form(x):
            x = F.interpolate(x, scale_factor=(1, 2, 2))
            return F.relu(self.norm(self.conv(x)))
        kernels, bias = self.cached("phases", self._folded_phase_kernels)
        return F.relu_(conv3x3x3_upsampled(x, kernels, bias))

    def _folded_phase_kernels(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        weight, bias = fold_batchnorm(self.conv.weight, self.conv.bias, self.norm)
        return upsample_phase_kernels(weight), bias


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


class HourglassDecoder(KernelCache):
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
        return conv_norm(self.conv, self.norm, out, self, relu=True)


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


def grid_keypoint_gaussians(kp: torch.Tensor, spatial_size: tuple[int, int, int], variance: float) -> torch.Tensor:
    """:func:`keypoint_gaussians` on the :func:`coordinate_grid_3d` of ``spatial_size`` (D,H,W), float32.

    kp (B,K,3) -> (B,K,D,H,W). The Gaussian of a squared distance summed over axes is the product of
    one Gaussian per axis, so three small (B,K,n) factors and two broadcast products replace the
    per-voxel difference, square, sum and exponential (equal up to float rounding).
    """
    d, h, w = spatial_size
    kp = kp.float()
    axes = [2 * (torch.arange(n, dtype=torch.float32, device=kp.device) / (n - 1)) - 1 for n in (w, h, d)]
    ex, ey, ez = (torch.exp(-0.5 * (ax - kp[:, :, i, None]).pow(2) / variance) for i, ax in enumerate(axes))
    return (ez[:, :, :, None, None] * ey[:, :, None, :, None]) * ex[:, :, None, None, :]


def keypoint_gaussians(kp: torch.Tensor, grid: torch.Tensor, variance: float) -> torch.Tensor:
    """Isotropic Gaussian bumps exp(-|g - kp|^2 / (2 variance)) around keypoints.

    kp (B,K,3) normalised (x,y,z); grid (D,H,W,3) from :func:`coordinate_grid_3d` -> (B,K,D,H,W).
    """
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / variance)

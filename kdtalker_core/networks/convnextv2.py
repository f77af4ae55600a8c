"""ConvNeXt V2 backbone with LivePortrait's motion heads (the ``detector`` of the motion extractor).

Parameter names follow the released ``motion_extractor.pth`` (under ``detector.``):
``downsample_layers.{0..3}.{0,1}``, ``stages.{i}.{j}.{dwconv,norm,pwconv1,grn,pwconv2}``, ``norm`` and
the heads ``fc_kp, fc_scale, fc_pitch, fc_yaw, fc_roll, fc_t, fc_exp`` (registered in that order, so
``state_dict()`` order matches the checkpoint).

The per-pixel part of every block runs on a channels-last view ``(B,H,W,C)``. When the input
is in ``torch.channels_last`` memory format (what :class:`ConvNeXtV2` converts to), those permutes are
free views, so the depthwise conv, the pointwise Linears and the norms never copy activations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Output heads in checkpoint order: name -> output width (``None`` = 3 * num_kp, ``"bins"`` = num_bins).
_HEADS: tuple[tuple[str, int | str], ...] = (
    ("kp", "kp3"),
    ("scale", 1),
    ("pitch", "bins"),
    ("yaw", "bins"),
    ("roll", "bins"),
    ("t", 3),
    ("exp", "kp3"),
)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``(B,C,H,W)`` tensor (biased variance, eps inside sqrt).

    Parameters ``weight``/``bias`` have shape ``(C,)``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B,C,H,W) -> (B,C,H,W)``, normalised per pixel across C."""
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2 GRN on a channels-last tensor ``(B,H,W,C)``.

    ``g = ||x||_2`` over (H,W) per channel, ``n = g / (mean_C(g) + 1e-6)``,
    ``out = gamma * (x * n) + beta + x``. ``gamma``/``beta`` have shape ``(1,1,1,C)``.
    Evaluated as ``x * (gamma * n + 1) + beta``: one pass over the activation instead of three.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B,H,W,C) -> (B,H,W,C)``."""
        g = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return torch.addcmul(self.beta, x, torch.addcmul(torch.ones_like(n), self.gamma, n))


class ConvNeXtBlock(nn.Module):
    """Residual block: 7x7 depthwise conv, LayerNorm, Linear(C,4C), exact GELU, GRN, Linear(4C,C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B,C,H,W) -> (B,C,H,W)``."""
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """ConvNeXt V2 feature extractor followed by LivePortrait's linear motion heads.

    Args:
        depths: blocks per stage (full size ``(3,3,9,3)``).
        dims: channels per stage (full size ``(96,192,384,768)``).
        num_kp: implicit keypoints (21); kp/exp heads output ``3 * num_kp``.
        num_bins: head-pose bins per angle (66).
        in_channels: image channels (3).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_kp: int = 21,
        num_bins: int = 66,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXtV2 needs 4 stages, got depths={list(depths)} dims={list(dims)}")
        self.num_kp = num_kp
        self.num_bins = num_bins
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4),
                           ChannelsFirstLayerNorm(dims[0]))]
            + [nn.Sequential(ChannelsFirstLayerNorm(dims[i]),
                             nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
               for i in range(3)]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dims[i]) for _ in range(depths[i]))) for i in range(4)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        widths = {"kp3": 3 * num_kp, "bins": num_bins}
        for name, width in _HEADS:
            out = widths[width] if isinstance(width, str) else width
            self.add_module(f"fc_{name}", nn.Linear(dims[-1], out))

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """``image (B,3,H,W) -> pooled, normalised features (B, dims[-1])``."""
        x = image.contiguous(memory_format=torch.channels_last)
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean(dim=(-2, -1)))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image (B,3,H,W)`` in [0,1] -> raw head outputs.

        Returns ``kp (B,3*num_kp)``, ``pitch/yaw/roll (B,num_bins)`` logits, ``t (B,3)``,
        ``exp (B,3*num_kp)``, ``scale (B,1)``.
        """
        feat = self.forward_features(image)
        return {name: getattr(self, f"fc_{name}")(feat) for name, _ in _HEADS}

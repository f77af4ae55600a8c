"""LivePortrait appearance feature extractor F: portrait image -> 3D appearance volume f_s."""

from __future__ import annotations

import torch
from torch import nn

from ..networks.blocks import DownBlock2d, ResBlock3d, SameBlock2d


class AppearanceFeatureExtractor(nn.Module):
    """2D encoder whose channels are folded into a (channel, depth) volume, refined by 3D res-blocks.

    Keys match ``appearance_feature_extractor.pth`` (``first``, ``down_blocks.N``, ``second``,
    ``resblocks_3d.3drN``). Full size: (B,3,256,256) -> (B,32,16,64,64).
    """

    def __init__(self, image_channel: int = 3, block_expansion: int = 64, num_down_blocks: int = 2,
                 max_features: int = 512, reshape_channel: int = 32, reshape_depth: int = 16,
                 num_resblocks: int = 6) -> None:
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError(
                f"reshape_channel*reshape_depth ({reshape_channel}*{reshape_depth}) must equal "
                f"max_features ({max_features})"
            )
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        widths = [min(max_features, block_expansion * (2 ** i)) for i in range(num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(
            DownBlock2d(widths[i], widths[i + 1]) for i in range(num_down_blocks)
        )
        self.second = nn.Conv2d(widths[-1], max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) RGB in [0,1] -> feature_3d (B, reshape_channel, reshape_depth, H/2^n, W/2^n)."""
        x = self.first(image)
        for block in self.down_blocks:
            x = block(x)
        x = self.second(x)
        b, _, h, w = x.shape
        volume = x.reshape(b, self.reshape_channel, self.reshape_depth, h, w)
        return self.resblocks_3d(volume)

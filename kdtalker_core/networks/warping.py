"""LivePortrait warping network W: warps the source appearance volume to the driving keypoints."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..networks.blocks import SameBlock2d, to_compute
from ..networks.dense_motion import DenseMotionNetwork, sample_volume

_DEFAULT_DENSE_MOTION = {"block_expansion": 32, "max_features": 1024, "num_blocks": 5,
                         "reshape_depth": 16, "compress": 4}


class WarpingNetwork(nn.Module):
    """Dense motion + occlusion, trilinear warp of f_s, then a 2D projection of the warped volume.

    Keys match ``warping_module.pth`` (``dense_motion_network.*``, ``third.*``, ``fourth.*``).
    Full size: feature (B,32,16,64,64) -> out (B,256,64,64).
    """

    def __init__(self, num_kp: int = 21, block_expansion: int = 64, max_features: int = 512,
                 num_down_blocks: int = 2, reshape_channel: int = 32, estimate_occlusion_map: bool = True,
                 dense_motion_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        # The official class takes (and ignores) extra keyword arguments such as ``upscale``.
        self.use_occlusion_map = bool(kwargs.get("flag_use_occlusion_map", True))
        params = dict(_DEFAULT_DENSE_MOTION if dense_motion_params is None else dense_motion_params)
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp, feature_channel=reshape_channel, estimate_occlusion_map=estimate_occlusion_map,
            **params,
        )
        width = block_expansion * (2 ** num_down_blocks)
        self.third = SameBlock2d(max_features, width, lrelu=True)
        self.fourth = nn.Conv2d(width, width, kernel_size=1)
        #: Run the 2D projection in channels-last memory (set by render.prepare_networks).
        self.channels_last = False

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        """feature_3d (1 or B,C,D,H,W); kp_driving (B,K,3); kp_source (1 or B,K,3) ->

        ``out`` (B, block_expansion*2^num_down_blocks, H, W), ``occlusion_map`` (B,1,H,W),
        ``deformation`` (B,D,H,W,3) and ``mask`` (B,K+1,D,H,W). A batch-1 feature / source is
        shared by every driving frame.
        """
        motion = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        deformation = motion["deformation"]
        warped = sample_volume(feature_3d, deformation.unsqueeze(1))[:, 0]  # (B,C,D,H,W) float32
        b, c, d, h, w = warped.shape
        flat = to_compute(warped.reshape(b, c * d, h, w), self.fourth.weight.dtype, self.channels_last)
        x = self.fourth(self.third(flat))
        occlusion = motion.get("occlusion_map")
        if occlusion is not None and self.use_occlusion_map:
            x = x * occlusion.to(x.dtype)
        out = {"out": x, "deformation": deformation, "mask": motion["mask"]}
        if occlusion is not None:
            out["occlusion_map"] = occlusion
        return out

"""LivePortrait motion extractor M: canonical keypoints, head pose, translation, expression and scale.

State-dict keys are ``detector.*`` exactly as the released ``motion_extractor.pth`` (strict load).
Post-processing into degrees lives in :func:`kdtalker_core.keypoints.get_kp_info`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..networks.convnextv2 import ConvNeXtV2


class MotionExtractor(nn.Module):
    """M: a ConvNeXt V2 (``self.detector``) with keypoint / pose / expression heads.

    Args:
        num_kp: implicit keypoints (21).
        depths: ConvNeXt V2 blocks per stage (full size ``(3,3,9,3)``, i.e. convnextv2_tiny).
        dims: channels per stage (full size ``(96,192,384,768)``).
        num_bins: head-pose bins per angle (66, 3 degrees each).
    """

    def __init__(
        self,
        num_kp: int = 21,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_bins: int = 66,
    ) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.num_bins = num_bins
        self.detector = ConvNeXtV2(depths=depths, dims=dims, num_kp=num_kp, num_bins=num_bins)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image (B,3,H,W)`` RGB in [0,1] (256x256 for the released weights) -> raw outputs.

        Returns a dict: ``kp (B,63)`` canonical keypoints, ``pitch/yaw/roll (B,66)`` bin logits,
        ``t (B,3)`` translation, ``exp (B,63)`` expression offsets, ``scale (B,1)``
        (63 = 3 * num_kp, 66 = num_bins), all in the module's dtype.
        """
        return self.detector(image)

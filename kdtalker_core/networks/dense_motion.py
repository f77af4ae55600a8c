"""LivePortrait dense motion estimator: sparse keypoint motions -> dense 3D deformation + occlusion.

Numerically sensitive steps (sampling grids, Gaussians, the softmax over motions, grid sampling)
always run in float32, also inside a reduced-precision autocast region. With bf16/fp16 weights
(see :func:`kdtalker_core.render.prepare_networks`) the convolutions run in the weights' dtype and,
when ``channels_last`` is set, in channels-last-3d memory; their inputs are cast here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..networks.blocks import Hourglass, coordinate_grid_3d, keypoint_gaussians, to_compute

#: Variance of the keypoint Gaussians in normalised coordinates.
KP_VARIANCE = 0.01


def sample_volume(volume: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """Trilinear ``grid_sample`` (zeros padding, align_corners=False) of one volume with many grids.

    volume (Bv,C,D,H,W) with Bv == 1 (shared by every batch item) or Bv == B;
    grids (B,N,D',H',W',3) normalised (x,y,z) -> (B,N,C,D',H',W') float32.
    Several grids are stacked along the depth axis of one sampling call, which gives the same
    numbers as sampling each grid separately without copying the volume per grid.
    """
    b, n, d, h, w, _ = grids.shape
    with torch.autocast(volume.device.type, enabled=False):
        volume = volume.float()
        grids = grids.float()
        if volume.shape[0] == 1:
            out = F.grid_sample(volume, grids.reshape(1, b * n * d, h, w, 3), align_corners=False)
            c = out.shape[1]
            return out.reshape(c, b, n, d, h, w).permute(1, 2, 0, 3, 4, 5)
        if volume.shape[0] != b:
            raise ValueError(f"volume batch {volume.shape[0]} must be 1 or match the grids' batch {b}")
        out = F.grid_sample(volume, grids.reshape(b, n * d, h, w, 3), align_corners=False)
        c = out.shape[1]
        return out.reshape(b, c, n, d, h, w).transpose(1, 2)


class DenseMotionNetwork(nn.Module):
    """Predicts per-voxel weights over K+1 candidate motions (background + one per keypoint).

    Keys match ``warping_module.pth`` under ``dense_motion_network.`` (hourglass, mask, compress,
    norm, occlusion). ``feature_channel`` is the appearance volume's channel count.
    """

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int,
                 feature_channel: int, reshape_depth: int, compress: int,
                 estimate_occlusion_map: bool = True) -> None:
        super().__init__()
        self.num_kp = num_kp
        #: Run the convolutions in channels-last(-3d) memory (set by render.prepare_networks).
        self.channels_last = False
        self.hourglass = Hourglass(block_expansion=block_expansion, in_features=(num_kp + 1) * (compress + 1),
                                   num_blocks=num_blocks, max_features=max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress, affine=True)
        self.occlusion: nn.Conv2d | None = None
        if estimate_occlusion_map:
            occlusion_in = self.hourglass.out_filters * reshape_depth
            self.occlusion = nn.Conv2d(occlusion_in, 1, kernel_size=7, padding=3)

    def sparse_motions(self, spatial_size: tuple[int, int, int], kp_driving: torch.Tensor,
                       kp_source: torch.Tensor) -> torch.Tensor:
        """Backward maps driving -> source: (B,K+1,D,H,W,3) float32, index 0 = identity.

        Motion k+1 is ``grid - kp_driving[k] + kp_source[k]`` (a pure translation per keypoint).
        kp_driving (B,K,3); kp_source (1 or B,K,3).
        """
        kd = kp_driving.float()
        ks = kp_source.float()
        b = kd.shape[0]
        grid = coordinate_grid_3d(spatial_size, torch.float32, kd.device)
        shifted = (grid[None, None] - kd[:, :, None, None, None, :]) + ks[:, :, None, None, None, :]
        identity = grid[None, None].expand(b, 1, *grid.shape)
        return torch.cat([identity, shifted], dim=1)

    def heatmaps(self, spatial_size: tuple[int, int, int], kp_driving: torch.Tensor,
                 kp_source: torch.Tensor) -> torch.Tensor:
        """Gaussian(driving) - Gaussian(source) with a zero background channel first: (B,K+1,1,D,H,W)."""
        grid = coordinate_grid_3d(spatial_size, torch.float32, kp_driving.device)
        diff = keypoint_gaussians(kp_driving.float(), grid, KP_VARIANCE) - keypoint_gaussians(
            kp_source.float(), grid, KP_VARIANCE)
        background = diff.new_zeros((diff.shape[0], 1, *diff.shape[2:]))
        return torch.cat([background, diff], dim=1).unsqueeze(2)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        """feature (1 or B,C,D,H,W); kp_driving (B,K,3); kp_source (1 or B,K,3) ->

        ``mask`` (B,K+1,D,H,W) softmax weights, ``deformation`` (B,D,H,W,3) normalised sampling
        coordinates (float32), and ``occlusion_map`` (B,1,H,W) in (0,1) when enabled.
        """
        b = kp_driving.shape[0]
        d, h, w = feature.shape[2:]
        dtype = self.compress.weight.dtype
        compressed = F.relu(self.norm(self.compress(to_compute(feature, dtype, self.channels_last))))
        motions = self.sparse_motions((d, h, w), kp_driving, kp_source)
        deformed = sample_volume(compressed, motions)  # (B,K+1,c,D,H,W)
        heat = self.heatmaps((d, h, w), kp_driving, kp_source)
        net_in = torch.cat([heat, deformed], dim=2).reshape(b, -1, d, h, w)
        prediction = self.hourglass(to_compute(net_in, dtype, self.channels_last))

        logits = self.mask(prediction)
        with torch.autocast(feature.device.type, enabled=False):
            mask = torch.softmax(logits.float(), dim=1)
            deformation = torch.einsum("bkdhw,bkdhwc->bdhwc", mask, motions)
        out = {"mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            flat = to_compute(prediction.reshape(b, -1, h, w), dtype, self.channels_last)
            out["occlusion_map"] = torch.sigmoid(self.occlusion(flat).float())
        return out

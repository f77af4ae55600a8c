"""Small configurations of the rendering networks (W, G) for fast CPU tests, shared by test modules."""

from __future__ import annotations

import torch

#: A warping network W with the official structure but few channels.
SMALL_WARP = {
    "num_kp": 21, "block_expansion": 4, "max_features": 64, "num_down_blocks": 2, "reshape_channel": 8,
    "estimate_occlusion_map": True,
    "dense_motion_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2, "reshape_depth": 8,
                            "compress": 2},
}
#: A SPADE decoder G with the official structure but few channels.
SMALL_SPADE = {"upscale": 2, "block_expansion": 4, "max_features": 16, "num_down_blocks": 2, "out_channels": 8}


def randomize_norm_stats(model: torch.nn.Module, seed: int, *, affine: bool = False) -> torch.nn.Module:
    """BatchNorm running statistics (and with ``affine`` its weights) set to seeded non-trivial values,
    so eval-mode normalisation is not the identity; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            if affine:
                m.weight.data.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
    return model.eval()

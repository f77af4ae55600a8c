"""LivePortrait stitching (S) and eye / lip retargeting MLPs, plus the functions that apply them.

Each network is a Linear/ReLU stack whose Linears sit at even ``mlp.N`` indices, so the state-dict
keys are ``mlp.0.weight, mlp.0.bias, mlp.2.weight, ...``. The released
``stitching_retargeting_module.pth`` holds one sub-dict per group (``retarget_shoulder``,
``retarget_mouth``, ``retarget_eye``) whose keys carry a DDP ``module.`` prefix; use
:func:`load_stitching_networks` to strip it and load every group strictly.

KDTalker's inference does not use these networks (it renders the driving keypoints directly); they
are provided for LivePortrait-compatible stitching and retargeting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

#: Checkpoint group -> constructor kwargs of :class:`StitchingRetargetingNetwork` (full size).
STITCHING_CONFIGS: dict[str, dict] = {
    "retarget_shoulder": {"input_size": 126, "hidden_sizes": (128, 128, 64), "output_size": 65},
    "retarget_mouth": {"input_size": 65, "hidden_sizes": (128, 128, 64), "output_size": 63},
    "retarget_eye": {"input_size": 66, "hidden_sizes": (256, 256, 128, 128, 64), "output_size": 63},
}

#: LivePortrait's role names (models.yaml ``stitching_retargeting_module_params``) -> checkpoint group.
STITCHING_ROLES: dict[str, str] = {
    "stitching": "retarget_shoulder",
    "lip": "retarget_mouth",
    "eye": "retarget_eye",
}


class StitchingRetargetingNetwork(nn.Module):
    """MLP ``input_size -> hidden_sizes... -> output_size`` with ReLU between Linears (none at the end)."""

    def __init__(self, input_size: int, hidden_sizes: Sequence[int], output_size: int) -> None:
        super().__init__()
        widths = [input_size, *hidden_sizes]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B,input_size) -> (B,output_size)``."""
        return self.mlp(x)


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove every ``module.`` from every key (what LivePortrait's loader does before a strict load)."""
    return {k.replace("module.", ""): v for k, v in state_dict.items()}


def load_stitching_networks(
    groups: Mapping[str, Mapping[str, torch.Tensor]],
    configs: Mapping[str, Mapping] | None = None,
) -> dict[str, StitchingRetargetingNetwork]:
    """Build the networks from ``{group: state_dict}`` (keys with or without ``module.``).

    ``configs`` maps group -> constructor kwargs (default :data:`STITCHING_CONFIGS`); every group in it
    must be present in ``groups`` and load strictly. The networks are returned in eval mode, float32,
    on the CPU (move them with ``.to``). Raises ``KeyError`` for a missing group and ``RuntimeError``
    (from ``load_state_dict``) for wrong keys or shapes.
    """
    nets: dict[str, StitchingRetargetingNetwork] = {}
    for group, cfg in (STITCHING_CONFIGS if configs is None else configs).items():
        if group not in groups:
            raise KeyError(f"stitching checkpoint has no {group!r} group (found {sorted(groups)})")
        net = StitchingRetargetingNetwork(**cfg)
        net.load_state_dict(strip_ddp_prefix(groups[group]), strict=True)
        nets[group] = net.eval()
    return nets


def _concat_flat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B,...)`` and ``(B,...)`` -> ``(B, a.numel()/B + b.numel()/B)``."""
    return torch.cat([a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)], dim=1)


def stitch_delta(net: nn.Module, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """Stitching correction: ``kp_source, kp_driving (B,21,3) -> delta (B,65)``.

    ``delta[:, :63]`` offsets every keypoint, ``delta[:, 63:65]`` shifts all keypoints in x and y.
    """
    return net(_concat_flat(kp_source, kp_driving))


def stitch(net: nn.Module, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """Apply the stitching correction: ``kp_source, kp_driving (B,N,3) -> kp_driving_stitched (B,N,3)``."""
    bsz, num_kp = kp_driving.shape[:2]
    delta = stitch_delta(net, kp_source, kp_driving)
    offsets = delta[:, : 3 * num_kp].reshape(bsz, num_kp, 3)
    shift_xy = delta[:, 3 * num_kp : 3 * num_kp + 2].reshape(bsz, 1, 2)
    shift = torch.cat([shift_xy, shift_xy.new_zeros(bsz, 1, 1)], dim=2)
    return kp_driving + offsets + shift


def retarget_eye(net: nn.Module, kp_source: torch.Tensor, eye_close_ratio: torch.Tensor) -> torch.Tensor:
    """Eye retargeting offsets: ``kp_source (B,21,3)``, ``eye_close_ratio (B,3) -> delta (B,63)``."""
    return net(_concat_flat(kp_source, eye_close_ratio))


def retarget_lip(net: nn.Module, kp_source: torch.Tensor, lip_close_ratio: torch.Tensor) -> torch.Tensor:
    """Lip retargeting offsets: ``kp_source (B,21,3)``, ``lip_close_ratio (B,2) -> delta (B,63)``."""
    return net(_concat_flat(kp_source, lip_close_ratio))

"""Wav2Lip audio encoder: one (80 mel x 16 step) window per video frame -> a 512-d feature.

Thirteen blocks of ``Conv2d -> BatchNorm2d -> (+ block input when residual) -> ReLU``. Parameter
names follow the released ``wav2lip.pth``: the checkpoint keys ``module.audio_encoder.<i>.conv_block.
{0,1}.*`` load here once the ``module.audio_encoder.`` prefix is removed
(:func:`audio_encoder_state_dict` does that). Spatial sizes for an 80x16 window:
80x16 -> (stride 3,1) 27x16 -> (stride 3) 9x6 -> (stride 3,2) 3x3 -> (3x3 valid) 1x1.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

#: Prefix of the audio-encoder tensors inside wav2lip.pth's ``state_dict``.
WAV2LIP_PREFIX = "module.audio_encoder."

#: (in, out, kernel, stride, padding, residual) of the 13 blocks, in state-dict order.
BLOCK_SPECS: tuple[tuple[int, int, int, int | tuple[int, int], int, bool], ...] = (
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
)
FEATURE_DIM = 512


class ConvBNBlock(nn.Module):
    """Conv2d + BatchNorm2d (``conv_block.0`` / ``conv_block.1``), optional identity skip, then ReLU.

    After :meth:`fuse_batchnorm_` the BatchNorm is folded into the convolution and ``conv_block.1``
    becomes an Identity (no parameters), so the block computes the same function with one op fewer.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int,
                 residual: bool) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H', W')."""
        y = self.conv_block(x)
        if self.residual:
            y = y + x
        return torch.relu(y)

    @torch.no_grad()
    def fuse_batchnorm_(self) -> None:
        """Fold the (eval-mode) BatchNorm statistics and affine into the convolution, in place."""
        conv, bn = self.conv_block[0], self.conv_block[1]
        if not isinstance(bn, nn.BatchNorm2d):
            return
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (cout,)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, bias=True).to(device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight.double() * scale[:, None, None, None])
        fused.bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
        self.conv_block = nn.Sequential(fused, nn.Identity())


class AudioEncoder(nn.Sequential):
    """Wav2Lip audio encoder (full size, ~2.8 M parameters, ~92 M multiply-adds per window).

    ``state_dict()`` keys: ``<i>.conv_block.0.{weight,bias}`` and
    ``<i>.conv_block.1.{weight,bias,running_mean,running_var,num_batches_tracked}`` for i = 0..12.
    Use it in eval mode (BatchNorm running statistics).
    """

    def __init__(self) -> None:
        super().__init__(*(ConvBNBlock(*spec) for spec in BLOCK_SPECS))

    def forward(self, mel_windows: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(T, 80, 16) or (T, 1, 80, 16) mel windows -> (T, 512) features (non-negative)."""
        x = mel_windows
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(
                f"AudioEncoder expects (T, 80, 16) or (T, 1, 80, 16) windows, got {tuple(x.shape)}"
            )
        for block in self:
            x = block(x)
        return x.flatten(1)

    def fuse_batchnorm_(self) -> AudioEncoder:
        """Fold every BatchNorm into its convolution, in place (inference only; returns self).

        The fused encoder matches the unfused eval-mode one within float32 rounding (~1e-6 relative);
        its state dict no longer has the ``conv_block.1.*`` BatchNorm keys.
        """
        for block in self:
            block.fuse_batchnorm_()
        return self.eval()

    def fused(self) -> AudioEncoder:
        """A BatchNorm-fused eval-mode copy (this module is left unchanged)."""
        return copy.deepcopy(self).fuse_batchnorm_()

    @torch.inference_mode()
    def encode_in_chunks(self, windows: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Encode (T, 80, 16) windows ``chunk`` frames at a time, without autograd.

        Each chunk is moved to the encoder's device and dtype (so the windows may stay on the CPU and
        the encoder may run in bf16/fp16); peak activation memory is bounded by ``chunk``, not T
        (about 0.65 MB of float32 activations per frame at the first blocks).

        Returns:
            (T, 512) float32 features on the encoder's device.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        param = next(self.parameters())
        out = torch.empty(windows.shape[0], FEATURE_DIM, dtype=torch.float32, device=param.device)
        for start in range(0, windows.shape[0], chunk):
            part = windows[start:start + chunk].to(device=param.device, dtype=param.dtype)
            out[start:start + part.shape[0]] = self(part).float()
        return out


def audio_encoder_state_dict(wav2lip_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pick the audio-encoder tensors out of a wav2lip.pth ``state_dict`` and drop their prefix.

    Keys without the ``module.audio_encoder.`` prefix (the rest of Wav2Lip) are ignored. Raises
    KeyError when none are present.
    """
    picked = {k[len(WAV2LIP_PREFIX):]: v for k, v in wav2lip_state.items() if k.startswith(WAV2LIP_PREFIX)}
    if not picked:
        raise KeyError(f"no '{WAV2LIP_PREFIX}*' tensors in this state dict (is it wav2lip.pth?)")
    return picked

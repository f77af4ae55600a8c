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

from ..networks.blocks import Hourglass, conv_norm, coordinate_grid_3d, grid_keypoint_gaussians, to_compute
from .fft_conv3d import fft_conv3d, fft_kernels
from .kernel_cache import KernelCache

#: Variance of the keypoint Gaussians in normalised coordinates.
KP_VARIANCE = 0.01


def _grid_sample_rows(volume: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(volume, rows[None], align_corners=False)`` for volume (1,C,D,H,W) and rows
    (L,H',W',3) -> (1,C,L,H',W'), bit for bit.

    PyTorch's CPU kernel parallelises over the batch only, so one batch item runs on one thread
    (64 ms a frame at full size). On a multi-threaded CPU the rows are cut into one batch item
    per thread over the same (expanded, not copied) volume, then joined back.
    """
    parts = min(torch.get_num_threads(), rows.shape[0]) if volume.device.type == "cpu" else 1
    if parts <= 1 or rows.shape[0] % parts:
        return F.grid_sample(volume, rows[None], align_corners=False)
    length, h, w, _ = rows.shape
    c = volume.shape[1]
    out = F.grid_sample(volume.expand(parts, *volume.shape[1:]), rows.reshape(parts, length // parts, h, w, 3),
                        align_corners=False)  # (parts, C, L/parts, H', W')
    return out.transpose(0, 1).reshape(1, c, length, h, w)


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
            out = _grid_sample_rows(volume, grids.reshape(b * n * d, h, w, 3))
            c = out.shape[1]
            return out.reshape(c, b, n, d, h, w).permute(1, 2, 0, 3, 4, 5)
        if volume.shape[0] != b:
            raise ValueError(f"volume batch {volume.shape[0]} must be 1 or match the grids' batch {b}")
        out = F.grid_sample(volume, grids.reshape(b, n * d, h, w, 3), align_corners=False)
        c = out.shape[1]
        return out.reshape(b, c, n, d, h, w).transpose(1, 2)


#: The ``mask`` convolution runs as :func:`~.fft_conv3d.fft_conv3d` on the CPU when H * W is at
#: least this and the network runs in one of :data:`FFT_MASK_DTYPES`. Measured on a 2-core AVX-512
#: (avx512_bf16) EPYC, 1 thread, full size: float32 270-290 ms instead of 715-757 ms. From bf16
#: channels-last input (float32 inside) 300-330 ms instead of 370-400 ms; at 2 threads W 0.477 ->
#: 0.452 s a frame. Its 46 MB of float32 transformed kernels and float32 work buffers add ~60 MB to
#: W's bf16 peak, which stays far below the float32 pipeline's, so bf16 uses it too.
FFT_MASK_MIN_PIXELS = 32 * 32
FFT_MASK_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)


def flipped_taps(weight: torch.Tensor) -> torch.Tensor:
    """(1,Cin,kh,kw) conv weight -> (kh*kw, Cin) float32 rows in reversed tap order, for
    :func:`single_output_conv2d`."""
    return weight.float().reshape(weight.shape[1], -1).t().flip(0).contiguous()


def single_output_conv2d(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None,
                         kernel_size: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=padding)`` for a weight with ONE output channel, float32.

    x (B,Cin,H,W) contiguous; taps = :func:`flipped_taps` (weight) -> (B,1,H,W). Each tap's
    channel sum is one row of a matrix product (B, kh*kw, H*W); ``F.fold`` then adds tap (i, j)'s
    plane shifted by (i - pad_h, j - pad_w) (fold scatters, so the taps come in reversed order).
    Needs stride 1 and padding (kh // 2, kw // 2) with odd kernel sides.
    """
    b, c, h, w = x.shape
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0 or tuple(padding) != (kh // 2, kw // 2):
        raise ValueError("single_output_conv2d needs odd kernel sides and 'same' padding")
    cols = torch.matmul(taps, x.reshape(b, c, h * w))  # (B, kh*kw, H*W)
    out = F.fold(cols, (h, w), (kh, kw), padding=tuple(padding))
    return out if bias is None else out + bias.float().reshape(1, -1, 1, 1)


class DenseMotionNetwork(KernelCache):
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
        out = grid.new_empty((b, kd.shape[1] + 1, *grid.shape))
        out[:, 0] = grid
        shifted = torch.sub(grid[None, None], kd[:, :, None, None, None, :], out=out[:, 1:])
        shifted.add_(ks[:, :, None, None, None, :])
        return out

    def heatmaps(self, spatial_size: tuple[int, int, int], kp_driving: torch.Tensor,
                 kp_source: torch.Tensor) -> torch.Tensor:
        """Gaussian(driving) - Gaussian(source) with a zero background channel first: (B,K+1,1,D,H,W)."""
        diff = grid_keypoint_gaussians(kp_driving, spatial_size, KP_VARIANCE) - grid_keypoint_gaussians(
            kp_source, spatial_size, KP_VARIANCE)
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
        compressed = F.relu_(conv_norm(self.compress, self.norm, to_compute(feature, dtype, self.channels_last),
                                       self))
        motions = self.sparse_motions((d, h, w), kp_driving, kp_source)
        deformed = sample_volume(compressed, motions)  # (B,K+1,c,D,H,W)
        heat = self.heatmaps((d, h, w), kp_driving, kp_source)
        net_in = torch.cat([heat, deformed], dim=2).reshape(b, -1, d, h, w)
        prediction = self.hourglass(to_compute(net_in, dtype, self.channels_last))

        logits = self.mask_logits(prediction)
        with torch.autocast(feature.device.type, enabled=False):
            mask = torch.softmax(logits.float(), dim=1)
            deformation = torch.einsum("bkdhw,bkdhwc->bdhwc", mask, motions)
        out = {"mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion_logits(prediction).float())
        return out

    def use_fft_mask(self, prediction: torch.Tensor) -> bool:
        """Whether :meth:`mask_logits` takes the FFT form for ``prediction`` (B,C,D,H,W)."""
        return (not self.training and prediction.device.type == "cpu" and prediction.dtype in FFT_MASK_DTYPES
                and self.mask.weight.dtype == prediction.dtype and not torch.is_autocast_enabled("cpu")
                and prediction.shape[-1] * prediction.shape[-2] >= FFT_MASK_MIN_PIXELS
                and not torch.compiler.is_compiling())

    def mask_logits(self, prediction: torch.Tensor) -> torch.Tensor:
        """``self.mask(prediction)``: (B,C,D,H,W) -> (B,K+1,D,H,W); FFT form where it is faster."""
        if not self.use_fft_mask(prediction):
            return self.mask(prediction)
        kernels = self.cached("mask_fft", lambda: fft_kernels(self.mask.weight))
        return fft_conv3d(prediction, kernels, self.mask.bias, self.mask.kernel_size[0])

    def occlusion_logits(self, prediction: torch.Tensor) -> torch.Tensor:
        """The occlusion conv7x7 over prediction (B,C,D,H,W) seen as (B,C*D,H,W) -> (B,1,H,W).

        A channels-last-3d prediction is not copied into a 2D map: the convolution runs as a
        conv3d whose kernel spans the whole depth (same taps, (1,C,D,7,7) view of the weight).
        A float32 NCDHW prediction takes :func:`single_output_conv2d` (one matrix product, then
        the 49 shifted tap planes summed by ``F.fold``), which is several times faster than a
        convolution with one output channel.
        """
        assert self.occlusion is not None
        b, _, d, h, w = prediction.shape
        dtype = self.occlusion.weight.dtype
        kh, kw = self.occlusion.kernel_size
        same = kh % 2 == 1 and kw % 2 == 1 and tuple(self.occlusion.padding) == (kh // 2, kw // 2)
        if (prediction.dtype == torch.float32 and dtype == torch.float32 and prediction.is_contiguous()
                and not self.training and same and self.occlusion.stride == (1, 1)):
            taps = self.cached("occlusion_taps", lambda: flipped_taps(self.occlusion.weight))
            return single_output_conv2d(prediction.reshape(b, -1, h, w), taps, self.occlusion.bias,
                                        self.occlusion.kernel_size, self.occlusion.padding)
        if self.channels_last and prediction.dtype == dtype and prediction.is_contiguous(
                memory_format=torch.channels_last_3d):
            weight = self.cached(("occlusion_3d", d), lambda: self.occlusion.weight.reshape(
                1, -1, d, *self.occlusion.kernel_size).contiguous(memory_format=torch.channels_last_3d))
            pad = self.occlusion.padding
            return F.conv3d(prediction, weight, self.occlusion.bias, padding=(0, pad[0], pad[1]))[:, :, 0]
        return self.occlusion(to_compute(prediction.reshape(b, -1, h, w), dtype, self.channels_last))

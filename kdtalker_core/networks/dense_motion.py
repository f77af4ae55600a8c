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

from ..networks.blocks import Hourglass, conv_norm, grid_keypoint_gaussians, to_compute
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


def axis_coordinates(n: int, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
    """One axis of :meth:`DenseMotionNetwork.sparse_motions`: (B,K+1,n) float32 normalised coordinates.

    kp_driving (B,K) and kp_source (1 or B,K) hold that axis's keypoint coordinate. Row 0 is the
    identity axis of :func:`~.blocks.coordinate_grid_3d`, row k+1 ``(axis - kp_driving[k]) +
    kp_source[k]``: the same float32 operations as the motions, so the values are equal bit for bit.
    """
    kd = kp_driving.float()
    axis = 2 * (torch.arange(n, dtype=torch.float32, device=kd.device) / (n - 1)) - 1
    out = axis.new_empty((kd.shape[0], kd.shape[1] + 1, n))
    out[:, 0] = axis
    torch.sub(axis, kd[:, :, None], out=out[:, 1:]).add_(kp_source.float()[:, :, None])
    return out


def motion_axes(spatial_size: tuple[int, int, int], kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The x, y and z :func:`axis_coordinates` of every motion over a (D,H,W) volume:
    (B,K+1,W), (B,K+1,H), (B,K+1,D) float32."""
    d, h, w = spatial_size
    xs, ys, zs = (axis_coordinates(n, kp_driving[..., i], kp_source[..., i]) for i, n in enumerate((w, h, d)))
    return xs, ys, zs


def heatmap_difference(spatial_size: tuple[int, int, int], kp_driving: torch.Tensor, kp_source: torch.Tensor,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian(driving) - Gaussian(source) per keypoint on the (D,H,W) grid: (B,K,D,H,W), float32
    or written into ``out`` (any float dtype)."""
    return torch.sub(grid_keypoint_gaussians(kp_driving, spatial_size, KP_VARIANCE),
                     grid_keypoint_gaussians(kp_source, spatial_size, KP_VARIANCE), out=out)


def linear_sampling_matrix(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Weights of 1D linear sampling as ``grid_sample`` does it (align_corners=False, zeros padding).

    coords (...,n) normalised -> (...,n,size) float32: row j holds 1 - f at floor(u) and f at
    floor(u) + 1 for u = ((coords[j] + 1) * size - 1) / 2, f = u - floor(u); taps outside
    [0, size) are left out (they read zeros).
    """
    u = ((coords.float() + 1) * size - 1) / 2
    lo = torch.floor(u)
    w_hi = (u - lo)[..., None]
    w_lo = ((lo + 1) - u)[..., None]
    index = torch.arange(size, dtype=torch.float32, device=coords.device)
    lo = lo[..., None]
    zero = w_lo.new_zeros(())
    return torch.where(index == lo, w_lo, zero) + torch.where(index == lo + 1, w_hi, zero)


def _source_planes(volume: torch.Tensor) -> torch.Tensor:
    """volume (C,D,H,W) -> its C*D planes as a float32 (1,C*D,H,W) channels-last map (a fresh copy)."""
    c, d, h, w = volume.shape
    planes = volume.new_empty((h, w, c, d), dtype=torch.float32)
    planes.copy_(volume.permute(2, 3, 0, 1))
    return planes.permute(2, 3, 0, 1).reshape(1, c * d, h, w)


def _sample_depth(weights: torch.Tensor, planes: torch.Tensor, target: torch.Tensor) -> None:
    """target (N,C,D,H,W) = the (N*C,D,D) ``weights`` applied along the depth of planes (N*C,D,H*W).

    A float32 target whose items are contiguous (slices of a larger buffer) is written by one
    product per item; any other target (another dtype, other strides) through a float32 copy.
    """
    n, c, d, h, w = target.shape
    if target.dtype == torch.float32 and target[0].is_contiguous():
        for j in range(n):
            torch.bmm(weights[j * c:(j + 1) * c], planes[j * c:(j + 1) * c], out=target[j].view(c, d, h * w))
    else:
        target.copy_(torch.bmm(weights, planes).view(n, c, d, h, w))


def sample_translated(volume: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """``sample_volume(volume, sparse_motions((D,H,W), kp_driving, kp_source))`` without the 3D grids.

    volume (1 or B,C,D,H,W) any float dtype / memory format; kp_driving (B,K,3); kp_source (1 or
    B,K,3) -> (B,K+1,C,D,H,W) float32, equal to the trilinear sampling up to float rounding (~1e-7
    relative). ``out`` (optional, that shape, any float dtype and strides) receives the result,
    rounded once from float32 (e.g. the ``[:, :, 1:]`` slice of a (B,K+1,C+1,D,H,W) buffer).

    Every motion is the identity grid plus one constant shift, and in each grid x depends only on
    the column, y only on the row, z only on the depth, so trilinear sampling factorises: bilinear
    in (H, W) by a 2D ``grid_sample`` (vectorised on the CPU, unlike the 3D kernel) of the C*D
    planes, one batch item per motion over the same (expanded, not copied) planes; then linear in
    D by a batched product with (D,D) two-tap matrices (:func:`linear_sampling_matrix`). On the
    CPU the motions go in groups of one per thread (the 2D kernel parallelises over the batch), so
    a group's float32 intermediates stay in cache before they are stored (or cast) into ``out``.
    Measured full size (C=4, 16x64x64, K=21, keypoints in [-0.3,0.3]^3, driving = source + 0.03 *
    randn) on a 2-core Zen 5 EPYC VM, 1 thread, min/median: 10.6/11.8 ms from a bf16 channels-last
    volume, 11.6/12.2 ms from float32, against 53.5/55.3 and 55.8/57.0 ms for the 3D ``grid_sample``
    of the motions; largest difference 1.6e-7 of the largest value.
    """
    b, k = kp_driving.shape[:2]
    bv, c, d, h, w = volume.shape
    if bv not in (1, b):
        raise ValueError(f"volume batch {bv} must be 1 or match the keypoints' batch {b}")
    if out is None:
        out = volume.new_empty((b, k + 1, c, d, h, w), dtype=torch.float32)
    group = max(1, torch.get_num_threads()) if volume.device.type == "cpu" else k + 1
    with torch.autocast(volume.device.type, enabled=False):
        xs, ys, zs = motion_axes((d, h, w), kp_driving, kp_source)
        depth = linear_sampling_matrix(zs, d)[:, :, None].expand(b, k + 1, c, d, d).reshape(b, (k + 1) * c, d, d)
        for i in range(b):
            planes = _source_planes(volume[i if bv > 1 else 0])
            grid = torch.stack([xs[i, :, None, :].expand(k + 1, h, w), ys[i, :, :, None].expand(k + 1, h, w)], -1)
            for j0 in range(0, k + 1, group):
                j1 = min(k + 1, j0 + group)
                flat = F.grid_sample(planes.expand(j1 - j0, -1, -1, -1), grid[j0:j1], align_corners=False)
                _sample_depth(depth[i, j0 * c:j1 * c], flat.view(-1, d, h * w), out[i, j0:j1])
    return out


def deformation_from(mask: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
    """``einsum("bkdhw,bkdhwc->bdhwc", mask, sparse_motions(...))`` without building the motions.

    mask (B,K+1,D,H,W) float32 weights over the motions; kp_driving (B,K,3); kp_source (1 or B,K,3)
    -> deformation (B,D,H,W,3) float32. Component x of motion k depends on the column only (y on
    the row, z on the depth), so each component is one contraction of the mask with a (B,K+1,n)
    :func:`axis_coordinates` row. Full size (K=21, 16x64x64) on a 2-core Zen 5 EPYC VM, 1 thread:
    about 3-4 ms instead of 7-10 ms for the contraction with the motions, plus the 1.5 ms and
    17 MB of building them.
    """
    xs, ys, zs = motion_axes(tuple(mask.shape[2:]), kp_driving, kp_source)
    return torch.stack([torch.einsum("bkdhw,bkw->bdhw", mask, xs), torch.einsum("bkdhw,bkh->bdhw", mask, ys),
                        torch.einsum("bkdhw,bkd->bdhw", mask, zs)], dim=-1)


#: The ``mask`` convolution runs as :func:`~.fft_conv3d.fft_conv3d` on the CPU when H * W is at
#: least this and the network runs in one of :data:`FFT_MASK_DTYPES`. Measured on a 2-core Zen 5
#: EPYC VM (avx512_bf16), 1 thread, full size: float32 136-146 ms (direct conv 715-757 ms); bf16
#: channels-last input 122-131 ms (oneDNN's direct bf16 conv 413-428 ms); W 1.50 -> 1.34 s (fp32),
#: 0.78 -> 0.57 s (bf16) a frame at 1 thread. Caches 44.7 MiB float32 kernels (float32) or 69.5 MiB
#: bf16 3D kernels (bf16); one call adds 50 / 98 MiB of work memory. At 32x32 the FFT form is as
#: fast as the old one in float32 and faster in bf16; at 16x16 the direct convolution wins.
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


def depth_folded_taps(weight: torch.Tensor, depth: int) -> torch.Tensor:
    """(1, C*depth, kh, kw) conv2d weight of a (C, depth)-flattened map -> (depth, C, kh*kw) taps in
    reversed order, in the weight's dtype, for :func:`single_output_conv_channels_last`."""
    c = weight.shape[1] // depth
    return weight.reshape(c, depth, weight.shape[2] * weight.shape[3]).transpose(0, 1).flip(-1).contiguous()


def single_output_conv_channels_last(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None,
                                     kernel_size: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """``conv2d(x.reshape(B, C*D, H, W), weight, bias, padding)`` for ONE output channel, float32 result.

    x (B,C,D,H,W) in channels-last-3d memory (each depth slice is an (H*W, C) matrix in place) and
    the taps' dtype; taps = :func:`depth_folded_taps` (weight, D). One batched product over the depth
    slices gives (D, H*W, kh*kw) tap planes (float32 accumulation inside; in bf16 each plane value is
    rounded once), which are summed over depth in float32; ``F.fold`` then adds the shifted tap
    planes as in :func:`single_output_conv2d`. Needs stride 1 and 'same' padding with odd sides.

    Measured full size ((1,142,16,64,64), 7x7, the random full-size network's own prediction) on a
    2-core Zen 5 EPYC VM (avx512_bf16), 1 thread, min/median: bf16 5.0/5.9 ms against 34.5/39.4 ms
    for the depth-spanning conv3d with one output channel (oneDNN), float32 17.2/18.1 against
    77.3/92.6 ms. Error against the float64 convolution of the same inputs, relative to the largest
    output: bf16 3.13e-3 (oneDNN's bf16 conv 3.14e-3; after the sigmoid 1.1e-4 both), float32 4.6e-7
    (conv 2.5e-6). Copying the map into (H*W, D*C) rows for a single product of depth D*C (one
    rounding per tap plane instead of D) was slower: 1.5 ms for the copy, 5.4 ms in all.
    """
    b, c, d, h, w = x.shape
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0 or tuple(padding) != (kh // 2, kw // 2):
        raise ValueError("single_output_conv_channels_last needs odd kernel sides and 'same' padding")
    slices = x.permute(0, 2, 3, 4, 1).reshape(b * d, h * w, c)  # a view of the channels-last memory
    planes = torch.bmm(slices, taps.expand(b, d, c, kh * kw).reshape(b * d, c, kh * kw))
    cols = planes.view(b, d, h * w, kh * kw).float().sum(1).transpose(1, 2)  # (B, kh*kw, H*W)
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
        kp_driving (B,K,3); kp_source (1 or B,K,3). Each component depends on one axis only, so the
        three (B,K+1,n) :func:`axis_coordinates` are broadcast into place (same values bit for bit as
        shifting the 3D grid; full size, 2-core Zen 5 EPYC VM, 1 thread, min/median 1.5/1.7 ms
        instead of 5.0/5.1).
        """
        xs, ys, zs = motion_axes(spatial_size, kp_driving, kp_source)
        full = (*xs.shape[:2], *spatial_size)
        return torch.stack([xs[:, :, None, None, :].expand(full), ys[:, :, None, :, None].expand(full),
                            zs[:, :, :, None, None].expand(full)], -1)

    def heatmaps(self, spatial_size: tuple[int, int, int], kp_driving: torch.Tensor,
                 kp_source: torch.Tensor) -> torch.Tensor:
        """Gaussian(driving) - Gaussian(source) with a zero background channel first: (B,K+1,1,D,H,W)."""
        diff = heatmap_difference(spatial_size, kp_driving, kp_source)
        background = diff.new_zeros((diff.shape[0], 1, *diff.shape[2:]))
        return torch.cat([background, diff], dim=1).unsqueeze(2)

    def motion_input(self, compressed: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The hourglass input, contiguous (B,(K+1)*(c+1),D,H,W) in ``dtype``: per motion its heatmap
        channel, then the c compressed channels sampled by that motion.

        Equals ``cat([heatmaps(...), sample_volume(compressed, sparse_motions(...))], 2)`` reshaped and
        cast to ``dtype`` (up to float rounding in the sampling), but both parts are computed in float32
        and written straight into one buffer of ``dtype``, the sampling by :func:`sample_translated`.
        compressed (1 or B,c,D,H,W). Writing bf16 here (the float32 intermediates cast per group of
        motions while in cache) instead of casting a float32 buffer afterwards saved 1.5 ms of 18.5.

        Measured full size on a 2-core Zen 5 EPYC VM, 1 thread, min/median, motions + this + the
        blocked channels-last copy of :func:`~.blocks.to_compute` against motions + ``sample_volume``
        + heatmaps + cat + the strided conversion:
        bf16 channels-last 18.7/19.3 against 80.2/84.3 ms (31 of 7.2M bf16 values differ by one
        rounding step), float32 NCDHW 13.9/14.5 against 62.2/63.3 ms (relative difference 1.6e-7).
        """
        b, k = kp_driving.shape[:2]
        c, d, h, w = compressed.shape[1:]
        out = torch.empty((b, k + 1, c + 1, d, h, w), dtype=dtype, device=compressed.device)
        out[:, 0, 0].zero_()
        heatmap_difference((d, h, w), kp_driving, kp_source, out=out[:, 1:, 0])
        sample_translated(compressed, kp_driving, kp_source, out=out[:, :, 1:])
        return out.view(b, -1, d, h, w)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        """feature (1 or B,C,D,H,W); kp_driving (B,K,3); kp_source (1 or B,K,3) ->

        ``mask`` (B,K+1,D,H,W) softmax weights, ``deformation`` (B,D,H,W,3) normalised sampling
        coordinates (float32), and ``occlusion_map`` (B,1,H,W) in (0,1) when enabled.
        """
        d, h, w = feature.shape[2:]
        dtype = self.compress.weight.dtype
        compressed = F.relu_(conv_norm(self.compress, self.norm, to_compute(feature, dtype, self.channels_last),
                                       self))
        net_in = self.motion_input(compressed, kp_driving, kp_source, dtype)
        prediction = self.hourglass(to_compute(net_in, dtype, self.channels_last))

        logits = self.mask_logits(prediction)
        with torch.autocast(feature.device.type, enabled=False):
            mask = torch.softmax(logits.float(), dim=1)
            deformation = deformation_from(mask, kp_driving, kp_source)
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

        A float32 NCDHW prediction takes :func:`single_output_conv2d` (one matrix product, then
        the 49 shifted tap planes summed by ``F.fold``), which is several times faster than a
        convolution with one output channel. A float32 or bf16 channels-last-3d prediction on the CPU
        takes :func:`single_output_conv_channels_last` (one product per depth slice, in place, float32
        result; 5-7x faster than the conv3d below). Elsewhere a channels-last-3d prediction is not
        copied into a 2D map: the convolution runs as a conv3d whose kernel spans the whole depth
        (same taps, (1,C,D,7,7) view of the weight).
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
        if (prediction.dtype == dtype and dtype in (torch.float32, torch.bfloat16) and prediction.device.type == "cpu"
                and prediction.is_contiguous(memory_format=torch.channels_last_3d) and not self.training and same
                and self.occlusion.stride == (1, 1) and self.occlusion.dilation == (1, 1)):
            taps = self.cached(("occlusion_depth_taps", d), lambda: depth_folded_taps(self.occlusion.weight, d))
            return single_output_conv_channels_last(prediction, taps, self.occlusion.bias,
                                                    self.occlusion.kernel_size, self.occlusion.padding)
        if self.channels_last and prediction.dtype == dtype and prediction.is_contiguous(
                memory_format=torch.channels_last_3d):
            weight = self.cached(("occlusion_3d", d), lambda: self.occlusion.weight.reshape(
                1, -1, d, *self.occlusion.kernel_size).contiguous(memory_format=torch.channels_last_3d))
            pad = self.occlusion.padding
            return F.conv3d(prediction, weight, self.occlusion.bias, padding=(0, pad[0], pad[1]))[:, :, 0]
        return self.occlusion(to_compute(prediction.reshape(b, -1, h, w), dtype, self.channels_last))

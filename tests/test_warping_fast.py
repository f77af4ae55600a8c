"""Fast paths of the warping network W against the plain PyTorch computations they replace.

Phase-split upsampling convolution (UpBlock3d), BatchNorm folding, the FFT form of the 7x7x7 mask
convolution, the occlusion convolution (one product and fold; per depth slice; depth-spanning
conv3d), the separable keypoint Gaussians and motions, the separable sampling of the translated
keypoint motions and the hourglass input built in one buffer: each is compared with F.interpolate /
F.conv3d / F.grid_sample / F.batch_norm / torch.cat on float32 and bf16, batch 1 and 2,
channels-last-3d and not.
"""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from small_networks import SMALL_WARP, randomize_norm_stats

from kdtalker_core.networks import winograd3d
from kdtalker_core.networks.blocks import (
    FOLD_MIN_VOXELS,
    DownBlock3d,
    UpBlock3d,
    conv_norm,
    coordinate_grid_3d,
    grid_keypoint_gaussians,
    keypoint_gaussians,
    to_compute,
)
from kdtalker_core.networks.dense_motion import (
    FFT_MASK_DTYPES,
    FFT_MASK_MIN_PIXELS,
    DenseMotionNetwork,
    deformation_from,
    depth_folded_taps,
    flipped_taps,
    linear_sampling_matrix,
    sample_translated,
    sample_volume,
    single_output_conv2d,
    single_output_conv_channels_last,
)
from kdtalker_core.networks.fast_conv3d import PHASE_MIN_PIXELS, KernelCache, fold_batchnorm
from kdtalker_core.networks.fft_conv3d import fft_conv3d, fft_kernels
from kdtalker_core.networks.warping import WarpingNetwork

pytestmark = pytest.mark.usefixtures("one_thread")

#: float32 fast path vs plain float32, relative to the output's largest magnitude.
FP32_REL = 1e-5
#: bf16 fast path vs the float32 computation on the same bf16-rounded inputs and weights; the
#: plain bf16 convolution is held to the same bound (one bf16 rounding of the output, 2^-8 = 4e-3,
#: plus rounded phase-kernel sums).
BF16_REL = 2e-2

CASES = [(torch.float32, False, 1), (torch.float32, True, 2), (torch.bfloat16, True, 1), (torch.bfloat16, False, 2)]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float(), ref.detach().float()
    return float((out - ref).abs().max() / ref.abs().max())


def _layout(t: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last_3d if channels_last and t.dim() == 5 else torch.contiguous_format
    return t.to(dtype=dtype, memory_format=fmt)


def _random_norm(norm: torch.nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = norm.num_features
    norm.running_mean.copy_(0.3 * torch.randn(n, generator=g))
    norm.running_var.copy_(0.5 + torch.rand(n, generator=g))
    norm.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=g))
    norm.bias.data.copy_(0.1 * torch.randn(n, generator=g))


def _upblock_reference(block: UpBlock3d, x: torch.Tensor) -> torch.Tensor:
    """The plain computation in float32: interpolate -> conv3d -> eval batch_norm -> relu."""
    n, c = block.norm, block.conv
    y = F.conv3d(F.interpolate(x.float(), scale_factor=(1, 2, 2)), c.weight.float(), c.bias.float(), padding=1)
    y = F.batch_norm(y, n.running_mean.float(), n.running_var.float(), n.weight.float(), n.bias.float(),
                     training=False, eps=n.eps)
    return F.relu(y)


@pytest.mark.parametrize(("dtype", "channels_last", "batch"), CASES)
def test_upblock_phase_form_equals_interpolate_then_conv(dtype: torch.dtype, channels_last: bool, batch: int) -> None:
    torch.manual_seed(0)
    block = UpBlock3d(12, 10).eval()
    _random_norm(block.norm, 1)
    block = block.to(dtype)
    for p in block.parameters():
        p.data = _layout(p.data, dtype, channels_last)
    x = _layout(torch.randn(batch, 12, 3, 8, 8), dtype, channels_last)  # 8 x 8 = PHASE_MIN_PIXELS
    assert 8 * 8 >= PHASE_MIN_PIXELS
    with torch.no_grad():
        out = block(x)
    assert "phases" in block._kernel_cache  # the phase form ran
    assert out.shape == (batch, 10, 3, 16, 16) and out.dtype == dtype
    ref = _upblock_reference(block, x)
    assert _rel(out, ref) <= (FP32_REL if dtype == torch.float32 else BF16_REL)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
    if dtype == torch.bfloat16:  # not worse than the plain bf16 path
        plain = F.relu(block.norm(block.conv(F.interpolate(x, scale_factor=(1, 2, 2)))))
        assert _rel(out, ref) <= 2 * _rel(plain, ref) + 1e-3


def test_upblock_small_maps_and_training_take_the_plain_path() -> None:
    block = UpBlock3d(4, 3).eval()
    with torch.no_grad():
        block(torch.randn(1, 4, 2, 4, 4))  # 16 pixels < PHASE_MIN_PIXELS
    assert "phases" not in block._kernel_cache
    block.train()
    with torch.no_grad():
        block(torch.randn(2, 4, 2, 8, 8))
    assert "phases" not in block._kernel_cache


def test_kernel_cache_follows_new_weights_and_dtypes() -> None:
    torch.manual_seed(1)
    block = UpBlock3d(6, 5).eval()
    x = torch.randn(1, 6, 2, 8, 8)
    with torch.no_grad():
        block(x)
        other = UpBlock3d(6, 5).eval()
        _random_norm(other.norm, 3)
        block.load_state_dict(other.state_dict())
        assert block._kernel_cache == {}
        assert _rel(block(x), _upblock_reference(other, x)) <= FP32_REL
        block.to(torch.bfloat16)
        assert block._kernel_cache == {}
        assert block(x.bfloat16()).dtype == torch.bfloat16


def test_kernel_cache_makes_each_kernel_once_for_concurrent_threads() -> None:
    # Two frame threads asking for the same kernel at once: one makes it, the other waits for it
    # (same object back); a make() may ask for another cached kernel (re-entrant).
    holder = KernelCache()
    made: list[str] = []
    started = threading.Event()

    def make_slow() -> torch.Tensor:
        made.append("slow")
        started.set()
        time.sleep(0.05)
        return holder.cached("inner", lambda: made.append("inner") or torch.ones(1)) + 1

    results: list[torch.Tensor] = []
    first = threading.Thread(target=lambda: results.append(holder.cached("k", make_slow)))
    first.start()
    started.wait(5)
    results.append(holder.cached("k", lambda: made.append("second") or torch.zeros(1)))
    first.join()
    assert made == ["slow", "inner"]
    assert results[0] is results[1] and float(results[0]) == 2.0


@pytest.mark.parametrize(("dtype", "channels_last", "batch"), CASES)
def test_folded_batchnorm_equals_conv_then_batch_norm(dtype: torch.dtype, channels_last: bool, batch: int) -> None:
    torch.manual_seed(2)
    conv, norm = torch.nn.Conv3d(5, 7, 3, padding=1), torch.nn.BatchNorm3d(7).eval()
    _random_norm(norm, 4)
    ref_in = torch.randn(batch, 5, 4, 64, 64)
    assert ref_in[0, 0].numel() >= FOLD_MIN_VOXELS
    holder = KernelCache()
    conv, norm = conv.to(dtype), norm.to(dtype)
    conv.weight.data = _layout(conv.weight.data, dtype, channels_last)
    x = _layout(ref_in, dtype, channels_last)
    with torch.no_grad():
        out = conv_norm(conv, norm, x, holder)
        ref = F.batch_norm(F.conv3d(x.float(), conv.weight.float(), conv.bias.float(), padding=1),
                           norm.running_mean.float(), norm.running_var.float(), norm.weight.float(),
                           norm.bias.float(), training=False, eps=norm.eps)
    assert "folded" in holder._kernel_cache
    assert out.dtype == dtype
    assert _rel(out, ref) <= (FP32_REL if dtype == torch.float32 else BF16_REL)


def test_fold_batchnorm_without_conv_bias_or_affine() -> None:
    torch.manual_seed(3)
    w = torch.randn(4, 3, 1, 1, 1)
    norm = torch.nn.BatchNorm3d(4, affine=False).eval()
    norm.running_mean.copy_(torch.randn(4))
    norm.running_var.copy_(torch.rand(4) + 0.5)
    fw, fb = fold_batchnorm(w, None, norm)
    x = torch.randn(2, 3, 2, 3, 3)
    torch.testing.assert_close(F.conv3d(x, fw, fb), norm(F.conv3d(x, w)), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("dtype", "channels_last", "batch"), CASES)
@pytest.mark.parametrize(("size", "k"), [((4, 20, 37), 7), ((3, 16, 16), 5)])
def test_fft_conv3d_equals_direct_conv3d(dtype: torch.dtype, channels_last: bool, batch: int,
                                         size: tuple[int, int, int], k: int) -> None:
    torch.manual_seed(4)
    w = torch.randn(3, 5, k, k, k) / (5 * k ** 3) ** 0.5
    b = torch.randn(3)
    x = _layout(torch.randn(batch, 5, *size), dtype, channels_last)
    chunks = 1 if batch == 1 else 3  # 5 input channels in chunks of 2, 2, 1
    out = fft_conv3d(x, fft_kernels(w.to(dtype), chunks=chunks), b.to(dtype), k)
    ref = F.conv3d(x.double(), w.to(dtype).double(), b.to(dtype).double(), padding=k // 2)
    assert out.shape == ref.shape and out.dtype == dtype
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
    # float32: below the direct float32 convolution's own error (~1e-6 here); bf16: one output rounding.
    assert _rel(out, ref) <= (FP32_REL if dtype == torch.float32 else 1e-2)


def _dense_motion() -> DenseMotionNetwork:
    torch.manual_seed(5)
    warp = randomize_norm_stats(WarpingNetwork(**SMALL_WARP), 6)
    return warp.dense_motion_network


@pytest.mark.parametrize(("dtype", "channels_last"),
                         [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True)])
def test_mask_fft_form_matches_the_mask_conv_on_large_maps(dtype: torch.dtype, channels_last: bool) -> None:
    dm = copy.deepcopy(_dense_motion()).to(dtype)
    pred = _layout(torch.randn(2, dm.mask.in_channels, 4, 32, 32), dtype, channels_last)
    assert 32 * 32 >= FFT_MASK_MIN_PIXELS and dm.use_fft_mask(pred) == (dtype in FFT_MASK_DTYPES)
    assert not dm.use_fft_mask(pred[..., :16, :16]) and not dm.use_fft_mask(pred.half())
    with torch.no_grad():
        out = dm.mask_logits(pred)
        ref = F.conv3d(pred.float(), dm.mask.weight.float(), dm.mask.bias.float(), padding=3)
    assert "mask_fft" in dm._kernel_cache
    assert out.dtype == dtype
    assert _rel(out, ref) <= (FP32_REL if dtype == torch.float32 else 1e-2)


def _channels_last_dense_motion(dtype: torch.dtype) -> DenseMotionNetwork:
    dm = copy.deepcopy(_dense_motion()).to(dtype)
    dm.channels_last = True
    for p in dm.parameters():
        if p.dim() in (4, 5):
            p.data = p.data.contiguous(
                memory_format=torch.channels_last if p.dim() == 4 else torch.channels_last_3d)
    return dm


@pytest.mark.parametrize(("dtype", "batch"), [(torch.float32, 1), (torch.bfloat16, 2)])
def test_occlusion_channels_last_as_depth_slice_products(dtype: torch.dtype, batch: int) -> None:
    dm = _channels_last_dense_motion(dtype)
    c, d = dm.hourglass.out_filters, 8
    pred = _layout(torch.relu(torch.randn(batch, c, d, 16, 16)), dtype, True)
    weight, bias = dm.occlusion.weight, dm.occlusion.bias
    with torch.no_grad():
        out = dm.occlusion_logits(pred)
        ref = F.conv2d(pred.double().reshape(batch, c * d, 16, 16), weight.double(), bias.double(), padding=3)
        plain = F.conv2d(pred.reshape(batch, c * d, 16, 16), weight, bias, padding=3)  # oneDNN in dtype
    assert ("occlusion_depth_taps", d) in dm._kernel_cache
    assert out.shape == (batch, 1, 16, 16) and out.dtype == torch.float32
    if dtype == torch.float32:
        assert _rel(out, ref) <= FP32_REL
    else:  # tap planes rounded to bf16 once: no worse than the bf16 convolution's own output rounding
        assert _rel(out, ref) <= min(2 * _rel(plain, ref) + 1e-3, 1e-2)


def test_occlusion_depth_spanning_conv3d_outside_inference() -> None:
    dm = _channels_last_dense_motion(torch.float32).train()  # training: not the depth-slice products
    c, d = dm.hourglass.out_filters, 8
    pred = _layout(torch.randn(2, c, d, 16, 16), torch.float32, True)
    with torch.no_grad():
        out = dm.occlusion_logits(pred)
        ref = F.conv2d(pred.reshape(2, c * d, 16, 16), dm.occlusion.weight, dm.occlusion.bias, padding=3)
    assert ("occlusion_3d", d) in dm._kernel_cache and ("occlusion_depth_taps", d) not in dm._kernel_cache
    assert _rel(out, ref) <= FP32_REL


def test_single_output_conv_channels_last_rejects_other_paddings() -> None:
    w = torch.randn(1, 6, 5, 5)
    x = _layout(torch.randn(2, 3, 2, 9, 7), torch.float32, True)
    with pytest.raises(ValueError, match="same"):
        single_output_conv_channels_last(x, depth_folded_taps(w, 2), None, (5, 5), (1, 1))
    torch.testing.assert_close(single_output_conv_channels_last(x, depth_folded_taps(w, 2), None, (5, 5), (2, 2)),
                               F.conv2d(x.reshape(2, 6, 9, 7), w, padding=2), atol=1e-5, rtol=1e-5)


def test_separable_gaussians_and_sparse_motions() -> None:
    torch.manual_seed(7)
    size = (5, 12, 9)
    kp = 0.6 * torch.randn(2, 21, 3)
    grid = coordinate_grid_3d(size, torch.float32)
    torch.testing.assert_close(grid_keypoint_gaussians(kp, size, 0.01), keypoint_gaussians(kp, grid, 0.01),
                               atol=1e-6, rtol=1e-5)
    dm = _dense_motion()
    kd, ks = kp, 0.6 * torch.randn(1, 21, 3)
    motions = dm.sparse_motions(size, kd, ks)
    assert torch.equal(motions[:, 0], grid.expand(2, *grid.shape))
    assert torch.equal(motions[:, 1:], (grid[None, None] - kd[:, :, None, None, None]) + ks[:, :, None, None, None])
    # The deformation contracts the softmax mask with the motions; computed per axis without them.
    mask = torch.softmax(torch.randn(2, 22, *size), dim=1)
    for source in (ks, ks.expand(2, -1, -1) + 0.01):
        expected = torch.einsum("bkdhw,bkdhwc->bdhwc", mask, dm.sparse_motions(size, kd, source))
        torch.testing.assert_close(deformation_from(mask, kd, source), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 2])
def test_occlusion_float32_as_one_matrix_product_and_fold(batch: int) -> None:
    dm = _dense_motion()
    c, d = dm.hourglass.out_filters, 8
    pred = torch.randn(batch, c, d, 16, 16)
    with torch.no_grad():
        out = dm.occlusion_logits(pred)
        ref = F.conv2d(pred.double().reshape(batch, c * d, 16, 16), dm.occlusion.weight.double(),
                       dm.occlusion.bias.double(), padding=3)
    assert "occlusion_taps" in dm._kernel_cache
    assert out.shape == (batch, 1, 16, 16)
    assert _rel(out, ref) <= FP32_REL


def test_single_output_conv2d_rejects_other_paddings() -> None:
    w = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError, match="same"):
        single_output_conv2d(torch.randn(1, 3, 8, 8), flipped_taps(w), None, (5, 5), (1, 1))
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(single_output_conv2d(x, flipped_taps(w), None, (5, 5), (2, 2)),
                               F.conv2d(x, w, padding=2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_downblock_reduced_precision_pooling_equals_float32_avg_pool(channels_last: bool) -> None:
    torch.manual_seed(8)
    block = DownBlock3d(4, 6).eval().to(torch.bfloat16)
    x = _layout(torch.randn(2, 4, 3, 8, 10), torch.bfloat16, channels_last)
    with torch.no_grad():
        out = block(x)
        y = F.relu(block.norm(block.conv(x)))
        ref = F.avg_pool3d(y.float(), kernel_size=(1, 2, 2)).to(torch.bfloat16)
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=torch.channels_last_3d) == channels_last


@pytest.mark.parametrize("rows", [352, 16, 7])
def test_grid_sample_rows_split_over_threads_is_bit_exact(rows: int) -> None:
    from kdtalker_core.networks.dense_motion import _grid_sample_rows

    gen = torch.Generator().manual_seed(3)
    volume = torch.randn(1, 4, 6, 10, 12, generator=gen)
    grid = torch.rand(rows, 5, 7, 3, generator=gen) * 2.2 - 1.1  # some samples fall outside (zeros)
    expected = F.grid_sample(volume, grid[None], align_corners=False)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            torch.testing.assert_close(_grid_sample_rows(volume, grid), expected, atol=0, rtol=0)
    finally:
        torch.set_num_threads(threads)


# --- depth-folded Winograd F(2x2,3x3) for bf16 3x3x3 convolutions (networks/winograd3d.py) -------------------------

#: Depth-folded Winograd in bf16 vs the float32 convolution of the same rounded inputs: at most this many
#: times the plain bf16 convolution's error (rounded transformed tiles and kernels, rounded partial sums).
WINO3D_VS_DIRECT = 3.5


@pytest.mark.parametrize(("dtype", "channels_last", "batch", "depth"),
                         [(torch.float32, False, 1, 3), (torch.float32, True, 2, 1), (torch.bfloat16, True, 1, 4),
                          (torch.bfloat16, False, 2, 2)])
def test_winograd3d_equals_conv3d(dtype: torch.dtype, channels_last: bool, batch: int, depth: int) -> None:
    torch.manual_seed(11)
    x = _layout(torch.randn(batch, 9, depth, 10, 14), dtype, channels_last)
    w = (torch.randn(13, 9, 3, 3, 3) / (27 * 9) ** 0.5).to(dtype)
    b = torch.randn(13).to(dtype)
    u = winograd3d.transform_weight3d(w)
    assert u.shape == (3, 16, 9, 13) and u.dtype == dtype
    ref = F.conv3d(x.float(), w.float(), b.float(), padding=1)
    for band_bytes in (1, winograd3d.BAND_BYTES):  # one tile row per band / one band
        out = winograd3d.conv3x3x3(x, u, b, band_bytes=band_bytes)
        assert out.shape == ref.shape and out.dtype == dtype
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
        if dtype == torch.float32:
            assert _rel(out, ref) <= FP32_REL
        else:
            direct = F.conv3d(x, w, b, padding=1)
            assert _rel(out, ref) <= WINO3D_VS_DIRECT * _rel(direct, ref)
    tol = FP32_REL if dtype == torch.float32 else BF16_REL
    assert _rel(winograd3d.conv3x3x3(x, u, None), ref - b.float()[:, None, None, None]) <= tol
    relu = winograd3d.conv3x3x3(x, u, b, relu=True)
    assert relu.min() >= 0 and _rel(relu, F.relu(ref)) <= tol


def test_winograd3d_shape_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDTALKER_BF16_WINOGRAD3D", raising=False)
    def x(c: int, dtype: torch.dtype = torch.bfloat16, channels_last: bool = True, hw: int = 64) -> torch.Tensor:
        t = torch.empty(1, c, 16, hw, hw, dtype=dtype)
        return t.to(memory_format=torch.channels_last_3d) if channels_last else t

    def w(cout: int, cin: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.empty(cout, cin, 3, 3, 3, dtype=dtype)

    # The channel rule, unless the probe found oneDNN's direct convolution clearly faster here.
    keeps = not winograd3d.direct_clearly_faster()
    assert winograd3d.preferred(x(142), w(142, 142)) == keeps  # the dense-motion decoder's final conv
    assert winograd3d.preferred(x(128), w(128, 128)) == keeps
    assert not winograd3d.preferred(x(64, hw=32), w(128, 64))
    assert not winograd3d.preferred(x(110), w(64, 110))  # few output channels: oneDNN wins
    assert not winograd3d.preferred(x(142, torch.float32), w(142, 142, torch.float32))
    assert not winograd3d.preferred(x(142, channels_last=False), w(142, 142))
    assert not winograd3d.preferred(x(142, hw=63), w(142, 142))
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD3D", "1")
    assert winograd3d.preferred(x(110), w(64, 110))
    assert not winograd3d.preferred(x(142, hw=63), w(142, 142))
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD3D", "0")
    assert not winograd3d.preferred(x(142), w(142, 142))
    assert winograd3d.applicable(torch.nn.Conv3d(4, 4, 3, padding=1))
    assert not winograd3d.applicable(torch.nn.Conv3d(4, 4, 3, padding=2, dilation=2))


def test_conv_norm_runs_winograd3d_with_the_folded_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD3D", "1")  # small channel counts keep the test fast
    torch.manual_seed(12)
    conv, norm = torch.nn.Conv3d(6, 8, 3, padding=1), torch.nn.BatchNorm3d(8).eval()
    _random_norm(norm, 5)
    x32 = torch.randn(1, 6, 4, 64, 64)
    assert x32[0, 0].numel() >= FOLD_MIN_VOXELS
    holder = KernelCache()

    def reference(conv: torch.nn.Conv3d, norm: torch.nn.BatchNorm3d, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(F.conv3d(x.float(), conv.weight.float(), conv.bias.float(), padding=1),
                            norm.running_mean.float(), norm.running_var.float(), norm.weight.float(),
                            norm.bias.float(), training=False, eps=norm.eps)

    with torch.no_grad():
        out32 = conv_norm(conv, norm, x32, holder)  # float32 keeps oneDNN
        assert "winograd3d" not in holder._kernel_cache
        assert _rel(out32, reference(conv, norm, x32)) <= FP32_REL
        conv, norm = conv.bfloat16(), norm.bfloat16()
        holder = KernelCache()  # a fresh cache for the new weights (a module's own cache drops itself on .to())
        x = _layout(x32, torch.bfloat16, True)
        out = conv_norm(conv, norm, x, holder)
        assert "winograd3d" in holder._kernel_cache
        assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last_3d)
        ref = reference(conv, norm, x)
        direct = F.batch_norm(F.conv3d(x, conv.weight, conv.bias, padding=1), norm.running_mean,
                              norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps)
        assert _rel(out, ref) <= WINO3D_VS_DIRECT * _rel(direct, ref)
        monkeypatch.setenv("KDTALKER_BF16_WINOGRAD3D", "0")
        holder._kernel_cache.clear()
        conv_norm(conv, norm, x, holder)
        assert "winograd3d" not in holder._kernel_cache


# --- separable sampling of the translated keypoint motions, and the hourglass input (networks/dense_motion.py) -------


def test_linear_sampling_matrix_equals_grid_sample_along_one_axis() -> None:
    gen = torch.Generator().manual_seed(21)
    n = 9
    coords = torch.linspace(-1.4, 1.4, 23)  # includes samples with one or both taps outside [0, n)
    values = torch.randn(n, generator=gen)
    grid = torch.stack([coords, torch.zeros_like(coords)], -1).view(1, 1, -1, 2)
    expected = F.grid_sample(values.view(1, 1, 1, n), grid, align_corners=False).view(-1)
    matrix = linear_sampling_matrix(coords, n)
    assert matrix.shape == (23, n)
    assert (matrix >= 0).all() and (matrix.sum(-1) <= 1 + 1e-6).all() and (matrix[0] == 0).all()
    torch.testing.assert_close(matrix @ values, expected, atol=1e-6, rtol=1e-6)


def _motions(size: tuple[int, int, int], kd: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """The K+1 motions built plainly from the 3D identity grid: (B,K+1,D,H,W,3)."""
    grid = coordinate_grid_3d(size, torch.float32)
    shifted = (grid[None, None] - kd[:, :, None, None, None]) + ks[:, :, None, None, None]
    return torch.cat([grid.expand(kd.shape[0], 1, *grid.shape), shifted], 1)


@pytest.mark.parametrize(("volume_batch", "batch", "source_batch", "size"),
                         [(1, 1, 1, (5, 12, 9)), (1, 2, 1, (6, 10, 8)), (2, 2, 2, (4, 8, 7)), (2, 2, 1, (3, 7, 6))])
def test_sample_translated_equals_sampling_the_motions(volume_batch: int, batch: int, source_batch: int,
                                                       size: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(22)
    volume = torch.randn(volume_batch, 3, *size, generator=gen)
    kd = 0.7 * torch.randn(batch, 21, 3, generator=gen)  # shifts up to ~2: many taps fall outside
    ks = 0.7 * torch.randn(source_batch, 21, 3, generator=gen)
    motions = _motions(size, kd, ks)
    expected = sample_volume(volume, motions)
    scale = float(expected.abs().max())
    out = sample_translated(volume, kd, ks)
    assert out.shape == expected.shape == (batch, 22, 3, *size) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6 * scale, rtol=0)
    assert (expected == 0).any() and torch.equal(out == 0, expected == 0)  # the same taps read zeros
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # groups of 3 motions, the last one shorter
        buffer = torch.full((batch, 22, 4, *size), 7.0)
        sample_translated(volume, kd, ks, out=buffer[:, :, 1:])  # items contiguous, the whole not
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(buffer[:, :, 1:], expected, atol=1e-6 * scale, rtol=0)
    assert (buffer[:, :, 0] == 7).all()
    low = sample_translated(_layout(volume, torch.bfloat16, True), kd, ks,
                            out=torch.empty(batch, 22, 3, *size, dtype=torch.bfloat16))  # cast on store
    ref_low = sample_volume(volume.bfloat16(), motions).bfloat16()
    torch.testing.assert_close(low.float(), ref_low.float(), atol=2 ** -7 * scale, rtol=0)  # one rounding
    with pytest.raises(ValueError, match="batch"):
        sample_translated(torch.randn(3, 3, *size), kd, ks)


@pytest.mark.parametrize(("dtype", "channels_last"), [(torch.float32, False), (torch.float32, True),
                                                      (torch.bfloat16, True)])
def test_motion_input_equals_cat_of_heatmaps_and_sampled_volume(dtype: torch.dtype, channels_last: bool) -> None:
    dm = _dense_motion()
    gen = torch.Generator().manual_seed(23)
    size = (4, 8, 8)
    compressed = torch.relu(torch.randn(1, 2, *size, generator=gen))
    ks = 0.6 * torch.rand(1, 21, 3, generator=gen) - 0.3
    kd = ks + 0.03 * torch.randn(2, 21, 3, generator=gen)
    heat = dm.heatmaps(size, kd, ks)
    deformed = sample_volume(compressed, _motions(size, kd, ks))
    expected = to_compute(torch.cat([heat, deformed], dim=2).reshape(2, -1, *size), dtype, channels_last)
    out = to_compute(dm.motion_input(compressed, kd, ks, dtype), dtype, channels_last)
    assert out.shape == expected.shape == (2, 22 * 3, *size) and out.dtype == dtype
    assert out.stride() == expected.stride()
    ulp = 1e-6 if dtype == torch.float32 else 2 ** -8
    torch.testing.assert_close(out.float(), expected.float(), atol=ulp * float(expected.abs().max()), rtol=0)
    assert torch.equal(out[:, ::3], expected[:, ::3])  # the heatmap channels, no sampling involved


@pytest.mark.parametrize(("dtype", "batch"), [(torch.float32, 1), (torch.bfloat16, 2)])
def test_to_compute_blocked_copy_equals_the_strided_conversion(dtype: torch.dtype, batch: int) -> None:
    x = torch.randn(batch, 110, 3, 8, 10)
    for channels_last in (False, True):
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        out, expected = to_compute(x, dtype, channels_last), x.to(dtype=dtype, memory_format=fmt)
        assert torch.equal(out, expected) and out.stride() == expected.stride() and out.dtype == dtype

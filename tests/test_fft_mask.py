"""The 3D overlap-save FFT convolution of the dense-motion ``mask`` layer (kdtalker_core.networks.fft_conv3d)
against plain convolutions and DFTs.

Transformed kernels vs ``torch.fft.fftn`` of the padded weight, the forward spectra of the GEMM
transforms vs ``torch.fft.fftn`` of the input tiles, and the whole convolution vs a float64 ``F.conv3d``
for float32 (2D depth-tap kernels and cached 3D kernels) and bf16 (bf16 3D kernels and products, held
to the error of oneDNN's direct bf16 convolution on the same data), over odd sizes, several depth
tiles, batch 2, channels-last-3d and contiguous layouts and channel chunks that do not divide Cin.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from small_networks import SMALL_WARP, randomize_norm_stats

from kdtalker_core.networks import fft_conv3d as fc
from kdtalker_core.networks.fft_conv3d import FFTKernels, fft_conv3d, fft_kernels, frequency_order
from kdtalker_core.networks.warping import WarpingNetwork

pytestmark = pytest.mark.usefixtures("one_thread")

#: float32 FFT form vs a float64 convolution, relative to the output's largest magnitude.
FP32_REL = 1e-5


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).abs().max() / ref.abs().max())


def _rms_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())


def _problem(cin: int, cout: int, k: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, k, k, k, generator=g) / (cin * k ** 3) ** 0.5
    return torch.randn(*shape, generator=g), w, torch.randn(cout, generator=g)


def test_frequency_order_pairs_each_frequency_with_its_negative() -> None:
    order = frequency_order(22)
    assert order.tolist()[:12] == list(range(12))
    assert sorted(order.tolist()) == list(range(22))
    assert all(int(order[11 + j]) == 22 - j for j in range(1, 11))  # index n/2 + j is frequency -j


@pytest.mark.parametrize("three_d", [False, True])
def test_kernels_are_conjugate_dfts_of_the_padded_weight(three_d: bool) -> None:
    _, w, _ = _problem(5, 3, 5, (1,), 0)
    kern = fft_kernels(w, n=10, depth_n=8, chunks=2, three_d=three_d)
    cc = kern.channel_step
    assert (kern.chunks, cc, kern.depth_taps) == (2, 3, not three_d)
    # conj(DFT) over (depth, y, x) of the weight zero-padded to (8, 10, 10), frequencies in storage order.
    spec = torch.fft.fftn(F.pad(w.double(), (0, 5, 0, 5, 0, 3)), dim=(2, 3, 4)).conj()
    spec = spec[:, :, frequency_order(8)][:, :, :, frequency_order(10)][..., :6]  # (Cout, Cin, d, y, x)
    if three_d:
        got = kern.spectra.view(2, 6, 10, 8, 2, 3, cc)  # (chunk, x, y, depth, re/im, Cout, channel)
        got = torch.cat([got[0], got[1]], -1)[..., :5].permute(4, 5, 2, 1, 0, 3).double()  # Cout,Cin,d,y,x,ri
        assert kern.spectra.dtype == torch.float32 and kern.nbytes == 2 * 6 * 10 * 8 * 2 * 3 * 3 * 4
    else:  # depth taps: 2D transforms; the depth DFT of the taps must give the 3D spectrum
        taps = kern.spectra.view(2, 6, 10, 5, 2, 3, cc)  # (chunk, x, y, tap, re/im, Cout, channel)
        taps = torch.cat([taps[0], taps[1]], -1)[..., :5].double()
        taps = torch.complex(taps[:, :, :, 0], taps[:, :, :, 1])  # (x, y, tap, Cout, Cin)
        phase = torch.exp(2j * torch.pi * frequency_order(8).double()[:, None] * torch.arange(5) / 8)
        got = torch.einsum("qt,xytoc->ocqyx", phase, taps)
        got = torch.view_as_real(got)
    torch.testing.assert_close(got, torch.view_as_real(spec), atol=1e-6, rtol=1e-5)


def test_chunks_never_leave_an_empty_chunk() -> None:
    kern = fft_kernels(torch.randn(2, 4, 3, 3, 3), n=8, depth_n=8, chunks=3)
    assert (kern.chunks, kern.channel_step) == (2, 2)
    bf = fft_kernels(torch.randn(2, 4, 3, 3, 3).bfloat16(), n=8, depth_n=8)
    assert not bf.depth_taps and bf.spectra.dtype == torch.bfloat16 and bf.chunks == 1


def test_forward_spectra_equal_fftn_of_the_input_tiles() -> None:
    """The three GEMM passes + butterflies give the 3D DFT of every zero-padded overlap-save tile."""
    n, nd, k = 10, 8, 3
    x = torch.randn(2, 7, 9, 13)  # (channels, D, H, W): 2 x-tiles, 2 y-tiles, 2 depth tiles
    plan = fc._Plan.make(n, nd, k, 1, torch.Size((1, 2, 7, 9, 13)), x.device)
    assert (plan.ntd, plan.nty, plan.ntx, plan.nb) == (2, 2, 2, 2)
    spectra = torch.zeros(6, n, nd, plan.nb, plan.nty, 2, plan.ntx, 2)
    fc._forward_spectra(plan, x, 0, 6, spectra, 0)
    t, td, p = n - k + 1, nd - k + 1, k // 2

    def right(size: int, length: int, step: int) -> int:  # zeros up to the end of the last tile
        return (-(-size // step) - 1) * step + length - p - size

    padded = F.pad(x.double(), (p, right(13, n, t), p, right(9, n, t), p, right(7, nd, td)))
    for di in range(2):
        for ty in range(2):
            for tx in range(2):
                tile = padded[:, di * td: di * td + nd, ty * t: ty * t + n, tx * t: tx * t + n]
                ref = torch.fft.rfftn(tile, dim=(1, 2, 3))[:, frequency_order(nd)][:, :, frequency_order(n)]
                got = spectra[:, :, :, di, ty, :, tx].permute(4, 2, 1, 0, 3).double()  # (c, d, y, x, re/im)
                torch.testing.assert_close(got, torch.view_as_real(ref), atol=1e-4, rtol=1e-5)


CASES = [  # (batch, Cin, Cout, k, (D, H, W), chunks, channels_last, x_step)
    (1, 7, 3, 7, (16, 32, 32), 2, False, 4),
    (2, 6, 4, 5, (5, 20, 37), 4, True, 5),  # 4 chunks of 6 channels -> 3 chunks of 2
    (1, 5, 2, 7, (23, 17, 18), 1, True, 1),  # two depth tiles (16 + 7), partial y / x tiles
    (2, 4, 3, 3, (4, 40, 9), 3, False, 12),
]


@pytest.mark.parametrize(("batch", "cin", "cout", "k", "size", "chunks", "channels_last", "step"), CASES)
@pytest.mark.parametrize("three_d", [False, True])
def test_float32_fft_conv3d_equals_float64_conv3d(batch: int, cin: int, cout: int, k: int,
                                                  size: tuple[int, int, int], chunks: int,
                                                  channels_last: bool, step: int, three_d: bool) -> None:
    x, w, b = _problem(cin, cout, k, (batch, cin, *size), 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    kern = fft_kernels(w, chunks=chunks, three_d=three_d)
    assert kern.spectra.dtype == torch.float32 and kern.depth_taps != three_d
    out = fft_conv3d(x, kern, b, k, x_step=step)
    ref = F.conv3d(x.double(), w.double(), b.double(), padding=k // 2)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    assert _rel(out, ref) <= FP32_REL
    no_bias = fft_conv3d(x, kern, None, k, x_step=step)
    assert _rel(no_bias, ref - b.double().view(-1, 1, 1, 1)) <= FP32_REL


@pytest.mark.parametrize("channels_last", [True, False])
def test_bf16_fft_conv3d_is_as_accurate_as_onednn_bf16_conv3d(channels_last: bool) -> None:
    """bf16 spectra, kernels and products: held to the error of the direct bf16 convolution on the
    same bf16 data (its error is one output rounding; ours adds the roundings of the spectra, the
    kernels and the products: measured 1.3x max / 1.4x RMS at full size)."""
    x, w, b = _problem(24, 6, 7, (1, 24, 16, 32, 32), 2)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x, w, b = x.to(torch.bfloat16, memory_format=fmt), w.bfloat16(), b.bfloat16()
    kern = fft_kernels(w)
    assert kern.spectra.dtype == torch.bfloat16 and not kern.depth_taps
    out = fft_conv3d(x, kern, b, 7)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=fmt)
    ref = F.conv3d(x.double(), w.double(), b.double(), padding=3)
    direct = F.conv3d(x, w.contiguous(memory_format=fmt), b, padding=3)
    assert _rel(direct, ref) < 4e-3  # one bf16 rounding of the output
    assert _rel(out, ref) <= 2 * _rel(direct, ref)
    assert _rms_rel(out, ref) <= 2 * _rms_rel(direct, ref)


def test_bf16_kernels_with_float32_input_and_the_reverse() -> None:
    x, w, b = _problem(5, 3, 7, (1, 5, 6, 18, 20), 3)
    ref = F.conv3d(x.double(), w.bfloat16().double(), b.double(), padding=3)
    out = fft_conv3d(x, fft_kernels(w.bfloat16()), b, 7)  # bf16 spectra and products
    assert out.dtype == torch.float32 and _rel(out, ref) < 1e-2
    x16 = x.bfloat16()
    out = fft_conv3d(x16, fft_kernels(w), b, 7)  # float32 everything, rounded once at the end
    ref = F.conv3d(x16.double(), w.double(), b.double(), padding=3)
    assert out.dtype == torch.bfloat16 and _rel(out, ref) < 4e-3


def test_mismatched_kernels_are_refused() -> None:
    kern = fft_kernels(torch.randn(2, 3, 5, 5, 5))
    with pytest.raises(ValueError):
        fft_conv3d(torch.randn(1, 4, 4, 8, 8), kern, None, 5)
    with pytest.raises(ValueError):
        fft_conv3d(torch.randn(1, 3, 4, 8, 8), kern, None, 3)
    with pytest.raises(ValueError):
        fft_kernels(torch.randn(2, 3, 4, 4, 4))  # even kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_layer_caches_the_kernels_of_its_dtype(dtype: torch.dtype) -> None:
    """The dense-motion network caches float32 depth taps for float32 and bf16 3D kernels for bf16."""
    torch.manual_seed(5)
    dm = copy.deepcopy(randomize_norm_stats(WarpingNetwork(**SMALL_WARP), 6).dense_motion_network).to(dtype)
    pred = torch.randn(1, dm.mask.in_channels, 4, 32, 32).to(dtype)
    with torch.no_grad():
        out = dm.mask_logits(pred)
        ref = F.conv3d(pred.double(), dm.mask.weight.double(), dm.mask.bias.double(), padding=3)
    kern = dm._kernel_cache["mask_fft"]
    assert isinstance(kern, FFTKernels)
    assert kern.depth_taps == (dtype == torch.float32)
    assert kern.spectra.dtype == (torch.float32 if dtype == torch.float32 else torch.bfloat16)
    assert _rel(out, ref) <= (FP32_REL if dtype == torch.float32 else 1e-2)

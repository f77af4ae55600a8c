"""The SPADE decoder's fast paths against the plain PyTorch computations they replace.

Each fast path (sub-pixel convolution of a nearest-upsampled map, float32-statistics instance
norm, the single-pass modulation with the "+1" folded into the bias, the upsample folded into an
up block, bf16 Winograd F(2,3)) is checked against F.conv2d / F.interpolate / the instance-norm
formula, in float32 and bf16, batch 1 and 2, channels-last and NCHW.
"""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from small_networks import SMALL_SPADE
from torch.utils.flop_counter import FlopCounterMode

from kdtalker_core.backends import allocator, winograd
from kdtalker_core.networks.spade import (
    SPADE,
    SPADEDecoder,
    SPADEResnetBlock,
    SpectralNormConv2d,
    conv3x3,
    conv3x3_upsampled,
    conv3x3_upsampled_parts,
    normalize,
)
from kdtalker_core.precision import cpu_has_native_bf16

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUTS = [torch.contiguous_format, torch.channels_last]
FORMS = [winograd.F2X2, winograd.F2X4]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _map(shape: tuple[int, ...], dtype: torch.dtype, fmt: torch.memory_format, seed: int,
         offset: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (offset + torch.randn(shape, generator=gen)).to(dtype).contiguous(memory_format=fmt)


def _instance_norm_reference(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(biased var + 1e-5) per sample and channel, in float64."""
    x = x.double()
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + 1e-5)


# ---------------------------------------------------------------- sub-pixel upsampled convolution

@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_upsampled_conv_float32_equals_conv_of_interpolate(factor: int, batch: int,
                                                          fmt: torch.memory_format) -> None:
    x = _map((batch, 5, 6, 7), torch.float32, fmt, 1)
    weight = _map((9, 5, 3, 3), torch.float32, fmt, 2) * 0.3
    bias = _map((9,), torch.float32, torch.contiguous_format, 3)
    expected = F.conv2d(F.interpolate(x, scale_factor=factor, mode="nearest"), weight, bias, padding=1)
    got = conv3x3_upsampled(x, weight, bias, factor)
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    relu = conv3x3_upsampled(x, weight, None, factor, relu=True)
    torch.testing.assert_close(relu, F.relu(expected - bias.view(1, -1, 1, 1)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_upsampled_conv_bf16_and_split_parts(factor: int, batch: int, fmt: torch.memory_format) -> None:
    x = _map((batch, 16, 8, 8), torch.bfloat16, fmt, 4)
    weight = (_map((24, 16, 3, 3), torch.float32, fmt, 5) / 12).to(torch.bfloat16)
    bias = _map((24,), torch.bfloat16, torch.contiguous_format, 6)
    expected = F.relu(F.conv2d(F.interpolate(x.float(), scale_factor=factor, mode="nearest"),
                               weight.float(), bias.float(), padding=1))
    parts = conv3x3_upsampled_parts(x, weight, bias, factor, relu=True, split=8)
    assert len(parts) == 3
    for part in parts:
        assert part.dtype == torch.bfloat16 and part.shape == (batch, 8, 8 * factor, 8 * factor)
        assert part.is_contiguous(memory_format=fmt)  # dense parts: the next convolution copies nothing
    # Kernel tap sums are rounded to bf16 once: error of the order of bf16 rounding (2^-8 relative).
    assert _rel(torch.cat(parts, dim=1), expected) < 1e-2


# ---------------------------------------------------------------- instance normalisation

@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_normalize_float32_matches_instance_norm(batch: int, fmt: torch.memory_format) -> None:
    x = _map((batch, 6, 16, 16), torch.float32, fmt, 7, offset=3.0)
    got = normalize(x)
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(got, F.instance_norm(x, eps=1e-5), atol=1e-5, rtol=1e-5)
    if fmt == torch.contiguous_format:  # the official layout: bit-identical to F.instance_norm
        assert torch.equal(got, F.instance_norm(x, eps=1e-5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_normalize_reduced_precision_statistics_in_float32(dtype: torch.dtype, batch: int,
                                                           fmt: torch.memory_format) -> None:
    # 128x128 maps: summing 16384 values in bf16 itself would be far off; float32 sums are not.
    x = _map((batch, 4, 128, 128), dtype, fmt, 8, offset=2.0)
    got = normalize(x)
    assert got.dtype == dtype and got.is_contiguous(memory_format=fmt) and got.shape == x.shape
    expected = _instance_norm_reference(x)
    eps = torch.finfo(dtype).eps
    assert _rel(got, expected) < 4 * eps
    # No channel is shifted or scaled as a whole (what poorly accumulated statistics would do).
    assert float((got.double() - expected).mean(dim=(2, 3)).abs().max()) < 4 * eps
    assert float(got.double().std(dim=(2, 3), correction=0).sub(1).abs().max()) < 4 * eps


# ---------------------------------------------------------------- SPADE modulation

def _spade_reference(spade: SPADE, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """IN(x) * (1 + gamma) + beta with the original module's layers, in float32."""
    seg = F.interpolate(seg.float(), size=x.shape[-2:], mode="nearest")
    actv = F.relu(F.conv2d(seg, spade.mlp_shared[0].weight.float(), spade.mlp_shared[0].bias.float(), padding=1))
    gamma = F.conv2d(actv, spade.mlp_gamma.weight.float(), spade.mlp_gamma.bias.float(), padding=1)
    beta = F.conv2d(actv, spade.mlp_beta.weight.float(), spade.mlp_beta.bias.float(), padding=1)
    return F.instance_norm(x.float(), eps=1e-5) * (1 + gamma) + beta


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_spade_single_pass_modulation(dtype: torch.dtype, tol: float, batch: int, fmt: torch.memory_format) -> None:
    torch.manual_seed(9)
    spade = SPADE(8, 5).eval()
    with torch.no_grad():
        spade.mlp_gamma.bias.uniform_(-0.5, 0.5)  # the folded "+1" must not eat a real bias
    spade = spade.to(dtype=dtype, memory_format=fmt)
    x = _map((batch, 8, 12, 12), dtype, fmt, 10, offset=1.0)
    seg = _map((batch, 5, 6, 6), dtype, fmt, 11)
    with torch.no_grad():
        got = spade(x, seg)
        expected = _spade_reference(spade, x, seg)
    assert got.dtype == dtype and got.is_contiguous(memory_format=fmt)
    assert _rel(got, expected) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
def test_up_block_folds_the_upsample(dtype: torch.dtype, tol: float, batch: int, fmt: torch.memory_format) -> None:
    torch.manual_seed(12)
    block = SPADEResnetBlock(8, 4, 6).eval()
    for m in block.modules():
        if isinstance(m, SpectralNormConv2d):
            m.fuse()
    block = block.to(dtype=dtype, memory_format=fmt)
    x = _map((batch, 8, 6, 6), dtype, fmt, 13)
    seg = _map((batch, 6, 6, 6), dtype, fmt, 14)
    with torch.no_grad():
        got = block(x, seg, upsample=2)
        plain = block(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        reference = block.float()(F.interpolate(x.float(), scale_factor=2.0, mode="nearest"), seg.float())
    assert got.shape == (batch, 4, 12, 12) and got.is_contiguous(memory_format=fmt)
    assert _rel(got, reference) < tol
    assert _rel(plain, reference) < tol


@pytest.mark.parametrize("upsample", [1, 2])
@pytest.mark.parametrize(("fin", "fout"), [(8, 4), (4, 12)])  # fewer and more outputs than inputs
def test_learned_shortcut_moves_beta_through_conv_s(upsample: int, fin: int, fout: int) -> None:
    # conv_s(x_norm * (1 + gamma) + beta) computed as conv_s(x_norm * (1 + gamma)) + conv3x3(actv, W_s . W_beta).
    torch.manual_seed(27)
    block = SPADEResnetBlock(fin, fout, 6).eval()
    x_norm = torch.randn(2, fin, 5, 5)
    actv = torch.relu(torch.randn(2, 128, 5 * upsample, 5 * upsample))
    with torch.no_grad():
        got = block.learned_shortcut_from(x_norm, actv)
        full = F.interpolate(x_norm, scale_factor=float(upsample), mode="nearest")
        gamma = F.conv2d(actv, block.norm_s.mlp_gamma.weight, block.norm_s.mlp_gamma.bias, padding=1)
        beta = F.conv2d(actv, block.norm_s.mlp_beta.weight, block.norm_s.mlp_beta.bias, padding=1)
        expected = F.conv2d(full * (1 + gamma) + beta, block.conv_s.weight())
    assert got.shape == (2, fout, 5 * upsample, 5 * upsample)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert block._kernel_cache["shortcut"][0].shape == (fin + fout, 128, 3, 3)


# ---------------------------------------------------------------- bf16 Winograd F(2,3)

@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("band_bytes", [1, 2000, winograd.BAND_BYTES])  # one tile row per band .. one band
@pytest.mark.parametrize("form", FORMS)
def test_winograd_algebra_is_exact_in_float32(batch: int, fmt: torch.memory_format, with_bias: bool,
                                              band_bytes: int, form: winograd.TileForm) -> None:
    x = _map((batch, 7, 10, 8), torch.float32, fmt, 15)
    weight = _map((5, 7, 3, 3), torch.float32, torch.contiguous_format, 16)
    bias = _map((5,), torch.float32, torch.contiguous_format, 17) if with_bias else None
    u = winograd.transform_weight(weight, form)
    assert u.shape == (form.points, 7, 5)
    got = winograd.conv3x3(x, u, bias, band_bytes=band_bytes)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, F.conv2d(x, weight, bias, padding=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize(("form", "bound", "factor"), [(winograd.F2X2, 1e-2, 5), (winograd.F2X4, 2e-2, 8)])
def test_winograd_bf16_error_vs_float32(batch: int, fmt: torch.memory_format, form: winograd.TileForm,
                                        bound: float, factor: float) -> None:
    cin = 128
    x = _map((batch, cin, 16, 16), torch.bfloat16, fmt, 18)
    weight = (_map((64, cin, 3, 3), torch.float32, torch.contiguous_format, 19) / (3 * cin ** 0.5)).bfloat16()
    bias = (0.1 * _map((64,), torch.float32, torch.contiguous_format, 20)).bfloat16()
    exact = F.conv2d(x.float(), weight.float(), bias.float(), padding=1)
    u = winograd.transform_weight(weight, form)
    got = winograd.conv3x3(x, u, bias)
    direct = F.conv2d(x, weight, bias, padding=1)
    assert got.dtype == torch.bfloat16
    # The transformed inputs and weights and the products are rounded to bf16. Measured here:
    # F(2x2) ~5.7e-3, F(2x4) ~1.1e-2, the direct bf16 convolution ~1.7e-3.
    assert _rel(got, exact) < bound
    assert _rel(got, exact) < factor * _rel(direct, exact)
    banded = winograd.conv3x3(x, u, bias, band_bytes=1)
    assert _rel(banded, exact) < bound


def test_winograd_shape_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDTALKER_BF16_WINOGRAD", raising=False)
    w512 = torch.zeros(512, 512, 3, 3, dtype=torch.bfloat16)
    x512 = torch.zeros(1, 512, 64, 64, dtype=torch.bfloat16)
    assert winograd.shape_rule(x512, w512)
    assert winograd.shape_rule(torch.zeros(1, 128, 64, 64, dtype=torch.bfloat16),
                               torch.zeros(1024, 128, 3, 3, dtype=torch.bfloat16))
    w64 = torch.zeros(64, 256, 3, 3, dtype=torch.bfloat16)
    assert not winograd.shape_rule(torch.zeros(1, 256, 64, 64, dtype=torch.bfloat16), w64)  # few outputs
    # On this CPU: the shape rule, unless the probe found oneDNN's direct convolution clearly faster.
    assert winograd.preferred(x512, w512) == (not winograd.direct_clearly_faster())
    assert not winograd.preferred(torch.zeros(1, 256, 64, 64, dtype=torch.bfloat16), w64)
    assert not winograd.preferred(torch.zeros(1, 512, 64, 64), w512.float())  # float32: oneDNN / NNPACK
    assert not winograd.preferred(torch.zeros(1, 512, 63, 64, dtype=torch.bfloat16), w512)  # odd size
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "0")
    assert not winograd.preferred(x512, w512)
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "1")
    assert winograd.preferred(torch.zeros(1, 256, 64, 64, dtype=torch.bfloat16), w64)
    assert not winograd.preferred(torch.zeros(1, 512, 63, 64, dtype=torch.bfloat16), w512)


def test_winograd_probe_is_measured_once_per_thread_count() -> None:
    calls: list[int] = []

    def make(fast: str) -> tuple:
        def winograd_call() -> None:
            calls.append(torch.get_num_threads())
            time.sleep(0.004 if fast == "direct" else 0.0)

        def direct_call() -> None:
            time.sleep(0.004 if fast == "winograd" else 0.0)
        return winograd_call, direct_call

    if not cpu_has_native_bf16():  # bf16 runs reference kernels here: no probe, the shape rules stay
        assert not winograd.probe_says_direct("test-direct-wins", lambda: make("direct"))
        assert not calls
        return
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert winograd.probe_says_direct("test-direct-wins", lambda: make("direct"))
        assert not winograd.probe_says_direct("test-winograd-wins", lambda: make("winograd"))
        timed = len(calls)
        assert timed == 8  # one warm-up and three timings per probe, none of them again below
        assert winograd.probe_says_direct("test-direct-wins", lambda: make("winograd"))  # cached answer
        assert len(calls) == timed
        torch.set_num_threads(2)  # another thread count: measured again
        assert not winograd.probe_says_direct("test-direct-wins", lambda: make("winograd"))
        assert len(calls) == timed + 4 and calls[-1] == 2
        # Under a dispatch mode (here a FLOP counter) nothing is timed or cached: the shape rules stay.
        torch.set_num_threads(3)
        with FlopCounterMode(display=False):
            assert not winograd.probe_says_direct("test-direct-wins", lambda: make("direct"))
        assert len(calls) == timed + 4
        assert winograd.probe_says_direct("test-direct-wins", lambda: make("direct"))  # measured now
        assert len(calls) == timed + 8
    finally:
        torch.set_num_threads(threads)


def test_spectral_conv_winograd_cache_follows_new_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "1")
    torch.manual_seed(21)
    conv = SpectralNormConv2d(8, 8, 3, padding=1)
    other = SpectralNormConv2d(8, 8, 3, padding=1)
    conv.fuse()
    conv = conv.to(torch.bfloat16, memory_format=torch.channels_last)
    x = _map((1, 8, 8, 8), torch.bfloat16, torch.channels_last, 22)
    with torch.no_grad():
        first = conv(x)
        assert conv._kernel_cache  # the transformed weight was kept
        conv.load_state_dict(other.to(torch.bfloat16).state_dict())
        conv.fuse()
        second = conv(x)
        expected = F.conv2d(x.float(), other.normalized_weight().bfloat16().float(), other.bias.float(), padding=1)
    assert _rel(second, expected) < 1.2e-2 and _rel(first, expected) > 0.1


def test_conv3x3_uses_winograd_only_with_a_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "1")
    owner = SPADE(4, 4)
    x = _map((1, 8, 8, 8), torch.bfloat16, torch.channels_last, 23)
    weight = _map((8, 8, 3, 3), torch.bfloat16, torch.contiguous_format, 24)
    assert torch.equal(conv3x3(x, weight, None), F.conv2d(x, weight, None, padding=1))
    got = conv3x3(x, weight, None, cache=owner, key="w")
    assert ("w", "2x4") in owner._kernel_cache  # 8 wide: F(2x4)
    assert _rel(got, F.conv2d(x.float(), weight.float(), padding=1)) < 1.2e-2


def test_shared_conv_and_branch_slices_take_winograd(monkeypatch: pytest.MonkeyPatch) -> None:
    # A middle block at full resolution: its shared SPADE convolution (factor 1) and the
    # gamma/beta convolutions, which read channel slices of the shared activation map, go through
    # Winograd (cached on the block and on each SPADE) and stay within bf16 Winograd error.
    torch.manual_seed(26)
    block = SPADEResnetBlock(8, 8, 6).eval()
    for m in block.modules():
        if isinstance(m, SpectralNormConv2d):
            m.fuse()
    x = torch.randn(1, 8, 12, 12)
    seg = torch.randn(1, 6, 12, 12)
    with torch.no_grad():
        reference = block(x, seg)
        block.to(torch.bfloat16, memory_format=torch.channels_last)
        args = [t.to(torch.bfloat16, memory_format=torch.channels_last) for t in (x, seg)]
        monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "1")
        fast = block(*args).float()
    assert ("winograd_shared", "2x4") in block._kernel_cache
    assert all(("winograd", "2x4") in n._kernel_cache for n in (block.norm_0, block.norm_1))
    assert _rel(fast, reference) < 2.5e-2


def test_bf16_decoder_with_winograd_stays_close_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(25)
    decoder = SPADEDecoder(**SMALL_SPADE).eval().fuse_spectral_norm()
    feature = torch.randn(1, 16, 16, 16)
    with torch.no_grad():
        reference = decoder(feature)
        fast = decoder.to(torch.bfloat16, memory_format=torch.channels_last)
        fast.channels_last = True
        monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "1")  # every 3x3 conv of this small decoder
        with_winograd = fast(feature)
        monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "0")
        without = fast(feature)
    assert with_winograd.dtype == torch.float32 and with_winograd.shape == reference.shape
    assert not torch.equal(with_winograd, without)
    assert _psnr(with_winograd, reference) > 40 and _psnr(without, reference) > 40


def _storage_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind a module's parameters and buffers."""
    seen: dict[int, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_keeps_one_copy_of_each_weight_and_its_state_dict_stays_equivalent(dtype: torch.dtype) -> None:
    torch.manual_seed(31)
    decoder = SPADEDecoder(**SMALL_SPADE).eval()
    raw = {k: v.clone() for k, v in decoder.state_dict().items()}
    feature = torch.randn(1, decoder.input_channels, 8, 8)
    with torch.no_grad():
        expected = decoder(feature)
    decoder.fuse_spectral_norm()
    decoder = decoder.to(dtype)
    params_bytes = sum(p.numel() * p.element_size() for p in decoder.parameters())
    with torch.no_grad():
        got = decoder(feature)  # builds every cached kernel (concatenations, sub-pixel phases)
    # Concatenated gamma/beta and shared weights are the parameters' own storage; the spectral norm
    # is divided in place: what the decoder holds is its parameters plus small derived kernels.
    assert _storage_bytes(decoder) <= params_bytes * 1.01 + 4096
    norm = decoder.G_middle_0.norm_0
    assert norm.mlp_gamma.weight.untyped_storage().data_ptr() == norm.mlp_beta.weight.untyped_storage().data_ptr()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=0)
    # The folded state dict (W/sigma with the same u, v) loads into a fresh decoder and gives the same image.
    fresh = SPADEDecoder(**SMALL_SPADE).eval()
    fresh.load_state_dict({k: v.float() for k, v in decoder.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(fresh(feature), expected, atol=tol, rtol=0)
    # Loading the raw weights again undoes the fold.
    decoder.float().load_state_dict(raw)
    assert decoder.G_middle_0.conv_0.fused_weight is None
    with torch.no_grad():
        torch.testing.assert_close(decoder(feature), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("form", FORMS)
def test_winograd_uneven_bands_and_strided_input_in_float32(batch: int, fmt: torch.memory_format,
                                                           form: winograd.TileForm) -> None:
    # 7 tile rows in bands of 3 (3 + 3 + 1): the padded band buffer and the scratch are reused, the
    # last band is shorter; the input is a strided view with a non-zero mean, so a wrong zero
    # padding row or column shows.
    big = _map((batch, 9, 16, 10), torch.float32, fmt, 40, offset=1.0)
    x = big[:, 1:7, 1:15, 1:9]
    weight = _map((5, 6, 3, 3), torch.float32, torch.contiguous_format, 41)
    bias = _map((5,), torch.float32, torch.contiguous_format, 42)
    band_bytes = 3 * form.points * batch * (8 // form.tile_w) * 6 * 4  # 3 tile rows of V (Cin = 6, float32)
    u = winograd.transform_weight(weight, form)
    expected = F.conv2d(x, weight, bias, padding=1)
    got = winograd.conv3x3(x, u, bias, band_bytes=band_bytes)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(winograd.conv3x3(x, u, bias, band_bytes=band_bytes), got)


@pytest.mark.parametrize("split", [2, 3, 5, [1, 4], [3, 2]])
@pytest.mark.parametrize("form", FORMS)
def test_winograd_parts_are_dense_slices_of_the_whole(split: int | list[int], form: winograd.TileForm) -> None:
    # Each part its own dense channels-last map, equal bit for bit to the channels of one output.
    x = _map((2, 6, 8, 12), torch.bfloat16, torch.channels_last, 43)
    u = winograd.transform_weight(_map((5, 6, 3, 3), torch.bfloat16, torch.contiguous_format, 44), form)
    bias = _map((5,), torch.bfloat16, torch.contiguous_format, 45)
    whole = winograd.conv3x3(x, u, bias, band_bytes=2000)
    parts = winograd.conv3x3_parts(x, u, bias, split, band_bytes=2000)
    sizes = split if isinstance(split, list) else [min(split, 5 - c) for c in range(0, 5, split)]
    assert [p.shape[1] for p in parts] == sizes
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in parts)
    assert len({p.untyped_storage().data_ptr() for p in parts}) == len(parts)
    assert torch.equal(torch.cat(parts, dim=1), whole)
    with pytest.raises(ValueError, match="cover"):
        winograd.conv3x3_parts(x, u, bias, [2, 2])


def test_winograd_scratch_is_kept_per_thread_outside_heap_reuse() -> None:
    # Outside the render's heap reuse, one thread gets the same buffer back for a slot (grown when
    # asked for more); another thread gets its own; release frees them.
    like = torch.empty(0, dtype=torch.bfloat16)
    winograd.release_scratch()
    first = winograd.scratch_buffer("test", 100, like)
    again = winograd.scratch_buffer("test", 60, like)
    assert again.data_ptr() == first.data_ptr() and again.numel() == 60 and again.dtype == torch.bfloat16
    grown = winograd.scratch_buffer("test", 1000, like)
    assert grown.numel() == 1000
    assert winograd.scratch_buffer("test", 10, like).data_ptr() == grown.data_ptr()
    assert winograd.scratch_buffer("other", 10, like).data_ptr() != grown.data_ptr()
    other_thread: list[int] = []
    worker = threading.Thread(target=lambda: other_thread.append(winograd.scratch_buffer("test", 10, like).data_ptr()))
    worker.start()
    worker.join()
    assert other_thread[0] != grown.data_ptr()
    with torch.inference_mode():  # inference tensors cannot be written outside: a buffer of its own
        inference = winograd.scratch_buffer("test", 10, like)
        assert inference.is_inference() and inference.data_ptr() != grown.data_ptr()
    assert not winograd.scratch_buffer("test", 10, like).is_inference()
    if allocator.available():
        with allocator.reuse_large_blocks():  # the heap keeps freed blocks: plain allocations
            a = winograd.scratch_buffer("test", 10, like)
            b = winograd.scratch_buffer("test", 10, like)
            assert a.data_ptr() != b.data_ptr() != grown.data_ptr()
    winograd.release_scratch()


@pytest.mark.parametrize("fmt", LAYOUTS)
def test_winograd_kept_scratch_carries_nothing_between_convolutions(fmt: torch.memory_format) -> None:
    # Kept buffers hold the previous convolution's data (a larger map, another channel count): the
    # next one must not read any of it (zero padding rows and columns included).
    winograd.release_scratch()
    small = _map((1, 6, 8, 10), torch.float32, fmt, 46, offset=1.0)
    w_small = _map((5, 6, 3, 3), torch.float32, torch.contiguous_format, 47)
    large = _map((2, 9, 20, 12), torch.float32, fmt, 48, offset=-2.0)
    w_large = _map((11, 9, 3, 3), torch.float32, torch.contiguous_format, 49)
    u_small, u_large = winograd.transform_weight(w_small), winograd.transform_weight(w_large)
    before = winograd.conv3x3(small, u_small, None, band_bytes=2000)
    winograd.conv3x3(large, u_large, None)
    after = winograd.conv3x3(small, u_small, None, band_bytes=2000)
    assert torch.equal(after, before)
    torch.testing.assert_close(after, F.conv2d(small, w_small, None, padding=1), atol=1e-5, rtol=1e-5)
    winograd.release_scratch()


def test_winograd_large_output_with_huge_page_hint() -> None:
    # 8 MiB float32 output: conv3x3 advises huge pages for it before the first write.
    x = _map((1, 4, 256, 256), torch.float32, torch.channels_last, 43)
    weight = _map((32, 4, 3, 3), torch.float32, torch.contiguous_format, 44)
    bias = _map((32,), torch.float32, torch.contiguous_format, 45)
    got = winograd.conv3x3(x, winograd.transform_weight(weight), bias)
    torch.testing.assert_close(got, F.conv2d(x, weight, bias, padding=1), atol=1e-5, rtol=1e-5)
    # The hint never changes what a tensor holds.
    filled = torch.arange(3 << 20, dtype=torch.float32)
    allocator.advise_huge_pages(filled)
    assert torch.equal(filled, torch.arange(3 << 20, dtype=torch.float32))


def test_huge_page_hint_only_outside_the_renders_heap_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh output (outside the render) is hinted; inside the render's heap reuse, where the
    # output comes from already-faulted heap memory, the hint cost kernel time and is skipped.
    hinted: list[int] = []
    monkeypatch.setattr(allocator, "advise_huge_pages", lambda t: hinted.append(t.numel()))
    x = _map((1, 4, 16, 16), torch.bfloat16, torch.channels_last, 48)
    u = winograd.transform_weight(_map((8, 4, 3, 3), torch.bfloat16, torch.contiguous_format, 49))
    winograd.conv3x3(x, u, None)
    assert hinted == [8 * 16 * 16]
    with allocator.reuse_large_blocks() as active:
        winograd.conv3x3(x, u, None)
    assert len(hinted) == (1 if active else 2)


def test_winograd_form_follows_width_and_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDTALKER_BF16_WINOGRAD_TILE", raising=False)
    assert winograd.form_for(torch.empty(1, 8, 6, 64)) is winograd.F2X4
    assert winograd.form_for(torch.empty(1, 8, 6, 66)) is winograd.F2X2  # even, not a multiple of 4
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD_TILE", "2x2")
    assert winograd.form_for(torch.empty(1, 8, 6, 64)) is winograd.F2X2
    x = _map((1, 6, 8, 6), torch.float32, torch.channels_last, 46)
    weight = _map((5, 6, 3, 3), torch.float32, torch.contiguous_format, 47)
    with pytest.raises(ValueError, match="multiple of 4"):
        winograd.conv3x3(x, winograd.transform_weight(weight, winograd.F2X4), None)
    with pytest.raises(ValueError, match="points"):
        winograd.conv3x3(x, torch.zeros(9, 6, 5), None)
    # 6 wide through the SPADE convolution: F(2x2) is picked, and the result is right.
    monkeypatch.delenv("KDTALKER_BF16_WINOGRAD_TILE")
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "1")
    owner = SPADE(4, 4)
    xb, wb = x.bfloat16(), weight.bfloat16()
    got = conv3x3(xb, wb, None, cache=owner, key="w")
    assert list(owner._kernel_cache) == [("w", "2x2")]
    assert _rel(got, F.conv2d(xb.float(), wb.float(), padding=1)) < 1.2e-2


def test_bf16_decoder_winograd_forms_both_stay_close_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(27)
    decoder = SPADEDecoder(**SMALL_SPADE).eval().fuse_spectral_norm()
    feature = torch.randn(1, 16, 16, 16)
    monkeypatch.setenv("KDTALKER_BF16_WINOGRAD", "1")
    with torch.no_grad():
        reference = decoder(feature)
        fast = decoder.to(torch.bfloat16, memory_format=torch.channels_last)
        fast.channels_last = True
        wide = fast(feature)
        monkeypatch.setenv("KDTALKER_BF16_WINOGRAD_TILE", "2x2")
        narrow = fast(feature)
    assert not torch.equal(wide, narrow)  # each form has its own cached weights
    assert _psnr(wide, reference) > 40 and _psnr(narrow, reference) > 40

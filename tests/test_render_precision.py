"""Rendering precision: networks prepared once (bf16 weights, channels-last), NNPACK choice, compile switch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from small_networks import SMALL_SPADE, SMALL_WARP, randomize_norm_stats

from kdtalker_core import render
from kdtalker_core.backends import nnpack
from kdtalker_core.errors import InputError
from kdtalker_core.networks.spade import SPADEDecoder, SPADEResnetBlock, normalize
from kdtalker_core.networks.warping import WarpingNetwork
from kdtalker_core.precision import native_bf16
from kdtalker_core.render import prepare_networks, render_all

pytestmark = pytest.mark.usefixtures("one_thread")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def setup() -> dict:
    torch.manual_seed(11)
    warp = randomize_norm_stats(WarpingNetwork(**SMALL_WARP), 12)
    decoder = randomize_norm_stats(SPADEDecoder(**SMALL_SPADE), 13).fuse_spectral_norm()
    feature = torch.randn(1, 8, 8, 16, 16)
    kp_source = 0.5 * torch.randn(1, 21, 3).clamp(-1.5, 1.5)
    kp_driving = kp_source + 0.05 * torch.randn(2, 21, 3)
    reference = render_all(warp, decoder, feature, kp_source, kp_driving, chunk_size=2, winograd=False)
    return {"warp": warp, "decoder": decoder, "feature": feature, "kp_source": kp_source,
            "kp_driving": kp_driving, "reference": reference}


def _prepared(s: dict, dtype: torch.dtype, **kwargs: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    warp, decoder = copy.deepcopy(s["warp"]), copy.deepcopy(s["decoder"])
    return prepare_networks(warp, decoder, dtype, "cpu", **kwargs)  # type: ignore[arg-type]


def test_prepare_fp32_nchw_keeps_the_numbers_exactly(setup: dict) -> None:
    warp, decoder = _prepared(setup, torch.float32, channels_last=False)
    out = render_all(warp, decoder, setup["feature"], setup["kp_source"], setup["kp_driving"], winograd=False)
    assert torch.equal(out, setup["reference"])


def test_prepare_fp32_channels_last_is_within_float_rounding(setup: dict) -> None:
    warp, decoder = _prepared(setup, torch.float32, channels_last=True)
    conv_weights = [p for p in [*warp.parameters(), *decoder.parameters()] if p.dim() == 4 and p.shape[-1] > 1]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in warp.parameters() if p.dim() == 5)
    out = render_all(warp, decoder, setup["feature"], setup["kp_source"], setup["kp_driving"], winograd=False)
    torch.testing.assert_close(out, setup["reference"], atol=1e-4, rtol=0)


def test_prepared_bf16_holds_bf16_weights_and_renders_close_to_fp32(setup: dict) -> None:
    warp, decoder = _prepared(setup, torch.bfloat16)
    floats = [t for t in [*warp.parameters(), *warp.buffers(), *decoder.parameters(), *decoder.buffers()]
              if t.is_floating_point()]
    assert floats and all(t.dtype == torch.bfloat16 for t in floats)
    assert warp.channels_last and decoder.channels_last and warp.dense_motion_network.channels_last
    out = render_all(warp, decoder, setup["feature"], setup["kp_source"], setup["kp_driving"], chunk_size=2)
    ref = setup["reference"]
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float(ref.std()) > 1e-2
    quality = _psnr(out, ref)
    assert 40.0 <= quality < 100.0, f"bf16 PSNR {quality:.1f} dB"  # faithful, yet really reduced
    # Asking a bf16-prepared pair for float32 is an error (precision cannot be recovered by a cast).
    with pytest.raises(InputError, match="prepare them again"):
        render_all(warp, decoder, setup["feature"], setup["kp_source"], setup["kp_driving"][:1],
                   dtype=torch.float32)


def test_reduced_precision_instance_norm_matches_float32() -> None:
    torch.manual_seed(14)
    x = 3.0 + 2.0 * torch.randn(2, 6, 16, 16)
    expected = F.instance_norm(x, eps=1e-5)
    reduced = normalize(x.bfloat16().contiguous(memory_format=torch.channels_last))
    assert reduced.dtype == torch.bfloat16 and reduced.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(reduced.float(), expected, atol=0.05, rtol=0.02)
    assert torch.equal(normalize(x), expected)


def test_cached_kernels_follow_new_weights() -> None:
    torch.manual_seed(15)
    block = SPADEResnetBlock(8, 4, 6).eval()
    other = SPADEResnetBlock(8, 4, 6).eval()
    x, seg = torch.randn(1, 8, 8, 8), torch.randn(1, 6, 4, 4)  # factor-2 sub-pixel path
    with torch.no_grad():
        first = block(x, seg)
        block.load_state_dict(other.state_dict())
        torch.testing.assert_close(block(x, seg), other(x, seg), atol=0, rtol=0)
        assert not torch.allclose(first, other(x, seg))
        assert block._kernel_cache and block.norm_0._kernel_cache
        block.to(torch.bfloat16)  # casting or moving the parameters drops the caches too
        assert not block._kernel_cache and not block.norm_0._kernel_cache


def test_nnpack_backend_agrees_with_direct_convolution() -> None:
    torch.manual_seed(16)
    x = torch.randn(2, 16, 20, 20)
    w = 0.1 * torch.randn(24, 16, 3, 3)
    b = torch.randn(24)
    expected = F.conv2d(x, w, b, padding=1)
    # NNPACK where it runs, the public fallback elsewhere: the same numbers up to Winograd rounding.
    torch.testing.assert_close(nnpack.conv3x3(x, w, b), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nnpack.conv3x3(x, w, None), expected - b[:, None, None], atol=1e-4, rtol=1e-4)


def test_nnpack_choice_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not nnpack.preferred("cpu", torch.bfloat16)
    assert not nnpack.preferred("meta", torch.float32)
    monkeypatch.setenv("KDTALKER_NNPACK", "0")
    assert not nnpack.preferred("cpu", torch.float32)
    monkeypatch.setenv("KDTALKER_NNPACK", "1")
    assert nnpack.preferred("cpu", torch.float32) == nnpack.works()
    # Channels-last float32 is the default exactly where NNPACK is not chosen.
    assert render.default_channels_last("cpu", torch.float32) == (not nnpack.works())
    assert render.default_channels_last("cpu", torch.bfloat16)


@pytest.mark.skipif(not nnpack.works(), reason="NNPACK does not run on this CPU (its fallback is tested above)")
def test_winograd_render_matches_direct(setup: dict) -> None:
    out = render_all(setup["warp"], setup["decoder"], setup["feature"], setup["kp_source"], setup["kp_driving"],
                     winograd=True)
    torch.testing.assert_close(out, setup["reference"], atol=1e-4, rtol=0)


def test_compile_falls_back_with_a_notice_without_a_compiler(setup: dict, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CXX", "")
    assert not render.compiler_available("cpu")
    warp, decoder = _prepared(setup, torch.float32, channels_last=False)
    out = render_all(warp, decoder, setup["feature"], setup["kp_source"], setup["kp_driving"][:1],
                     winograd=False, compile=True)
    assert torch.equal(out, setup["reference"][:1])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uncompiled" in err[0]


@pytest.mark.slow
@pytest.mark.skipif(not native_bf16("cpu"), reason="bf16 at full size needs native bf16 (AVX512-BF16 / AMX)")
def test_full_size_bf16_frame_is_at_least_40_db(official_models_dir) -> None:
    from kdtalker_core import weights

    lp = weights.load_liveportrait(official_models_dir / "liveportrait")
    nets = {}
    for precision in ("fp32", "bf16"):
        warp = weights.load_network("warping_module", lp["warping_module"]).eval()
        decoder = weights.load_network("spade_generator", lp["spade_generator"]).eval()
        nets[precision] = prepare_networks(warp, decoder, {"fp32": torch.float32, "bf16": torch.bfloat16}[precision],
                                           "cpu")
    torch.manual_seed(17)
    feature = torch.randn(1, 32, 16, 64, 64)
    kp_source = 0.6 * torch.rand(1, 21, 3) - 0.3
    kp_driving = kp_source + 0.03 * torch.randn(1, 21, 3)
    ref = render_all(*nets["fp32"], feature, kp_source, kp_driving)
    low = render_all(*nets["bf16"], feature, kp_source, kp_driving)
    assert ref.shape == (1, 512, 512, 3) and float(ref.std()) > 1e-3
    assert _psnr(low, ref) >= 40.0

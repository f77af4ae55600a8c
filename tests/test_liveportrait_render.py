"""LivePortrait F / W / G networks and chunked rendering (kdtalker_core.render)."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from small_networks import SMALL_SPADE, SMALL_WARP, randomize_norm_stats

from kdtalker_core.errors import InputError
from kdtalker_core.golden import run_fixture
from kdtalker_core.networks.appearance import AppearanceFeatureExtractor
from kdtalker_core.networks.spade import SPADEDecoder, SpectralNormConv2d, conv3x3_upsampled
from kdtalker_core.networks.warping import WarpingNetwork
from kdtalker_core.render import render_all, render_frames

# Tinier still for reduced precision: CPUs without native bf16 run PyTorch's slow reference kernels.
TINY_WARP = {
    "num_kp": 21, "block_expansion": 2, "max_features": 16, "num_down_blocks": 2, "reshape_channel": 4,
    "estimate_occlusion_map": True,
    "dense_motion_params": {"block_expansion": 2, "max_features": 4, "num_blocks": 2, "reshape_depth": 4,
                            "compress": 1},
}
TINY_SPADE = {"upscale": 2, "block_expansion": 2, "max_features": 8, "num_down_blocks": 2, "out_channels": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "fixture", ["lp_appearance_feature_extractor", "lp_warping_network", "lp_spade_decoder"]
)
def test_golden_fixture_passes(golden_dir: Path, fixture: str) -> None:
    results = run_fixture(golden_dir / fixture)
    assert results, "checker compared nothing"
    failed = [r.line() for r in results if not r.ok]
    assert not failed, failed
    meta = json.loads((golden_dir / fixture / "meta.json").read_text())
    compared = {r.output for r in results}
    assert set(meta["outputs"]) <= compared


@pytest.mark.parametrize(
    ("manifest", "factory"),
    [
        ("appearance_feature_extractor.pth.json", AppearanceFeatureExtractor),
        ("warping_module.pth.json", WarpingNetwork),
        ("spade_generator.pth.json", SPADEDecoder),
    ],
)
def test_full_size_layout_matches_manifest(golden_dir: Path, manifest: str, factory: type) -> None:
    spec = json.loads((golden_dir / "manifests" / manifest).read_text())
    with torch.device("meta"):
        model = factory()  # full size by default
        config_model = factory(**spec["_meta"]["config"])
    for m in (model, config_model):
        sd = m.state_dict()
        assert list(sd) == list(spec["keys"])  # same names in the same order
        for key, entry in spec["keys"].items():
            assert list(sd[key].shape) == entry["shape"], key
            assert str(sd[key].dtype).removeprefix("torch.") == entry["dtype"], key
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    random_sd = {k: torch.empty(e["shape"], dtype=dtypes[e["dtype"]], device="meta")
                 for k, e in spec["keys"].items()}
    model.load_state_dict(random_sd, strict=True, assign=True)


def test_spectral_norm_matches_torch_eval_mode() -> None:
    torch.manual_seed(1)
    ref = torch.nn.utils.spectral_norm(torch.nn.Conv2d(5, 7, 3, padding=1))
    ref.train()
    ref(torch.randn(2, 5, 6, 6))  # one power iteration moves u, v away from their init
    ref.eval()
    ours = SpectralNormConv2d(5, 7, 3, padding=1)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 5, 6, 6)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(ours(x), expected, atol=1e-6, rtol=1e-5)
        ours.fuse()
        assert ours.fused_weight is not None
        torch.testing.assert_close(ours(x), expected, atol=1e-6, rtol=1e-5)
    assert "fused_weight" not in ours.state_dict()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.fused_weight is None  # a new state dict invalidates the cached weight


@pytest.mark.parametrize(("factor", "size"), [(1, (5, 7)), (2, (4, 6)), (3, (3, 5)), (4, (5, 4))])
def test_conv_on_upsampled_map_equals_resize_then_conv(factor: int, size: tuple[int, int]) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, *size)
    weight = torch.randn(4, 3, 3, 3)
    bias = torch.randn(4)
    expected = F.conv2d(F.interpolate(x, scale_factor=factor, mode="nearest"), weight, bias, padding=1)
    torch.testing.assert_close(conv3x3_upsampled(x, weight, bias, factor), expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def small_render_setup() -> dict[str, torch.Tensor | torch.nn.Module]:
    torch.manual_seed(3)
    warp = randomize_norm_stats(WarpingNetwork(**SMALL_WARP), 4, affine=True)
    decoder = randomize_norm_stats(SPADEDecoder(**SMALL_SPADE), 5, affine=True)
    feature = torch.randn(1, 8, 8, 16, 16)
    kp_source = 0.5 * torch.randn(1, 21, 3).clamp(-1.5, 1.5)
    kp_driving = kp_source + 0.05 * torch.randn(5, 21, 3)
    return {"warp": warp, "decoder": decoder, "feature": feature, "kp_source": kp_source,
            "kp_driving": kp_driving}


@pytest.mark.parametrize("winograd", [False, True])
def test_render_chunking_matches_official_per_frame_loop(small_render_setup: dict, winograd: bool) -> None:
    s = small_render_setup
    args = (s["warp"], s["decoder"], s["feature"], s["kp_source"], s["kp_driving"])
    one = render_all(*args, chunk_size=1, winograd=winograd)
    three = render_all(*args, chunk_size=3, winograd=winograd, micro_batch=3)  # 3 frames per forward
    torch.testing.assert_close(render_all(*args, chunk_size=4, winograd=winograd), one, atol=5e-5, rtol=0)
    assert one.shape == (5, 128, 128, 3) and one.dtype == torch.float32
    torch.testing.assert_close(three, one, atol=5e-5, rtol=0)
    with torch.no_grad():  # the official loop: batch 1 warp + decode per frame, NCHW output
        frame3 = s["decoder"](s["warp"](s["feature"], s["kp_driving"][3:4], s["kp_source"])["out"])
    torch.testing.assert_close(three[3], frame3[0].permute(1, 2, 0), atol=1e-5, rtol=0)
    assert 0.0 <= float(one.min()) and float(one.max()) <= 1.0
    assert float(one.std()) > 1e-3


def test_render_chunks_callback_and_cancel(small_render_setup: dict) -> None:
    s = small_render_setup
    seen: list[tuple[int, int]] = []
    chunks = list(render_frames(s["warp"], s["decoder"], s["feature"], s["kp_source"][0], s["kp_driving"],
                                chunk_size=2, callback=lambda done, total: seen.append((done, total))))
    assert [c.shape[0] for c in chunks] == [2, 2, 1]
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]  # one call per frame on a CPU (micro-batch 1)
    seen.clear()
    list(render_frames(s["warp"], s["decoder"], s["feature"], s["kp_source"][0], s["kp_driving"],
                       chunk_size=2, micro_batch=2, callback=lambda done, total: seen.append((done, total))))
    assert seen == [(2, 5), (4, 5), (5, 5)]

    def cancel(done: int, total: int) -> None:
        raise KeyboardInterrupt("cancelled")

    warps: list[int] = []
    hook = s["warp"].register_forward_hook(lambda *_: warps.append(1))
    gen = render_frames(s["warp"], s["decoder"], s["feature"], s["kp_source"], s["kp_driving"],
                        chunk_size=4, callback=cancel)
    try:
        with pytest.raises(KeyboardInterrupt):
            next(gen)
    finally:
        hook.remove()
    assert warps == [1], "a cancel raised from the callback stops after the frame in flight, not the chunk"


def test_frames_side_by_side_on_threads_match_one_at_a_time(small_render_setup: dict) -> None:
    # Two frames at once, each on its own thread with one intra-op thread: same frames, progress
    # still in frame order, a cancel stops after the frames in flight, and the caller's thread
    # count is left as it was.
    s = small_render_setup
    args = (s["warp"], s["decoder"], s["feature"], s["kp_source"], s["kp_driving"])
    threads = torch.get_num_threads()
    one = render_all(*args, chunk_size=4, frame_threads=1)
    seen: list[tuple[int, int]] = []
    warps: list[str] = []
    hook = s["warp"].register_forward_hook(lambda *_: warps.append(threading.current_thread().name))
    try:
        two = render_all(*args, chunk_size=4, frame_threads=2, callback=lambda d, t: seen.append((d, t)))
    finally:
        hook.remove()
    torch.testing.assert_close(two, one, atol=5e-5, rtol=0)
    assert seen == [(k, 5) for k in range(1, 6)]
    assert all(name.startswith("kdtalker-frame") for name in warps) and len(warps) == 5
    assert torch.get_num_threads() == threads

    def cancel(done: int, total: int) -> None:
        raise KeyboardInterrupt("cancelled")

    # 12 frames in one chunk, cancelled at the first progress report: besides the (at most two)
    # frames done by then, only the two frames in flight finish.
    warps.clear()
    hook = s["warp"].register_forward_hook(lambda *_: warps.append("w"))
    kp_driving = s["kp_driving"].repeat(3, 1, 1)[:12]
    try:
        with pytest.raises(KeyboardInterrupt):
            render_all(*args[:4], kp_driving, chunk_size=12, frame_threads=2, callback=cancel)
    finally:
        hook.remove()
    assert 1 <= len(warps) <= 4, "a cancel lands within the frames in flight, not the chunk"
    assert torch.get_num_threads() == threads


def test_frame_threads_start_the_next_chunk_while_the_caller_holds_one(small_render_setup: dict) -> None:
    # With frame threads, the pool keeps working across chunk boundaries: while the caller holds
    # the first chunk (frames 0-1), frames 2 and 3 start without the generator being resumed;
    # the frames are still those of the one-at-a-time render, in order.
    s = small_render_setup
    args = (s["warp"], s["decoder"], s["feature"], s["kp_source"], s["kp_driving"])
    one = render_all(*args, chunk_size=2, frame_threads=1)
    started: list[int] = []
    hook = s["warp"].register_forward_pre_hook(lambda *_: started.append(1))
    gen = render_frames(*args, chunk_size=2, frame_threads=2)
    try:
        chunks = [next(gen)]
        deadline = time.monotonic() + 60
        while len(started) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(started) == 4, "the next chunk's frames start while the caller holds a chunk"
        chunks += list(gen)
    finally:
        hook.remove()
        gen.close()
    assert [c.shape[0] for c in chunks] == [2, 2, 1]
    torch.testing.assert_close(torch.cat(chunks), one, atol=5e-5, rtol=0)


def test_render_bfloat16_close_to_float32() -> None:
    torch.manual_seed(6)
    warp = randomize_norm_stats(WarpingNetwork(**TINY_WARP), 7, affine=True)
    decoder = randomize_norm_stats(SPADEDecoder(**TINY_SPADE), 8, affine=True)
    feature = torch.randn(1, 4, 4, 8, 8)
    kp_source = 0.5 * torch.randn(1, 21, 3).clamp(-1.5, 1.5)
    kp_driving = kp_source + 0.05 * torch.randn(2, 21, 3)
    args = (warp, decoder, feature, kp_source, kp_driving)
    ref = render_all(*args, chunk_size=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.bfloat16 rendering on a CPU", RuntimeWarning)
        low = render_all(*args, chunk_size=2, dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and low.shape == ref.shape == (2, 64, 64, 3)
    assert float(ref.std()) > 1e-3
    mse = float((low - ref).pow(2).mean())
    psnr = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20)))
    assert 35.0 < psnr < 120.0, f"bf16 PSNR {float(psnr):.1f} dB"  # close, yet really reduced precision


def test_render_rejects_bad_inputs(small_render_setup: dict) -> None:
    s = small_render_setup
    with pytest.raises(InputError, match="kp_driving"):
        render_all(s["warp"], s["decoder"], s["feature"], s["kp_source"], s["kp_driving"][:, :20])
    with pytest.raises(InputError, match="feature_3d"):
        render_all(s["warp"], s["decoder"], s["feature"][0], s["kp_source"], s["kp_driving"])
    with pytest.raises(InputError, match="chunk_size"):
        render_all(s["warp"], s["decoder"], s["feature"], s["kp_source"], s["kp_driving"], chunk_size=0)
    with pytest.raises(InputError, match="no frames"):
        render_all(s["warp"], s["decoder"], s["feature"], s["kp_source"], s["kp_driving"][:0])

"""Motion denoiser, attention backends and the DDIM sampler (small models, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdtalker_core import attention as attn_mod
from kdtalker_core.attention import (
    attention,
    available_backends,
    get_attention_backend,
    set_attention_backend,
)
from kdtalker_core.backends import mkl_linear
from kdtalker_core.errors import InputError
from kdtalker_core.golden import run_fixture
from kdtalker_core.golden_checks._common import load_fixture
from kdtalker_core.golden_checks.denoiser import build_denoiser
from kdtalker_core.networks.denoiser import MotionDenoiser
from kdtalker_core.networks.denoiser_blocks import apply_rotary
from kdtalker_core.sampling import ddim_timesteps, linear_alphas_cumprod, sample_ddim

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_fixture(golden_dir: Path):
    """The small denoiser fixture (dim 128, 2 layers) with float32 weights."""
    path = golden_dir / "denoiser"
    return load_fixture(path, json.loads((path / "meta.json").read_text()))


@pytest.fixture()
def small_model(small_fixture) -> MotionDenoiser:
    return build_denoiser(small_fixture.meta["config"], small_fixture.weights)


def _window_inputs(seed: int = 0, frames: int = 16):
    g = torch.Generator().manual_seed(seed)
    ori = torch.randn(1, 70, generator=g)
    ref = torch.randn(1, 70, generator=g)
    aud = torch.randn(1, frames, 512, generator=g)
    noise = torch.randn(1, frames, 70, generator=g)
    return ori, ref, aud, noise


@pytest.mark.parametrize("name", ["denoiser", "ddim_sampling"])
def test_golden_fixture_passes(golden_dir: Path, name: str) -> None:
    results = run_fixture(golden_dir / name)
    assert results, "the checker compared nothing"
    failed = [r.line() for r in results if not r.ok]
    assert not failed, failed


def test_full_size_state_dict_matches_kdtalker_manifest(golden_dir: Path) -> None:
    manifest = json.loads((golden_dir / "manifests" / "KDTalker.pth.json").read_text())["keys"]
    with torch.device("meta"):
        model = MotionDenoiser()
    state = model.state_dict()
    assert list(state) == list(manifest)
    for key, entry in manifest.items():
        assert list(state[key].shape) == entry["shape"], key
        assert str(state[key].dtype).removeprefix("torch.") == entry["dtype"], key
    assert model.heads == 12 and model.rotary_dim == 12


def test_each_layer_owns_rotary_freqs_and_loads_them_strictly(small_model: MotionDenoiser) -> None:
    state = small_model.state_dict()
    keys = [k for k in state if k.endswith("rotary_emb.freqs")]
    assert len(keys) == 2
    state[keys[1]] = state[keys[1]] * 0.5  # distinct values must land in their own layer
    small_model.load_state_dict(state, strict=True)
    assert torch.equal(small_model.state_dict()[keys[1]], state[keys[1]])
    assert not torch.equal(small_model.state_dict()[keys[0]], state[keys[1]])


def _randomised(model: MotionDenoiser, seed: int) -> MotionDenoiser:
    """``model`` with every parameter redrawn (norm affines and biases too), so no term is trivial.

    Matrices get std ``fan_in ** -0.5`` so activations stay O(1) and float32 rounding stays ~1e-6.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point() or key.endswith(("freqs", "freq_bands")):
            state[key] = value
            continue
        std = value.shape[-1] ** -0.5 if value.dim() == 2 else 0.1
        state[key] = torch.randn(value.shape, generator=g) * std + (1.0 if key.endswith("gamma") else 0.0)
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_reference_forward_reproduces_golden_and_fast_path(small_model, small_fixture) -> None:
    x, t, c = (small_fixture.inputs[k] for k in ("x", "timesteps", "context"))
    reference = small_model.reference_forward(x, t, c)
    torch.testing.assert_close(reference, small_fixture.outputs["out"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(small_model(x, t, c), reference, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_fast_path_equals_reference_on_random_config(backend: str) -> None:
    # odd rotary_dim (rotates 2 channels), 3 heads of 32, other widths than the official ones
    model = _randomised(MotionDenoiser(dim=96, num_layers=2, heads=3, rotary_dim=3, in_channels=11,
                                       out_channels=5, context_dim=24, timestep_embed_dim=40,
                                       num_buckets=8, max_distance=16, attention_backend=backend), seed=3)
    g = torch.Generator().manual_seed(4)
    x, ctx = torch.randn(2, 21, 11, generator=g), torch.randn(2, 21, 24, generator=g)
    t = torch.tensor([3, 911])
    reference = model.reference_forward(x, t, ctx)
    assert reference.shape == (2, 21, 5)
    torch.testing.assert_close(model(x, t, ctx), reference, atol=1e-5, rtol=1e-5)
    # the second sample's output must depend on its own timestep (time conditioning is per sample)
    assert not torch.allclose(reference[1], model.reference_forward(x, torch.tensor([3, 3]), ctx)[1], atol=1e-4)


def test_window_eps_fn_equals_reference_with_and_without_mkl_packing() -> None:
    model = _randomised(MotionDenoiser(dim=128, num_layers=2), seed=5)
    ori, ref, aud, x_t = _window_inputs(frames=10)
    t = torch.tensor([250])
    tokens = torch.cat([ori[:, None], ref[:, None], x_t], dim=1)
    context = torch.cat([torch.zeros(1, 2, 512), aud], dim=1)
    expected = model.reference_forward(tokens, t, context)[:, 2:]
    packed = model.window_eps_fn(ori, ref, aud)(x_t, t)
    with mkl_linear.force_fallback():
        model.invalidate_caches()
        assert model._get_plan().packed_for(12) == [(None,) * 6] * 2
        plain = model.window_eps_fn(ori, ref, aud)(x_t, t)
    torch.testing.assert_close(packed, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)
    if mkl_linear.float32_library() == "mkl":
        torch.testing.assert_close(packed, plain, atol=0, rtol=0)  # MKL's packed GEMM is F.linear's GEMM


@pytest.mark.parametrize("library", ["mkl", "onednn"])
def test_packed_float32_linear_and_fallback_agree(monkeypatch, library) -> None:
    monkeypatch.setenv("KDTALKER_PACKED_FP32", library)
    g = torch.Generator().manual_seed(6)
    w, b, x = torch.randn(48, 32, generator=g), torch.randn(48, generator=g), torch.randn(2, 33, 32, generator=g)
    expected = torch.nn.functional.linear(x, w, b)
    with mkl_linear.force_fallback():
        assert not mkl_linear.available()
        assert mkl_linear.pack_weight(w, 66) is None
        torch.testing.assert_close(mkl_linear.linear(x, w, b), expected, atol=0, rtol=0)
    assert mkl_linear.pack_weight(w.half(), 66) is None  # float32 and bfloat16 weights only
    packed = mkl_linear.pack_weight(w, 66)
    if mkl_linear.float32_library() != library:
        pytest.skip(f"{library} packed float32 linear does not run in this PyTorch build")
    assert packed is not None and packed.library == library
    exact = library == "mkl"  # MKL's packed GEMM is F.linear's; oneDNN sums in another order
    torch.testing.assert_close(mkl_linear.linear(x, w, b, packed), expected,
                               atol=0 if exact else 1e-5, rtol=0 if exact else 1e-5)
    with mkl_linear.force_fallback():  # a packed weight made earlier is ignored under the fallback
        torch.testing.assert_close(mkl_linear.linear(x, w, b, packed), expected, atol=0, rtol=0)


def test_float32_library_is_chosen_by_probe_unless_forced(monkeypatch) -> None:
    monkeypatch.delenv("KDTALKER_PACKED_FP32", raising=False)
    assert mkl_linear.float32_library() in ("mkl", "onednn", None)
    monkeypatch.setenv("KDTALKER_PACKED_FP32", "onednn")
    if mkl_linear._onednn_works(torch.float32):
        assert mkl_linear.float32_library() == "onednn"
    with mkl_linear.force_fallback():
        assert mkl_linear.float32_library() is None and not mkl_linear.packs(torch.float32)


def test_onednn_packed_bf16_linear_equals_f_linear() -> None:
    g = torch.Generator().manual_seed(8)
    w = torch.randn(96, 64, generator=g).bfloat16()
    b = torch.randn(96, generator=g).bfloat16()
    x = torch.randn(1, 66, 64, generator=g).bfloat16()
    expected = torch.nn.functional.linear(x, w, b)
    with mkl_linear.force_fallback():
        assert mkl_linear.pack_weight(w, 66) is None
    packed = mkl_linear.pack_weight(w, 66)
    if not mkl_linear.bf16_available():
        assert packed is None
        pytest.skip("oneDNN packed bfloat16 linear does not run here")
    assert packed is not None and packed.library == "onednn" and packed.tensor.dtype == torch.bfloat16
    torch.testing.assert_close(mkl_linear.linear(x, w, b, packed), expected, atol=0, rtol=0)
    torch.testing.assert_close(mkl_linear.linear(x, w, None, mkl_linear.pack_weight(w, 66)),
                               torch.nn.functional.linear(x, w), atol=0, rtol=0)
    other = x[:, :13]  # another row count than the one packed for still multiplies right
    torch.testing.assert_close(mkl_linear.linear(other, w, b, packed),
                               torch.nn.functional.linear(other, w, b), atol=0, rtol=0)


def test_bf16_window_eps_fn_packed_agrees_with_plain_and_is_as_accurate() -> None:
    model32 = _randomised(MotionDenoiser(dim=128, num_layers=2), seed=9)
    model = _randomised(MotionDenoiser(dim=128, num_layers=2), seed=9).to(torch.bfloat16)
    ori, ref, aud, x_t = _window_inputs(frames=10)
    t = torch.tensor([250])
    exact = model32.window_eps_fn(ori, ref, aud)(x_t, t)
    packed = model.window_eps_fn(ori, ref, aud)(x_t, t)
    with mkl_linear.force_fallback():
        model.invalidate_caches()
        plain = model.window_eps_fn(ori, ref, aud)(x_t, t)
    model.invalidate_caches()
    if mkl_linear.bf16_available():
        assert model._get_plan().packed_for(12)[0][0] is not None
    # the packed products apply the SiLU / residual to their float32 sums (one rounding less)
    torch.testing.assert_close(packed, plain, atol=0.05, rtol=0.05)
    assert (packed - exact).pow(2).mean() <= 1.1 * (plain - exact).pow(2).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_fuses_silu_and_residual_like_the_plain_ops(dtype) -> None:
    g = torch.Generator().manual_seed(12)
    w = (0.1 * torch.randn(96, 64, generator=g)).to(dtype)
    b = torch.randn(96, generator=g).to(dtype)
    x = torch.randn(1, 66, 64, generator=g).to(dtype)
    res = torch.randn(1, 66, 96, generator=g).to(dtype)
    product = torch.nn.functional.linear(x.double(), w.double(), b.double())
    packed = mkl_linear.pack_weight(w, 66)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for p in (None, packed):
        silu = mkl_linear.linear(x, w, b, p, silu=True)
        added = mkl_linear.linear(x, w, b, p, residual=res)
        assert silu.dtype == added.dtype == dtype and silu.shape == added.shape == (1, 66, 96)
        torch.testing.assert_close(silu.double(), torch.nn.functional.silu(product), atol=tol, rtol=tol)
        torch.testing.assert_close(added.double(), product + res.double(), atol=tol, rtol=tol)
    assert torch.equal(res, res.clone())  # the residual is read, not written
    with pytest.raises(ValueError, match="silu and residual"):
        mkl_linear.linear(x, w, b, packed, silu=True, residual=res)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_schedule_time_modulations_batched_match_step_by_step(dtype) -> None:
    model = _randomised(MotionDenoiser(dim=128, num_layers=2), seed=10).to(dtype)
    ori, ref, aud, x_t = _window_inputs(frames=10)
    schedule = torch.tensor([980, 500, 20])
    step_by_step = model.window_eps_fn(ori, ref, aud)
    expected = [step_by_step(x_t, torch.tensor([t])) for t in schedule.tolist()]
    model.invalidate_caches()
    batched = model.window_eps_fn(ori, ref, aud, schedule)
    assert sorted(model._get_plan().time) == [(20,), (500,), (980,)]  # filled before the first step
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for t, want in zip(schedule.tolist(), expected):
        torch.testing.assert_close(batched(x_t, torch.tensor([t])), want, atol=tol, rtol=tol)


def test_apply_rotary_turns_channel_pairs_by_position() -> None:
    x = torch.zeros(1, 4, 6)
    x[..., 0] = 1.0  # pair 0 = (1, 0), pair 1 = (0, 0), channels 4.. untouched
    x[..., 5] = 7.0
    freqs = torch.tensor([0.5, 0.25])
    out = apply_rotary(x, freqs)
    angles = torch.arange(4.0) * 0.5
    torch.testing.assert_close(out[0, :, 0], angles.cos())
    torch.testing.assert_close(out[0, :, 1], angles.sin())
    assert torch.equal(out[..., 2:4], torch.zeros(1, 4, 2)) and torch.equal(out[..., 5], x[..., 5])
    assert torch.equal(apply_rotary(x, torch.zeros(0)), x)


def test_sdpa_and_math_backends_agree_on_small_model(small_model, small_fixture) -> None:
    x, t, c = (small_fixture.inputs[k] for k in ("x", "timesteps", "context"))
    small_model.attention_backend = "sdpa"
    out_sdpa = small_model(x, t, c)
    small_model.attention_backend = "math"
    out_math = small_model(x, t, c)
    torch.testing.assert_close(out_sdpa, out_math, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias_shape", [None, (3, 9, 9), (2, 3, 9, 9)])
def test_attention_function_backends_agree(bias_shape) -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 9, 16, generator=g) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(bias_shape, generator=g)
    ref = attention(q, k, v, bias, backend="math", scale=0.25)
    torch.testing.assert_close(attention(q, k, v, bias, backend="sdpa", scale=0.25), ref, atol=1e-5, rtol=0)
    # default scale is Dh ** -0.5
    torch.testing.assert_close(attention(q, k, v, bias, backend="math"),
                               attention(q * 0.25, k, v, bias, backend="math", scale=1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_attention_on_cpu_uses_float32_math_for_short_sequences(dtype) -> None:
    g = torch.Generator().manual_seed(4)
    short = [torch.randn(1, 12, 66, 64, generator=g).to(dtype) for _ in range(3)]
    bias = torch.randn(1, 12, 66, 66, generator=g).to(dtype)
    auto = attention(*short, bias)
    assert torch.equal(auto, attention(*short, bias, backend="math"))
    exact = attention(*(t.double() for t in short), bias.double(), backend="sdpa")
    sdpa = attention(*short, bias, backend="sdpa")
    # float32 all the way: no less accurate than PyTorch's fused kernel
    assert (auto.double() - exact).abs().max() <= 1.05 * (sdpa.double() - exact).abs().max() + 1e-7
    n = int(attn_mod.CPU_MATH_MAX_PAIRS ** 0.5) + 8  # long sequences stay on SDPA
    long = [torch.randn(1, 2, n, 16, generator=g).to(dtype) for _ in range(3)]
    assert torch.equal(attention(*long), attention(*long, backend="sdpa"))
    previous = get_attention_backend()
    try:  # a backend chosen by the user is obeyed, whatever the length
        set_attention_backend("sdpa")
        assert torch.equal(attention(*short, bias), attention(*short, bias, backend="sdpa"))
    finally:
        set_attention_backend(previous)


def test_xformers_backend_matches_math() -> None:
    if not attn_mod.xformers_installed() or not torch.cuda.is_available():
        pytest.skip("xformers backend needs the xformers package and a CUDA device")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, 66, 64, device="cuda", generator=g) for _ in range(3))
    bias = torch.randn(4, 66, 66, device="cuda", generator=g)
    out = attention(q, k, v, bias, backend="xformers")
    torch.testing.assert_close(out, attention(q, k, v, bias, backend="math"), atol=1e-4, rtol=1e-4)


def test_backend_selection_and_errors() -> None:
    assert {"sdpa", "math"} <= set(available_backends("cpu"))
    assert "xformers" not in available_backends("cpu")
    with pytest.raises(InputError, match="Unknown attention backend"):
        attention(*(torch.zeros(1, 1, 2, 4) for _ in range(3)), backend="flash9")
    with pytest.raises(InputError, match="Unknown attention backend"):
        set_attention_backend("nope")
    previous = get_attention_backend()
    try:
        set_attention_backend("math")
        assert get_attention_backend() == "math"
        assert attn_mod.resolve_backend("auto", torch.device("cpu")) == "math"
        assert attn_mod.resolve_backend("sdpa", torch.device("cpu")) == "sdpa"
        set_attention_backend("auto")
        assert attn_mod.resolve_backend("auto", torch.device("cpu")) == "sdpa"  # xformers is CUDA-only
    finally:
        set_attention_backend(previous)
    if not attn_mod.xformers_installed():
        with pytest.raises(InputError, match="xformers"):
            attn_mod.resolve_backend("xformers", torch.device("cpu"))


def test_window_eps_fn_equals_forward_on_official_token_layout(small_model) -> None:
    ori, ref, aud, x_t = _window_inputs(frames=12)
    t = torch.tensor([417])
    eps = small_model.window_eps_fn(ori, ref, aud)(x_t, t)
    tokens = torch.cat([ori[:, None], ref[:, None], x_t], dim=1)
    context = torch.cat([torch.zeros(1, 2, 512), aud], dim=1)
    full = small_model(tokens, t, context)
    assert eps.shape == x_t.shape
    torch.testing.assert_close(eps, full[:, 2:], atol=1e-6, rtol=1e-5)


def test_cached_tables_follow_new_weights(small_model, small_fixture) -> None:
    x, t, c = (small_fixture.inputs[k] for k in ("x", "timesteps", "context"))
    before = small_model(x, t, c)
    state = {k: v * 1.1 if v.is_floating_point() else v for k, v in small_fixture.weights.items()}
    small_model.load_state_dict(state, strict=True)
    fresh = build_denoiser(small_fixture.meta["config"], state)
    after = small_model(x, t, c)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh(x, t, c))


def test_bfloat16_model_runs_close_to_float32(small_model, small_fixture) -> None:
    x, t, c = (small_fixture.inputs[k] for k in ("x", "timesteps", "context"))
    ref = small_model(x, t, c)
    out = small_model.to(torch.bfloat16)(x, t, c)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_ddim_timesteps_and_schedule() -> None:
    assert ddim_timesteps(50).tolist() == list(range(980, -1, -20))
    assert ddim_timesteps(10).tolist() == list(range(900, -1, -100))
    assert ddim_timesteps(1).tolist() == [0]
    with pytest.raises(InputError):
        ddim_timesteps(0)
    ac = linear_alphas_cumprod()
    assert ac.dtype == torch.float32 and ac.shape == (1000,)
    assert bool((ac[1:] < ac[:-1]).all())


def test_ten_steps_run_and_differ_from_fifty(small_model) -> None:
    ori, ref, aud, noise = _window_inputs()
    eps_fn = small_model.window_eps_fn(ori, ref, aud)
    ac = linear_alphas_cumprod()
    x10 = sample_ddim(eps_fn, noise, ac, ddim_timesteps(10))
    x50 = sample_ddim(eps_fn, noise, ac, ddim_timesteps(50))
    assert x10.shape == noise.shape and torch.isfinite(x10).all()
    assert not torch.allclose(x10, x50, atol=1e-3)


def test_callback_sees_every_step_and_raising_cancels(small_model) -> None:
    ori, ref, aud, noise = _window_inputs()
    eps_fn = small_model.window_eps_fn(ori, ref, aud)
    calls: list[int] = []

    def counting_eps(x, t):
        calls.append(int(t[0]))
        return eps_fn(x, t)

    seen: list[tuple[int, int]] = []
    sample_ddim(counting_eps, noise, linear_alphas_cumprod(), ddim_timesteps(5),
                callback=lambda i, t, x: seen.append((i, t)))
    assert seen == [(0, 800), (1, 600), (2, 400), (3, 200), (4, 0)]

    class Cancelled(Exception):
        pass

    def cancel_at_two(i, t, x):
        if i == 2:
            raise Cancelled

    calls.clear()
    with pytest.raises(Cancelled):
        sample_ddim(counting_eps, noise, linear_alphas_cumprod(), ddim_timesteps(10), callback=cancel_at_two)
    assert calls == [900, 800, 700]


def test_eta_noise_comes_from_the_generator(small_model) -> None:
    ori, ref, aud, noise = _window_inputs()
    eps_fn = small_model.window_eps_fn(ori, ref, aud)
    ac, ts = linear_alphas_cumprod(), ddim_timesteps(5)
    a = sample_ddim(eps_fn, noise, ac, ts, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = sample_ddim(eps_fn, noise, ac, ts, eta=1.0, generator=torch.Generator().manual_seed(3))
    c = sample_ddim(eps_fn, noise, ac, ts, eta=0.0)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c, atol=1e-3)


def test_sampler_matches_a_direct_ddim_formula() -> None:
    """Deterministic DDIM on a linear eps (eps = 0.5 x) against a hand-written float64 recursion."""
    ac = linear_alphas_cumprod()
    ts = ddim_timesteps(4)
    x_T = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    out = sample_ddim(lambda x, t: 0.5 * x, x_T, ac, ts)
    x = x_T.double()
    seq = ts.tolist()
    for i, t in enumerate(seq):
        a_t = ac[t].double()
        a_p = ac[seq[i + 1]].double() if i + 1 < len(seq) else torch.tensor(1.0, dtype=torch.float64)
        eps = 0.5 * x
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps
    torch.testing.assert_close(out.double(), x, atol=1e-5, rtol=1e-5)


def test_weights_created_under_inference_mode_work():
    """ComfyUI runs nodes under torch.inference_mode: weights loaded there are inference tensors
    (no version counter); the denoiser's cached plan must cope and still follow weight changes."""
    with torch.inference_mode():
        model = MotionDenoiser(dim=128, num_layers=1).eval()
        x, t, ctx = torch.randn(1, 10, 70), torch.tensor([5]), torch.randn(1, 10, 512)
        first = model(x, t, ctx)
        model.load_state_dict({k: v * 1.5 if v.is_floating_point() else v for k, v in model.state_dict().items()})
        assert not torch.equal(model(x, t, ctx), first)


def test_packed_weights_are_freed_when_sampling_ends_and_results_repeat() -> None:
    from kdtalker_core.motion import generate_motion_normalized

    model = _randomised(MotionDenoiser(dim=128, num_layers=2), seed=7)
    ori, ref, aud, _ = _window_inputs(frames=20)
    runs = []
    for _ in range(2):
        runs.append(generate_motion_normalized(model, ref, ori, aud[0], steps=3,
                                               generator=torch.Generator().manual_seed(1)))
        plan = model._get_plan()
        assert plan.packed == [] and plan.packed_rows == 0  # no packed copy left while frames render
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)  # packing again gives the same numbers
    if mkl_linear.available():  # and the packed path was really used inside the run
        assert model._get_plan().packed_for(66)[0][0] is not None


def test_cuda_graph_is_wanted_on_cuda_only_and_can_be_turned_off(monkeypatch, capsys) -> None:
    from kdtalker_core import cuda_graph

    monkeypatch.delenv("KDTALKER_CUDA_GRAPH", raising=False)
    assert not cuda_graph.wanted("cpu")
    assert cuda_graph.wanted("cuda") == hasattr(torch.cuda, "CUDAGraph")
    monkeypatch.setenv("KDTALKER_CUDA_GRAPH", "0")
    assert not cuda_graph.wanted("cuda")
    if not torch.cuda.is_available():  # a refused capture is reported in one line and not used
        assert cuda_graph.capture(lambda x: x * 2, [torch.ones(3)], name="probe step") is None
        err = capsys.readouterr().err
        assert "CUDA graph capture of the probe step failed" in err and len(err.strip().splitlines()) == 1


def test_cuda_graph_flag_is_ignored_off_cuda() -> None:
    model = _randomised(MotionDenoiser(dim=128, num_layers=2), seed=9)
    ori, ref, aud, x_t = _window_inputs(frames=10)
    t = torch.tensor([600])
    plain = model.window_eps_fn(ori, ref, aud)(x_t, t)
    flagged = model.window_eps_fn(ori, ref, aud, cuda_graph=True)(x_t, t)
    torch.testing.assert_close(flagged, plain, atol=0, rtol=0)
    assert model._get_plan().graphs == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_sampling_equals_direct_steps_and_is_reused_across_windows(dtype, monkeypatch) -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a CUDA device")
    from kdtalker_core.motion import generate_motion_normalized

    model = _randomised(MotionDenoiser(dim=128, num_layers=2), seed=11).to("cuda", dtype)
    ori, ref, aud, _ = _window_inputs(frames=100)  # two 64-frame windows
    runs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("KDTALKER_CUDA_GRAPH", flag)
        model.invalidate_caches()
        runs[flag] = generate_motion_normalized(model, ref, ori, aud[0], steps=5, dtype=dtype,
                                                generator=torch.Generator(device="cuda").manual_seed(3))
        graphs = model._get_plan().graphs
        assert len(graphs) == (1 if flag == "1" else 0)  # one capture serves both windows
        assert all(g is not None for g in graphs.values())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(runs["1"], runs["0"], atol=tol, rtol=tol)

"""LivePortrait SPADE decoder G: warped 2D feature (B,256,64,64) -> RGB image (B,3,512,512) in [0,1].

The residual blocks' convolutions are spectrally normalised. :class:`SpectralNormConv2d` keeps the
checkpoint layout (``weight_orig`` parameter, ``weight_u`` / ``weight_v`` buffers) and, as in eval
mode of the original training code, divides by sigma = u . (W v) with the STORED u, v (no power
iteration). :meth:`SPADEDecoder.fuse_spectral_norm` caches the divided weights for inference.

Speed-ups that keep the numbers (up to float rounding):
- gamma and beta of a SPADE are one convolution (weights concatenated);
- the shared SPADE convolutions of one residual block run as one convolution;
- when a block runs at s times the resolution of the conditioning map, its 3x3 convolution over the
  nearest-upsampled map is computed on the low-resolution map with one small kernel per output
  phase (sub-pixel position), which needs 2.25x (s=2) to 4x (s=4) fewer multiply-adds.

Optional, for float32 on CPU: inside :func:`winograd_convolutions` every 3x3 convolution runs
through NNPACK's Winograd kernels (:mod:`kdtalker_core.backends.nnpack`; about 2.5-3x faster than
oneDNN's direct convolution on AVX2 CPUs, relative error about 1e-5 per convolution). Outside it
the direct convolution runs; :func:`kdtalker_core.render.render_frames` turns Winograd on for
float32 on CPUs where a measured probe says it wins.

Reduced precision: with bf16/fp16 weights (:func:`kdtalker_core.render.prepare_networks`) the
convolutions and modulations run in that dtype, in channels-last memory when ``channels_last`` is
set; instance-norm statistics and the final sigmoid stay float32.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import nnpack
from .blocks import to_compute

#: Hidden width of every SPADE modulation branch.
SPADE_HIDDEN = 128

_WINOGRAD = contextvars.ContextVar("kdtalker_spade_winograd", default=False)


def winograd_available() -> bool:
    """True when NNPACK runs here (see :func:`kdtalker_core.backends.nnpack.works`)."""
    return nnpack.works()


@contextlib.contextmanager
def winograd_convolutions(enabled: bool = True) -> Iterator[bool]:
    """Within the block, float32 CPU 3x3 convolutions of the decoder use NNPACK Winograd kernels.

    Yields whether it is in effect (False when NNPACK does not work on this machine).
    """
    active = bool(enabled) and winograd_available()
    token = _WINOGRAD.set(active)
    try:
        yield active
    finally:
        _WINOGRAD.reset(token)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1 (Winograd inside :func:`winograd_convolutions`)."""
    if (not torch.compiler.is_compiling() and _WINOGRAD.get() and x.device.type == "cpu"
            and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
        return nnpack.conv3x3(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is ``weight_orig / sigma``, sigma = u . (weight_orig.reshape(out,-1) @ v).

    State-dict keys, in order: ``bias`` (if any), ``weight_orig``, ``weight_u`` (out,),
    ``weight_v`` (in*k*k,). u and v are fixed (inference only). After :meth:`fuse` the divided
    weight is cached (not saved in the state dict; loading a state dict drops the cache).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.padding = padding
        # Registration order fixes the state-dict order of the released checkpoints.
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        fan_in = in_channels * kernel_size * kernel_size
        self.register_buffer("weight_u", torch.empty(out_channels))
        self.register_buffer("weight_v", torch.empty(fan_in))
        self.register_buffer("fused_weight", None, persistent=False)
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self._init_singular_vectors()
        self.register_load_state_dict_pre_hook(SpectralNormConv2d._drop_fused)

    @torch.no_grad()
    def _init_singular_vectors(self, iterations: int = 10) -> None:
        """Fresh modules only: u, v by power iteration, so sigma ~ the top singular value
        (a checkpoint's stored u, v replace these on load)."""
        w = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        if w.is_meta:
            return
        u = F.normalize(torch.randn(w.shape[0], device=w.device), dim=0, eps=1e-12)
        v = F.normalize(torch.mv(w.t(), u), dim=0, eps=1e-12)
        for _ in range(iterations):
            u = F.normalize(torch.mv(w, v), dim=0, eps=1e-12)
            v = F.normalize(torch.mv(w.t(), u), dim=0, eps=1e-12)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)

    @staticmethod
    def _drop_fused(module: nn.Module, *args: object) -> None:
        module.fused_weight = None

    def normalized_weight(self) -> torch.Tensor:
        """weight_orig / sigma computed in float32, (out,in,k,k) float32."""
        w = self.weight_orig.float()
        sigma = torch.dot(self.weight_u.float(), torch.mv(w.reshape(w.shape[0], -1), self.weight_v.float()))
        return w / sigma

    @torch.no_grad()
    def fuse(self) -> None:
        """Cache the divided weight (in the parameter dtype) so forward skips the division."""
        self.fused_weight = self.normalized_weight().to(self.weight_orig.dtype)

    def weight(self) -> torch.Tensor:
        """The effective convolution weight (cached after :meth:`fuse`)."""
        return self.fused_weight if self.fused_weight is not None else self.normalized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight()
        if weight.shape[-1] == 3 and self.padding == 1:
            return conv3x3(x, weight, self.bias)
        return F.conv2d(x, weight, self.bias, padding=self.padding)


def _phase_taps(factor: int, phase: int) -> tuple[int, list[list[int]]]:
    """For output phase ``phase`` of x``factor`` nearest upsampling and a 3-tap kernel (padding 1):

    (first low-res offset, for each low-res offset the list of original taps summed into it).
    """
    groups: dict[int, list[int]] = {}
    for tap in range(3):
        groups.setdefault((phase + tap - 1) // factor, []).append(tap)
    first = min(groups)
    return first, [groups[o] for o in range(first, max(groups) + 1)]


def phase_kernels(weight: torch.Tensor, factor: int) -> list[tuple[int, int, torch.Tensor]]:
    """The sub-pixel kernels of a 3x3 convolution over an x``factor`` nearest-upsampled map.

    weight (Cout,Cin,3,3) -> for each output phase (py,px) in row-major order: (first low-res
    row offset, first low-res column offset, kernel (Cout,Cin,ny,nx)) whose taps are the sums of
    the 3x3 taps landing on the same low-resolution pixel. Sums run in float32 whatever the
    weight dtype; kernels come back in the weight's dtype and memory format.
    """
    w32 = weight.float()
    fmt = torch.channels_last if _is_channels_last(weight) else torch.contiguous_format
    phases = [_phase_taps(factor, p) for p in range(factor)]
    kernels = []
    for oy, rows in phases:
        # (ny, 3, 3) row-summed kernels for this vertical phase.
        wr = torch.stack([w32[:, :, r].sum(dim=2) for r in rows], dim=2)  # (Cout,Cin,ny,3)
        for ox, cols in phases:
            k = torch.stack([wr[:, :, :, c].sum(dim=3) for c in cols], dim=3)  # (Cout,Cin,ny,nx)
            kernels.append((oy, ox, k.to(dtype=weight.dtype, memory_format=fmt)))
    return kernels


def conv3x3_upsampled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      factor: int, kernels: list[tuple[int, int, torch.Tensor]] | None = None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=factor, mode='nearest'), weight, bias, padding=1)``.

    x (B,Cin,H,W), weight (Cout,Cin,3,3) -> (B,Cout,factor*H,factor*W), computed on the low
    resolution input: each output phase (py,px) is a small valid convolution whose kernel sums
    the 3x3 taps that land on the same low-resolution pixel. ``kernels``: precomputed
    :func:`phase_kernels` of ``weight`` (computed here when None). The output keeps x's memory
    format (channels-last in, channels-last out).
    """
    if factor == 1:
        return conv3x3(x, weight, bias)
    if kernels is None:
        kernels = phase_kernels(weight, factor)
    b, _, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    out = torch.empty((b, weight.shape[0], h * factor, w * factor), dtype=x.dtype, device=x.device,
                      memory_format=fmt)
    for i, (oy, ox, k) in enumerate(kernels):
        py, px = divmod(i, factor)
        ny, nx = k.shape[2], k.shape[3]
        window = xp[:, :, 1 + oy: 1 + oy + h + ny - 1, 1 + ox: 1 + ox + w + nx - 1]
        out[:, :, py::factor, px::factor] = F.conv2d(window, k, bias)
    return out


def _is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4D tensor laid out channels-last (and not also plain contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def instance_normalize(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel normalisation (biased variance, eps 1e-5) in float32.

    The result keeps a channels-last x channels-last (so the modulation that follows does not mix
    memory layouts, which PyTorch runs several times slower).
    """
    with torch.autocast(x.device.type, enabled=False):
        out = F.instance_norm(x.float(), eps=1e-5)
    if _is_channels_last(x) and not _is_channels_last(out):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Instance normalisation in a form :meth:`SPADE.modulate` takes: (normalized, None) or (centred, rstd).

    float32 x (the official path): (IN(x) in float32, None). Reduced-precision x (B,C,H,W): no
    float32 copy of the map; statistics accumulate in float32 (``var_mean``), the centred map
    x - mean stays in x's dtype and memory format, and rstd (B,C,1,1) = 1/sqrt(var + 1e-5) is
    applied inside the modulation (see :meth:`SPADE.modulate`).
    """
    if x.dtype == torch.float32:
        return instance_normalize(x), None
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    rstd = torch.rsqrt(var.float() + 1e-5).to(x.dtype)
    return x - mean, rstd


class _CachedKernels(nn.Module):
    """A module that caches derived convolution kernels (concatenations, sub-pixel phases).

    The cache is dropped whenever parameters move or change dtype (``.to``, ``.half`` ...) and
    when a state dict is loaded, so it never goes stale.
    """

    def __init__(self) -> None:
        super().__init__()
        self._kernel_cache: dict[object, object] = {}
        self.register_load_state_dict_pre_hook(_CachedKernels._drop_cache)

    @staticmethod
    def _drop_cache(module: nn.Module, *args: object) -> None:
        module._kernel_cache = {}

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._kernel_cache = {}
        return super()._apply(fn, recurse)

    def cached(self, key: object, make):  # type: ignore[no-untyped-def]
        """``make()`` once per ``key`` (outside autograd), then the cached value."""
        value = self._kernel_cache.get(key)
        if value is None:
            with torch.no_grad():
                value = self._kernel_cache[key] = make()
        return value


class SPADE(_CachedKernels):
    """Spatially adaptive denormalisation: IN(x) * (1 + gamma(seg)) + beta(seg).

    ``norm_nc`` channels of x, ``label_nc`` channels of the conditioning map ``seg``; seg is
    nearest-resized to x's size before the shared 3x3 conv (128 channels, ReLU).
    """

    def __init__(self, norm_nc: int, label_nc: int) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(
            nn.Conv2d(label_nc, SPADE_HIDDEN, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN, norm_nc, kernel_size=3, padding=1)

    def gamma_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One convolution for gamma and beta: weight (2C,128,3,3), bias (2C,) (cached)."""
        return self.cached("gamma_beta", lambda: (
            torch.cat([self.mlp_gamma.weight, self.mlp_beta.weight], dim=0),
            torch.cat([self.mlp_gamma.bias, self.mlp_beta.bias], dim=0)))

    def modulate(self, normalized: torch.Tensor, actv: torch.Tensor,
                 rstd: torch.Tensor | None = None) -> torch.Tensor:
        """normalized (B,C,H,W) and shared activation actv (B,128,H,W) -> modulated (B,C,H,W).

        With ``rstd`` (from :func:`normalize` on reduced precision) ``normalized`` is the centred
        map and the result is centred * rstd * (1 + gamma) + beta, in two fused passes.
        """
        weight, bias = self.gamma_beta()
        gamma, beta = conv3x3(actv, weight, bias).chunk(2, dim=1)
        if rstd is not None:
            return torch.addcmul(beta, normalized, torch.addcmul(rstd, gamma, rstd))
        # Statistics come in float32; the modulated map follows the convolution dtype.
        return normalized.to(gamma.dtype) * (1 + gamma) + beta

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        actv = shared_activations([self], seg, tuple(x.shape[-2:]))[0]
        normalized, rstd = normalize(x)
        return self.modulate(normalized, actv, rstd)


def shared_activations(norms: list[SPADE], seg: torch.Tensor, size: tuple[int, int],
                       cache: _CachedKernels | None = None) -> list[torch.Tensor]:
    """ReLU(mlp_shared(nearest_resize(seg, size))) for several SPADEs with one convolution.

    seg (B,L,h,w) -> list of (B,128,H,W). Integer upsampling factors use
    :func:`conv3x3_upsampled`; any other size resizes first, as the original does. ``cache``
    (the owning block) keeps the concatenated weights and sub-pixel kernels between calls.
    """
    h, w = seg.shape[-2:]
    fy, ry = divmod(size[0], h)
    fx, rx = divmod(size[1], w)
    factor = fy if (ry == 0 and rx == 0 and fy == fx and fy >= 1) else 0

    def make() -> tuple[torch.Tensor, torch.Tensor, list | None]:
        convs = [n.mlp_shared[0] for n in norms]
        weight = torch.cat([c.weight for c in convs], dim=0)
        bias = torch.cat([c.bias for c in convs], dim=0)
        return weight, bias, (phase_kernels(weight, factor) if factor > 1 else None)

    weight, bias, kernels = make() if cache is None else cache.cached(("shared", factor), make)
    if factor:
        actv = conv3x3_upsampled(seg, weight, bias, factor, kernels)
    else:
        actv = conv3x3(F.interpolate(seg, size=size, mode="nearest"), weight, bias)
    return list(F.relu(actv).split(SPADE_HIDDEN, dim=1))


class SPADEResnetBlock(_CachedKernels):
    """Residual block: shortcut + conv_1(lrelu(SPADE_1(conv_0(lrelu(SPADE_0(x, seg))), seg))).

    The shortcut is conv_s(SPADE_s(x)) (1x1, no bias) when fin != fout, else x. Slope 0.2.
    """

    def __init__(self, fin: int, fout: int, label_nc: int) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmiddle, label_nc)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """x (B,fin,H,W), seg (B,label_nc,h,w) with H,W multiples of h,w -> (B,fout,H,W)."""
        norms = [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])
        actvs = shared_activations(norms, seg, tuple(x.shape[-2:]), cache=self)
        x_norm, rstd = normalize(x)
        shortcut = self.conv_s(self.norm_s.modulate(x_norm, actvs[2], rstd)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0.modulate(x_norm, actvs[0], rstd), 0.2))
        dx_norm, dx_rstd = normalize(dx)
        dx = self.conv_1(F.leaky_relu(self.norm_1.modulate(dx_norm, actvs[1], dx_rstd), 0.2))
        return shortcut + dx


class SPADEDecoder(nn.Module):
    """fc -> 6 SPADE blocks -> (x2, block) x2 -> conv (+ PixelShuffle x2) -> sigmoid.

    Keys match ``spade_generator.pth``. With ``upscale > 1`` the last conv predicts 12 channels
    that a PixelShuffle(2) turns into a 2x larger RGB image (the original always shuffles by 2).
    Full size: (B,256,64,64) -> (B,3,512,512).
    """

    def __init__(self, upscale: int = 2, max_features: int = 512, block_expansion: int = 64,
                 out_channels: int = 64, num_down_blocks: int = 2) -> None:
        super().__init__()
        if num_down_blocks < 1:
            raise ValueError("num_down_blocks must be at least 1")
        c = min(max_features, block_expansion * (2 ** num_down_blocks))
        self.input_channels = c
        self.upscale = upscale
        #: Run in channels-last memory (set by render.prepare_networks).
        self.channels_last = False
        self.fc = nn.Conv2d(c, 2 * c, kernel_size=3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * c, 2 * c, c))
        self.up_0 = SPADEResnetBlock(2 * c, c, c)
        self.up_1 = SPADEResnetBlock(c, out_channels, c)
        if upscale is not None and upscale > 1:
            self.conv_img: nn.Module = nn.Sequential(
                nn.Conv2d(out_channels, 3 * 4, kernel_size=3, padding=1), nn.PixelShuffle(2))
        else:
            self.conv_img = nn.Conv2d(out_channels, 3, kernel_size=3, padding=1)

    def middle_blocks(self) -> list[SPADEResnetBlock]:
        """G_middle_0 .. G_middle_5 in order."""
        return [getattr(self, f"G_middle_{i}") for i in range(6)]

    @torch.no_grad()
    def fuse_spectral_norm(self) -> SPADEDecoder:
        """Cache every spectrally normalised weight (same numbers, faster forward); returns self."""
        for m in self.modules():
            if isinstance(m, SpectralNormConv2d):
                m.fuse()
        return self

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature (B,C,H,W) -> image (B,3,4H,4W) (8H,8W with upscale) float32 in [0,1]."""
        seg = feature = to_compute(feature, self.fc.weight.dtype, self.channels_last)
        x = conv3x3(feature, self.fc.weight, self.fc.bias)
        for block in self.middle_blocks():
            x = block(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        x = F.leaky_relu(x, 0.2)
        if isinstance(self.conv_img, nn.Sequential):
            x = self.conv_img[1](conv3x3(x, self.conv_img[0].weight, self.conv_img[0].bias))
        else:
            x = conv3x3(x, self.conv_img.weight, self.conv_img.bias)
        with torch.autocast(x.device.type, enabled=False):
            return torch.sigmoid(x.float())

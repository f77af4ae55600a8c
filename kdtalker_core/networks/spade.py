"""LivePortrait SPADE decoder G: warped 2D feature (B,256,64,64) -> RGB image (B,3,512,512) in [0,1].

The residual blocks' convolutions are spectrally normalised. :class:`SpectralNormConv2d` keeps the
checkpoint layout (``weight_orig`` parameter, ``weight_u`` / ``weight_v`` buffers) and, as in eval
mode of the original training code, divides by sigma = u . (W v) with the STORED u, v (no power
iteration). :meth:`SPADEDecoder.fuse_spectral_norm` caches the divided weights for inference.

Speed-ups that keep the numbers (up to float rounding):
- gamma and beta of a SPADE are one convolution (weights concatenated), whose bias carries the
  "+1" of (1 + gamma), so the modulation is one ``addcmul`` pass: IN(x) * (1 + gamma) + beta;
- the shared SPADE convolutions of one residual block run as one convolution;
- when a block runs at s times the resolution of the conditioning map, its 3x3 convolution over the
  nearest-upsampled map is computed on the low-resolution map with sub-pixel kernels (taps summed
  per low-resolution pixel; phases with equally sized kernels stacked into one convolution), which
  needs 2.25x (s=2) to 4x (s=4) fewer multiply-adds; strided copies interleave the phases;
- the x2 nearest upsampling in front of the up blocks is never built: instance-norm statistics of
  an upsampled map equal those of the map, so the block normalises at low resolution and the
  modulation reads the normalised map through a broadcast view;
- instance normalisation is ``native_batch_norm`` over one sample (float32 statistics whatever
  the dtype); activations are applied in place on temporaries.

Optional, for float32 on CPU: inside :func:`winograd_convolutions` every 3x3 convolution runs
through NNPACK's Winograd kernels (:mod:`kdtalker_core.backends.nnpack`; about 2.5-3x faster than
oneDNN's direct convolution on AVX2 CPUs, relative error about 1e-5 per convolution). Outside it
the direct convolution runs; :func:`kdtalker_core.render.render_frames` turns Winograd on for
float32 on CPUs where a measured probe says it wins.

Reduced precision: with bf16/fp16 weights (:func:`kdtalker_core.render.prepare_networks`) the
convolutions and modulations run in that dtype, in channels-last memory when ``channels_last`` is
set; instance-norm statistics and the final sigmoid stay float32. bf16 channels-last 3x3
convolutions with many output channels run through our Winograd F(2x4, 3x3)
(:mod:`kdtalker_core.backends.winograd`, transformed weights cached per module) where its shape
rule says it wins: frames ~46.7 dB PSNR against float32 (``KDTALKER_BF16_WINOGRAD_TILE=2x2``:
F(2x2, 3x3), ~50.3 dB, the render 8-13% slower; ``KDTALKER_BF16_WINOGRAD=0``: none, ~54 dB).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import nnpack, winograd
from .blocks import to_compute
from .kernel_cache import KernelCache
from .layout import is_channels_last, memory_format

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


def _channels_innermost(x: torch.Tensor) -> bool:
    """A channels-last map or a channel slice of one (the SPADE branches read channel slices of
    one shared activation map): Winograd's band transform copies rows, so only unit channel
    stride matters. 128->1024 at 64x64 bf16 from such a slice, 1 thread, Zen 5: oneDNN 20.5 ms
    (it copies the slice first), Winograd 13.8 ms."""
    return x.dim() == 4 and (is_channels_last(x) or (x.stride(1) == 1 and x.shape[1] > 1))


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            cache: KernelCache | None = None, key: object = "winograd") -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1.

    float32 on the CPU inside :func:`winograd_convolutions`: NNPACK. bf16 channels-last on the
    CPU where :func:`kdtalker_core.backends.winograd.preferred` says so: our Winograd (F(2x4) or
    F(2x2), :func:`kdtalker_core.backends.winograd.form_for`), with the transformed weight kept in
    ``cache`` under ``(key, form name)`` (only when a cache is given).
    Everything else: ``F.conv2d``.
    """
    return conv3x3_split(x, weight, bias, None, cache, key)[0]


def conv3x3_split(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, split: int | list[int] | None,
                  cache: KernelCache | None = None, key: object = "winograd") -> list[torch.Tensor]:
    """:func:`conv3x3` with its output channels in parts of ``split`` channels, or of the listed
    sizes (None: one part).

    Winograd writes each part as its own dense map (:func:`kdtalker_core.backends.winograd.conv3x3_parts`:
    no block of 64 MiB or more); the other paths return channel views of one output.
    """
    if torch.compiler.is_compiling() or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        out = F.conv2d(x, weight, bias, padding=1)
    elif _WINOGRAD.get() and x.dtype == torch.float32 and weight.dtype == torch.float32:
        out = nnpack.conv3x3(x, weight, bias)
    elif cache is not None and _channels_innermost(x) and winograd.preferred(x, weight):
        form = winograd.form_for(x)
        u = cache.cached((key, form.name), lambda: form.transform_weight(weight))
        return winograd.conv3x3_parts(x, u, bias, split)
    else:
        out = F.conv2d(x, weight, bias, padding=1)
    return [out] if split is None else list(out.split(split, dim=1))


class SpectralNormConv2d(KernelCache):
    """Conv2d whose weight is ``weight_orig / sigma``, sigma = u . (weight_orig.reshape(out,-1) @ v).

    State-dict keys, in order: ``bias`` (if any), ``weight_orig``, ``weight_u`` (out,),
    ``weight_v`` (in*k*k,). u and v are fixed (inference only). :meth:`fuse` divides
    ``weight_orig`` by sigma IN PLACE (one copy of the weight in memory, not two); from then on the
    module uses it as the effective weight. Its state dict then holds W/sigma with the same u, v,
    an equivalent spectral-norm parametrisation (u . (W/sigma) v = 1) of the same effective weight.
    Loading a state dict undoes the fold (the loaded weight is the raw one).
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
        self._folded = False  # weight_orig holds weight / sigma (see fuse)
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
        module._folded = False  # the incoming weight_orig is a raw (undivided) weight
        module._kernel_cache = {}

    @property
    def fused_weight(self) -> torch.Tensor | None:
        """The divided weight after :meth:`fuse` (it is ``weight_orig`` itself), else None."""
        return self.weight_orig if self._folded else None

    def normalized_weight(self) -> torch.Tensor:
        """weight_orig / sigma computed in float32, (out,in,k,k) float32."""
        w = self.weight_orig.float()
        if self._folded:
            return w
        sigma = torch.dot(self.weight_u.float(), torch.mv(w.reshape(w.shape[0], -1), self.weight_v.float()))
        return w / sigma

    @torch.no_grad()
    def fuse(self) -> None:
        """Divide ``weight_orig`` by sigma once, in place (in float32, stored in the parameter dtype),
        so forward skips the division and no second copy of the weight is kept. Idempotent."""
        if not self._folded:
            self.weight_orig.data = self.normalized_weight().to(self.weight_orig.dtype)
            self._folded = True
        self._kernel_cache = {}

    def weight(self) -> torch.Tensor:
        """The effective convolution weight (``weight_orig`` itself after :meth:`fuse`)."""
        return self.weight_orig if self._folded else self.normalized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight()
        if weight.shape[-1] == 3 and self.padding == 1:
            return conv3x3(x, weight, self.bias, cache=self if self.fused_weight is not None else None)
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


def _phase_groups(factor: int) -> list[tuple[list[int], int, list[list[int]]]]:
    """Output phases of x``factor`` nearest upsampling + a 3-tap kernel, grouped for one convolution each.

    Phases whose sub-pixel kernels have the same number of low-res taps and whose phase index and
    first low-res offset both step evenly form one group: (phases, first offset of the first phase,
    taps summed into each low-res offset, per phase). One group per axis for factor 2, two for 4.
    """
    by_size: dict[int, list[tuple[int, int, list[list[int]]]]] = {}
    for p in range(factor):
        first, taps = _phase_taps(factor, p)
        by_size.setdefault(len(taps), []).append((p, first, taps))
    groups: list[tuple[list[int], int, list[list[int]]]] = []
    for members in by_size.values():
        run = [members[0]]
        for m in members[1:]:
            if len(run) >= 2 and (m[0] - run[-1][0] != run[1][0] - run[0][0]
                                  or m[1] - run[-1][1] != run[1][1] - run[0][1]):
                groups.append(([r[0] for r in run], run[0][1], [r[2] for r in run]))
                run = []
            run.append(m)
        groups.append(([r[0] for r in run], run[0][1], [r[2] for r in run]))
    return groups


def _step(values: list[int]) -> int:
    """The even step of an arithmetic run (0 for a single value)."""
    return values[1] - values[0] if len(values) > 1 else 0


class PhaseGroup:
    """One convolution of :func:`conv3x3_upsampled`: the stacked sub-pixel kernels of a block of phases.

    ``rows``/``cols``: the output phases (py, px) it computes (arithmetic runs); ``row0``/``col0``:
    low-res offset of the first phase's window; ``drow``/``dcol``: how that offset steps from one
    phase to the next; ``weight`` (len(rows)*len(cols)*Cout, Cin, ny, nx) with phases in row-major
    order, ``bias`` (same first dim,) or None.
    """

    def __init__(self, rows: list[int], row0: int, drow: int, cols: list[int], col0: int, dcol: int,
                 weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.rows, self.row0, self.drow = rows, row0, drow
        self.cols, self.col0, self.dcol = cols, col0, dcol
        self.weight, self.bias = weight, bias


def phase_kernels(weight: torch.Tensor, factor: int, bias: torch.Tensor | None = None) -> list[PhaseGroup]:
    """The sub-pixel kernels of a 3x3 convolution over an x``factor`` nearest-upsampled map, grouped.

    weight (Cout,Cin,3,3) -> groups of output phases, each one convolution over the low-res map
    whose kernel taps are the sums of the 3x3 taps landing on the same low-resolution pixel (exact,
    and 2.25x (factor 2) to 4x (factor 4) fewer multiply-adds than the upsampled convolution).
    Sums run in float32 whatever the weight dtype; kernels come back in the weight's dtype and
    memory format. ``bias`` (Cout,) is repeated for every phase of a group.
    """
    w32 = weight.float()
    fmt = memory_format(weight)
    groups = _phase_groups(factor)
    out = []
    for rows, row0, row_taps in groups:
        for cols, col0, col_taps in groups:
            kernels = []
            for rt in row_taps:
                wr = torch.stack([w32[:, :, r].sum(dim=2) for r in rt], dim=2)  # (Cout,Cin,ny,3)
                for ct in col_taps:
                    kernels.append(torch.stack([wr[:, :, :, c].sum(dim=3) for c in ct], dim=3))
            k = torch.cat(kernels).to(dtype=weight.dtype, memory_format=fmt)
            b = None if bias is None else bias.repeat(len(kernels))
            drow = _step([_phase_taps(factor, p)[0] for p in rows])
            dcol = _step([_phase_taps(factor, p)[0] for p in cols])
            out.append(PhaseGroup(rows, row0, drow, cols, col0, dcol, k, b))
    return out


def conv3x3_upsampled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      factor: int, kernels: list[PhaseGroup] | None = None, relu: bool = False) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=factor, mode='nearest'), weight, bias, padding=1)`` (then ReLU if ``relu``).

    x (B,Cin,H,W), weight (Cout,Cin,3,3) -> (B,Cout,factor*H,factor*W), computed on the low
    resolution input: each group of output phases (see :func:`phase_kernels`; one group for
    factor 2, four for factor 4) is one valid convolution over a window of the zero-padded input,
    and strided copies (fused with the ReLU) interleave its phases into the output.
    ``kernels``: precomputed :func:`phase_kernels` of ``weight`` and ``bias`` (computed here when
    None). The output keeps x's memory format (channels-last in, channels-last out).
    """
    return conv3x3_upsampled_parts(x, weight, bias, factor, kernels, relu)[0]


def conv3x3_upsampled_parts(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, factor: int,
                            kernels: list[PhaseGroup] | None = None, relu: bool = False,
                            split: int | None = None, cache: KernelCache | None = None) -> list[torch.Tensor]:
    """:func:`conv3x3_upsampled` with its output channels cut into parts of ``split`` channels.

    Each part (B,split,factor*H,factor*W) is its own dense tensor in x's memory format (a channel
    slice of one channels-last map would be strided, and a convolution reading it copies it
    first). ``split`` None: one part with every channel. Factor 1 (a plain convolution) returns
    channel views of one map; ``cache`` then keeps its Winograd weights (see :func:`conv3x3`).
    """
    if factor == 1:
        out = conv3x3(x, weight, bias, cache=cache, key="winograd_shared")
        out = F.relu(out, inplace=True) if relu else out
        return [out] if split is None else list(out.split(split, 1))
    if kernels is None:
        kernels = phase_kernels(weight, factor, bias)
    b, _, h, w = x.shape
    cout = weight.shape[0]
    split = cout if split is None else split
    xp = F.pad(x, (1, 1, 1, 1))
    fmt = memory_format(x)
    parts: list[torch.Tensor] = []
    for g in kernels:
        ny, nx = g.weight.shape[2], g.weight.shape[3]
        gr, gc = len(g.rows), len(g.cols)
        # Low-res window (padded coordinates) covering every phase of the group.
        r0, c0 = 1 + g.row0, 1 + g.col0
        window = xp[:, :, r0: r0 + h + g.drow * (gr - 1) + ny - 1, c0: c0 + w + g.dcol * (gc - 1) + nx - 1]
        y = F.conv2d(window, g.weight, g.bias)  # (B, gr*gc*Cout, h + drow*(gr-1), w + dcol*(gc-1))
        if not parts:  # in the convolution's dtype (autocast may change it)
            parts = [torch.empty((b, min(split, cout - c), h * factor, w * factor), dtype=y.dtype,
                                 device=x.device, memory_format=fmt) for c in range(0, cout, split)]
        if torch.compiler.is_compiling():  # plain slices (Dynamo rejects strided out= tensors)
            _interleave_sliced(y, parts, g, factor, cout, split, relu)
            continue
        sy = y.stride()
        for k, out in enumerate(parts):
            n = out.shape[1]
            so = out.stride()
            # y[b, (ky*gc + kx)*Cout + k*split + c, i + drow*ky, j + dcol*kx]
            #   -> part k [b, c, f*i + rows[ky], f*j + cols[kx]]
            src = y.as_strided((b, n, h, gr, w, gc),
                               (sy[0], sy[1], sy[2], g.drow * sy[2] + gc * cout * sy[1],
                                sy[3], g.dcol * sy[3] + cout * sy[1]),
                               k * split * sy[1])  # y and out are fresh: storage offset 0
            dst = out.as_strided((b, n, h, gr, w, gc),
                                 (so[0], so[1], factor * so[2], _step(g.rows) * so[2],
                                  factor * so[3], _step(g.cols) * so[3]),
                                 g.rows[0] * so[2] + g.cols[0] * so[3])
            for kx in range(gc):  # one copy per column phase: long inner loops (measured 2-3x faster)
                if relu:
                    torch.clamp(src[..., kx], min=0, out=dst[..., kx])
                else:
                    dst[..., kx].copy_(src[..., kx])
    return parts


def _interleave_sliced(y: torch.Tensor, parts: list[torch.Tensor], g: PhaseGroup, factor: int, cout: int,
                       split: int, relu: bool) -> None:
    """The interleave of :func:`conv3x3_upsampled_parts` phase by phase with basic slicing (for torch.compile)."""
    h, w = parts[0].shape[-2] // factor, parts[0].shape[-1] // factor
    for ky, py in enumerate(g.rows):
        for kx, px in enumerate(g.cols):
            base = (ky * len(g.cols) + kx) * cout
            r, c = g.drow * ky, g.dcol * kx
            for k, out in enumerate(parts):
                src = y[:, base + k * split: base + k * split + out.shape[1], r: r + h, c: c + w]
                out[:, :, py::factor, px::factor] = src.clamp(min=0) if relu else src


def _phase_view(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B,C,f*h,f*w) -> the view (B,C,h,f,w,f), any strides."""
    h, w = x.shape[-2] // factor, x.shape[-1] // factor
    return x.unflatten(3, (w, factor)).unflatten(2, (h, factor))


#: Instance-norm epsilon (added to the biased variance).
IN_EPS = 1e-5


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel normalisation (x - mean) / sqrt(var + 1e-5), biased variance.

    x (B,C,H,W) -> same shape, dtype and memory format. Statistics accumulate in float32 for
    every dtype (``native_batch_norm`` over one sample is instance normalisation; for bf16 it is
    several times faster than ``var_mean`` on channels-last maps). Contiguous maps go through
    one (1,B*C,H,W) view; channels-last batches sample by sample.
    """
    with torch.autocast(x.device.type, enabled=False):
        if x.shape[0] == 1 or x.is_contiguous():
            flat = x if x.shape[0] == 1 else x.reshape(1, -1, *x.shape[2:])
            out = torch.ops.aten.native_batch_norm(flat, None, None, None, None, True, 0.0, IN_EPS)[0]
            return out.view(x.shape) if out.shape != x.shape else out
        return torch.cat([normalize(x[i:i + 1]) for i in range(x.shape[0])])


def _nearest_to(normalized: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """normalized (B,C,h,w) nearest-upsampled to like's (H,W), materialised (the torch.compile form
    of the broadcast phase views); normalized itself when the sizes already match."""
    if normalized.shape == like.shape:
        return normalized
    return F.interpolate(normalized, size=like.shape[-2:], mode="nearest")


def _modulated(normalized: torch.Tensor, gamma1: torch.Tensor, beta: torch.Tensor,
               inplace: bool = False) -> torch.Tensor:
    """up(normalized) * gamma1 + beta, one pass.

    normalized (B,C,h,w); gamma1 and beta (B,C,H,W) with H,W = s*h,s*w (s >= 1: the normalised
    map is nearest-upsampled by broadcasting inside the pass, never materialised). ``inplace``:
    the result may overwrite ``normalized`` (same size only). Result in gamma1's dtype and
    normalized's memory format.
    """
    if normalized.dtype != gamma1.dtype:  # autocast: convolutions run in the reduced dtype
        normalized, inplace = normalized.to(gamma1.dtype), normalized.shape == gamma1.shape
    fmt = memory_format(normalized)
    if torch.compiler.is_compiling():  # functional form (Dynamo rejects strided out= tensors)
        return torch.addcmul(beta, _nearest_to(normalized, gamma1), gamma1)
    # Where the result goes: over ``normalized`` if allowed, else over beta when beta is a dense
    # map in that layout (NCHW: gamma and beta are contiguous halves of the convolution's output),
    # else a new map. Reusing memory skips the page faults of a fresh large map.
    dense_beta = beta.is_contiguous(memory_format=fmt)
    if normalized.shape == gamma1.shape:
        out = normalized if inplace else (beta if dense_beta else None)
        return torch.addcmul(beta, normalized, gamma1, out=out)
    h, w = normalized.shape[-2:]
    s = gamma1.shape[-1] // w
    out = beta if dense_beta else torch.empty(gamma1.shape, dtype=gamma1.dtype, device=gamma1.device,
                                               memory_format=fmt)
    torch.addcmul(_phase_view(beta, s), normalized[:, :, :, None, :, None], _phase_view(gamma1, s),
                  out=_phase_view(out, s))
    return out


def _scaled_in_place(normalized: torch.Tensor, gamma1: torch.Tensor) -> torch.Tensor:
    """gamma1 *= up(normalized), returning gamma1 (a fresh tensor under torch.compile).

    normalized (B,C,h,w), gamma1 (B,C,H,W) with H,W = s*h,s*w; the upsampling is a broadcast.
    Writing over gamma1 (no longer needed afterwards) keeps the float32 decoder's peak at the
    512 px up block below what a new (1,256,256,256) map would cost (64 MB).
    """
    if normalized.dtype != gamma1.dtype:  # autocast: convolutions run in the reduced dtype
        normalized = normalized.to(gamma1.dtype)
    if torch.compiler.is_compiling():
        return _nearest_to(normalized, gamma1) * gamma1
    if normalized.shape == gamma1.shape:
        return gamma1.mul_(normalized)
    _phase_view(gamma1, gamma1.shape[-1] // normalized.shape[-1]).mul_(normalized[:, :, :, None, :, None])
    return gamma1


class SPADE(KernelCache):
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
        """One convolution for (1 + gamma) and beta: weight (2C,128,3,3), bias (2C,) (cached).

        The "+1" of the modulation is folded into the gamma half of the bias (added in float32).
        """
        def make() -> tuple[torch.Tensor, torch.Tensor]:
            bias = torch.cat([self.mlp_gamma.bias.float() + 1, self.mlp_beta.bias.float()])
            weight = _concat_shared([self.mlp_gamma.weight, self.mlp_beta.weight])
            return weight, bias.to(self.mlp_gamma.bias.dtype)
        return self.cached("gamma_beta", make)

    def modulate(self, normalized: torch.Tensor, actv: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """IN(x) (B,C,h,w) and shared activation actv (B,128,H,W) -> up(IN(x)) * (1 + gamma) + beta (B,C,H,W).

        One fused pass after the gamma/beta convolution. When H,W = s*h,s*w the normalised map
        is nearest-upsampled by s inside that pass (broadcast, never materialised).
        ``inplace``: write the result over ``normalized`` (same size only; when the caller no
        longer needs it; saves an allocation).
        """
        weight, bias = self.gamma_beta()
        gamma1, beta = conv3x3_split(actv, weight, bias, weight.shape[0] // 2, cache=self)
        return _modulated(normalized, gamma1, beta, inplace)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        actv = shared_activations([self], seg, tuple(x.shape[-2:]))[0]
        return self.modulate(normalize(x), actv, inplace=True)


def _concat_shared(params: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate weights along dim 0 and make each parameter a view of its slice of the result.

    params: tensors (C_i, ...) of one dtype and device -> (sum C_i, ...), in the first one's
    memory format. The parameters keep their values, shapes and state-dict keys; only their
    storage is shared, so the fused convolution's weight costs no extra memory. A later ``.to()``
    or state-dict load gives the parameters storage of their own again (the caches are dropped).
    """
    fmt = memory_format(params[0])
    weight = torch.cat([p.detach() for p in params], dim=0).contiguous(memory_format=fmt)
    start = 0
    for p in params:
        p.data = weight[start:start + p.shape[0]]
        start += p.shape[0]
    return weight


def shared_activations(norms: list[SPADE], seg: torch.Tensor, size: tuple[int, int],
                       cache: KernelCache | None = None) -> list[torch.Tensor]:
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
        weights = [c.weight for c in convs]
        # Cached: the parameters become views of the concatenation (one copy in memory).
        weight = _concat_shared(weights) if cache is not None else torch.cat(weights, dim=0)
        bias = torch.cat([c.bias for c in convs], dim=0)
        return weight, bias, (phase_kernels(weight, factor, bias) if factor > 1 else None)

    weight, bias, kernels = make() if cache is None else cache.cached(("shared", factor), make)
    if factor:
        return conv3x3_upsampled_parts(seg, weight, bias, factor, kernels, relu=True, split=SPADE_HIDDEN,
                                       cache=cache)
    actv = F.relu(conv3x3(F.interpolate(seg, size=size, mode="nearest"), weight, bias), inplace=True)
    return list(actv.split(SPADE_HIDDEN, dim=1))


class SPADEResnetBlock(KernelCache):
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

    def forward(self, x: torch.Tensor, seg: torch.Tensor, upsample: int = 1) -> torch.Tensor:
        """x (B,fin,h,w), seg (B,label_nc,h',w') -> (B,fout,H,W), H,W = upsample*(h,w) multiples of h',w'.

        ``upsample`` > 1: the block runs on ``interpolate(x, scale_factor=upsample, mode='nearest')``
        without building it: instance-norm statistics of a nearest-upsampled map are those of x, so x
        is normalised at low resolution and upsampled inside the modulation.
        """
        size = (x.shape[-2] * upsample, x.shape[-1] * upsample)
        norms = [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])
        actvs = shared_activations(norms, seg, size, cache=self)
        x_norm = normalize(x)
        if self.learned_shortcut:
            shortcut = self.learned_shortcut_from(x_norm, actvs[2])
        else:
            shortcut = x if upsample == 1 else F.interpolate(x, scale_factor=float(upsample), mode="nearest")
        dx = self.conv_0(F.leaky_relu(self.norm_0.modulate(x_norm, actvs[0], inplace=True), 0.2, inplace=True))
        dx = self.conv_1(F.leaky_relu(self.norm_1.modulate(normalize(dx), actvs[1], inplace=True), 0.2, inplace=True))
        return dx.add_(shortcut) if dx.dtype == shortcut.dtype else shortcut + dx

    def learned_shortcut_from(self, x_norm: torch.Tensor, actv: torch.Tensor) -> torch.Tensor:
        """conv_s(SPADE_s(x)) from IN(x) (B,fin,h,w) and SPADE_s's shared activation (B,128,H,W) -> (B,fout,H,W).

        conv_s is linear and 1x1, so its product with beta's convolution is one 3x3 convolution
        of the activation with fout outputs (W_s . W_beta, bias W_s . b_beta): conv_s(n * gamma1 +
        beta) = conv_s(n * gamma1) + conv3x3(actv, W_s . W_beta). gamma1 and the projected beta
        come from one convolution with fin + fout outputs instead of 2 fin (up_0: 768 instead of
        1024, up_1: 320 instead of 512), the same numbers up to rounding.
        """
        weight, bias = self.cached("shortcut", self._shortcut_kernels)
        fin = x_norm.shape[1]
        gamma1, beta_s = conv3x3_split(actv, weight, bias, [fin, weight.shape[0] - fin], cache=self,
                                       key="winograd_shortcut")
        out = self.conv_s(_scaled_in_place(x_norm, gamma1))
        return out + beta_s if torch.compiler.is_compiling() else out.add_(beta_s)

    def _shortcut_kernels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (fin+fout,128,3,3) and bias of [1 + gamma_s; W_s . beta_s], made in float32,
        returned in mlp_gamma's dtype and memory format."""
        norm = self.norm_s
        ws = self.conv_s.weight().float()[:, :, 0, 0]  # (fout, fin)
        beta_w = torch.einsum("oc,cikl->oikl", ws, norm.mlp_beta.weight.float())
        beta_b = ws @ norm.mlp_beta.bias.float()
        gamma = norm.mlp_gamma
        weight = torch.cat([gamma.weight.float(), beta_w]).to(dtype=gamma.weight.dtype,
                                                                memory_format=memory_format(gamma.weight))
        bias = torch.cat([gamma.bias.float() + 1, beta_b]).to(gamma.bias.dtype)
        return weight, bias


class SPADEDecoder(KernelCache):
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
        x = conv3x3(feature, self.fc.weight, self.fc.bias, cache=self, key="winograd_fc")
        for block in self.middle_blocks():
            x = block(x, seg)
        x = self.up_0(x, seg, upsample=2)  # the block on the x2 nearest-upsampled map
        x = self.up_1(x, seg, upsample=2)
        x = F.leaky_relu(x, 0.2, inplace=True)
        if isinstance(self.conv_img, nn.Sequential):
            x = self.conv_img[1](conv3x3(x, self.conv_img[0].weight, self.conv_img[0].bias))
        else:
            x = conv3x3(x, self.conv_img.weight, self.conv_img.bias)
        with torch.autocast(x.device.type, enabled=False):
            return torch.sigmoid(x.float())

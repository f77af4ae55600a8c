"""The KDTalker motion denoiser written plainly, one module per idea, in the official weight layout.

This is the readable reference. The attribute names are forced by the KDTalker.pth state dict
(``time_mlp.1``, ``layers.{i}.0.block1.norm.gamma``, ``layers.{i}.2.fn.fn.to_qkv`` ...), so a strict
load of the official weights works. :class:`kdtalker_core.networks.denoiser.MotionDenoiser` owns these
modules and runs a fused fast path over the same parameters; tests check that both give the same
numbers.

One layer of the network (tokens x (B, F, dim), conditioning c (B, F, 256 + 512)):

* ``x = ResBlock(x, c)`` twice: ``(scale, shift) = Linear(SiLU(c))``;
  ``h = SiLU(LayerNorm(Linear1(x)) * (1 + scale) + shift)``; ``x = x + SiLU(Linear2(h))``.
* ``x = x + Attention(LayerNorm(x))``: multi-head self-attention over the F tokens (frames) with a
  T5 relative position bias per head and rotary position embedding on the first channels of each
  query and key head.

The conditioning c is [time embedding, audio context]: the time embedding is a sinusoidal code of
the diffusion step passed through a 2-layer MLP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..attention import attention

#: Epsilon added to the (biased) variance in every layer norm of the denoiser.
LN_EPS = 1e-5


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal timestep features (B, 2 * (dim // 2)) float32, laid out [sin | cos] (not interleaved).

    Frequency i of ``half = dim // 2`` is ``exp(-ln(10000) * i / (half - 1))``; the angle is
    ``timestep * frequency`` (timesteps are diffusion step indices, e.g. 0..999).
    """
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=timesteps.device, dtype=torch.float32) * -step)
    angles = timesteps[:, None].float() * freqs[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def relative_position_bucket(
    num_frames: int,
    num_buckets: int = 32,
    max_distance: int = 128,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """T5 relative-position buckets (F, F) int64; entry [i, j] buckets ``i - j`` (query i, key j).

    Half of the buckets hold non-negative differences (0 .. num_buckets/2 - 1), the other half
    negative ones. Distances below a quarter of ``num_buckets`` get their own bucket; larger ones are
    log-spaced up to ``max_distance`` and clipped to the last bucket of their half.
    """
    pos = torch.arange(num_frames, dtype=torch.long, device=device)
    diff = pos[:, None] - pos[None, :]  # i - j
    half = num_buckets // 2
    bucket = (diff < 0).long() * half
    dist = diff.abs()
    exact = half // 2
    # log of 0 is never selected below; clamp only to keep the discarded branch finite
    far = exact + (
        torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    far = far.clamp(max=half - 1)
    return bucket + torch.where(dist < exact, dist, far)


def rotary_frequencies(rotary_dim: int) -> torch.Tensor:
    """Rotary angular frequencies (rotary_dim // 2,) float32: ``10000 ** (-2i / rotary_dim)``.

    Only ``2 * (rotary_dim // 2)`` channels of each head are rotated; an odd ``rotary_dim`` therefore
    rotates one channel fewer than it names. ``rotary_dim`` 0 or 1 gives no frequencies (no rotation).
    """
    n = rotary_dim // 2
    exponents = torch.arange(0, rotary_dim, 2, device="cpu")[:n].float() / rotary_dim
    return torch.empty(n).copy_(1.0 / (10000.0**exponents))


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * len(freqs)`` channels of x (..., F, Dh) by token position; the rest pass.

    Adjacent channels form pairs: pair i of token p turns by the angle ``p * freqs[i]``, i.e.
    ``(a, b) -> (a cos - b sin, b cos + a sin)``.
    """
    rot = 2 * freqs.numel()
    if rot == 0:
        return x
    positions = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
    angles = repeat(positions[:, None] * freqs.float()[None, :], "f i -> f (i pair)", pair=2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rotated, rest = x[..., :rot], x[..., rot:]
    a, b = rearrange(rotated, "... (i pair) -> pair ... i", pair=2)
    turned_a_quarter = rearrange(torch.stack((-b, a)), "pair ... i -> ... (i pair)")
    return torch.cat((rotated * cos + turned_a_quarter * sin, rest), dim=-1)


class LayerNorm(nn.Module):
    """Layer norm over the last axis with ``gamma`` (ones) and ``beta`` (zeros), both (1, 1, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim): normalise (biased variance, eps 1e-5), then ``* gamma + beta``."""
        return F.layer_norm(x, x.shape[-1:], eps=LN_EPS) * self.gamma + self.beta


class ProjectNorm(nn.Module):
    """``proj`` Linear(dim_in, dim_out) and ``norm`` layer norm (the norm is applied only in ``block1``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.norm = LayerNorm(dim_out)


class ConditionedResBlock(nn.Module):
    """Residual block whose first projection is modulated by the conditioning (FiLM).

    ``mlp`` = [SiLU, Linear(cond_dim, 2 * dim)] gives (scale, shift); ``block1`` projects and is
    normalised + modulated; ``block2`` projects only (its ``norm`` exists in the checkpoint, unused).
    """

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        self.block1 = ProjectNorm(dim, dim)
        self.block2 = ProjectNorm(dim, dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, F, dim), cond (B, F, cond_dim) -> (B, F, dim)."""
        scale, shift = self.mlp(cond).chunk(2, dim=-1)
        h = self.block1.norm(self.block1.proj(x))
        h = F.silu(h * (1 + scale) + shift)
        h = F.silu(self.block2.proj(h))
        return x + h


class RotaryFrequencies(nn.Module):
    """Holds the rotary ``freqs`` (rotary_dim // 2,) as a frozen parameter.

    The official model shares ONE rotary module between all attention layers, so its state dict
    lists the same tensor once per layer. Here every layer owns its own copy: a strict load fills
    each copy from its own key (the official file holds identical values in all of them), and each
    layer rotates with its own copy.
    """

    def __init__(self, rotary_dim: int) -> None:
        super().__init__()
        self.freqs = nn.Parameter(rotary_frequencies(rotary_dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotary position embedding of x (..., F, Dh); see :func:`apply_rotary`."""
        return apply_rotary(x, self.freqs)


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention over frames: ``to_qkv`` (no bias), ``proj``, rotary on q and k."""

    def __init__(self, dim: int, heads: int, rotary_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.to_qkv = nn.Linear(dim, 3 * heads * self.head_dim, bias=False)
        self.proj = nn.Linear(heads * self.head_dim, dim)
        self.rotary_emb = RotaryFrequencies(rotary_dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """x (B, F, dim), additive ``bias`` (heads, F, F) -> (B, F, dim).

        Queries are scaled by ``head_dim ** -0.5`` before the rotation (the official order).
        """
        q, k, v = rearrange(self.to_qkv(x), "b f (qkv h d) -> qkv b h f d", qkv=3, h=self.heads)
        q = self.rotary_emb(q * self.head_dim**-0.5)
        k = self.rotary_emb(k)
        out = attention(q, k, v, bias, backend=backend, scale=1.0)
        return self.proj(rearrange(out, "b h f d -> b f (h d)"))


class PreNormAttention(nn.Module):
    """``fn`` = the attention, ``norm`` = its layer norm applied first (registered in this order)."""

    def __init__(self, dim: int, heads: int, rotary_dim: int) -> None:
        super().__init__()
        self.fn = TemporalSelfAttention(dim, heads, rotary_dim)
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Attention(LayerNorm(x)) for x (B, F, dim)."""
        return self.fn(self.norm(x), bias, backend)


class ResidualAttention(nn.Module):
    """``x + PreNormAttention(x)``; also gives the ``layers.{i}.2.fn.*`` key prefix."""

    def __init__(self, dim: int, heads: int, rotary_dim: int) -> None:
        super().__init__()
        self.fn = PreNormAttention(dim, heads, rotary_dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """x (B, F, dim), bias (heads, F, F) -> (B, F, dim)."""
        return x + self.fn(x, bias, backend)


class UnusedPositionalEncoding(nn.Module):
    """The ``freq_bands`` buffer (10,) = 2 ** linspace(1, 9, 10): in the checkpoint, never used."""

    def __init__(self, num_freqs: int = 10) -> None:
        super().__init__()
        values = 2.0 ** torch.linspace(1, num_freqs - 1, num_freqs, device="cpu")
        self.register_buffer("freq_bands", torch.empty(num_freqs).copy_(values))


class SinusoidalEmbedding(nn.Module):
    """Parameter-free ``time_mlp.0``: (B,) timesteps -> (B, dim) float32 [sin | cos] features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """See :func:`timestep_embedding`."""
        return timestep_embedding(timesteps, self.dim)


class RelativePositionTable(nn.Module):
    """``relative_attention_bias`` Embedding(num_buckets, heads): one bias per bucket and head."""

    def __init__(self, heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        # N(0, 1) like nn.Embedding's own init; passing the tensor keeps meta-device builds fast
        self.relative_attention_bias = nn.Embedding(num_buckets, heads, _weight=torch.randn(num_buckets, heads))

    def forward(self, num_frames: int) -> torch.Tensor:
        """Additive attention bias (heads, F, F): entry [h, i, j] is head h's bias for query i, key j."""
        weight = self.relative_attention_bias.weight
        buckets = relative_position_bucket(num_frames, self.num_buckets, self.max_distance, device=weight.device)
        return rearrange(self.relative_attention_bias(buckets), "i j h -> h i j")


class DenoiserBody(nn.Module):
    """All denoiser parameters in the official order (``point_model.model.*`` of KDTalker.pth)."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        heads: int,
        rotary_dim: int,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        timestep_embed_dim: int,
        num_buckets: int,
        max_distance: int,
    ) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(
            SinusoidalEmbedding(dim), nn.Linear(dim, timestep_embed_dim), nn.SiLU(),
            nn.Linear(timestep_embed_dim, timestep_embed_dim),
        )
        self.positional_encoding = UnusedPositionalEncoding()
        self.input_projection = nn.Linear(in_channels, dim)
        self.time_rel_pos_bias = RelativePositionTable(heads, num_buckets, max_distance)
        cond_dim = timestep_embed_dim + context_dim
        self.layers = nn.ModuleList(
            nn.ModuleList([
                ConditionedResBlock(dim, cond_dim),
                ConditionedResBlock(dim, cond_dim),
                ResidualAttention(dim, heads, rotary_dim),
            ])
            for _ in range(num_layers)
        )
        self.output_projection = nn.Linear(dim, out_channels)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        attention_backend: str = "auto",
    ) -> torch.Tensor:
        """Predicted noise (B, F, out_channels) of tokens x (B, F, in_channels), in the parameters' dtype.

        ``timesteps`` (B,) int64 diffusion steps; ``context`` (B, F, context_dim) per-token audio features.
        """
        dtype = self.input_projection.weight.dtype
        sinusoid = self.time_mlp[0](timesteps).to(dtype)
        time = self.time_mlp[1:](sinusoid)  # (B, timestep_embed_dim)
        cond = torch.cat([repeat(time, "b c -> b f c", f=x.shape[1]), context.to(dtype)], dim=-1)
        bias = self.time_rel_pos_bias(x.shape[1])
        h = self.input_projection(x.to(dtype))
        for res_a, res_b, attn in self.layers:
            h = res_a(h, cond)
            h = res_b(h, cond)
            h = attn(h, bias, attention_backend)
        return self.output_projection(h)


class PointModelSlot(nn.Module):
    """Gives the ``point_model.model.`` key prefix of the official ConditionalPointCloudDiffusionModel."""

    def __init__(self, body: DenoiserBody) -> None:
        super().__init__()
        self.model = body

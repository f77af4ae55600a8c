"""Parameter containers of the KDTalker motion denoiser, laid out like the official checkpoint.

These modules only own parameters under the attribute names the KDTalker.pth state dict forces
(``time_mlp.1``, ``layers.{i}.0.block1.norm.gamma``, ``layers.{i}.2.fn.fn.to_qkv`` ...). The
arithmetic lives in :mod:`kdtalker_core.networks.denoiser`, which reads these parameters directly
so that it can fuse and cache work across diffusion steps.
"""

from __future__ import annotations

import torch
from torch import nn


def rotary_frequencies(rotary_dim: int) -> torch.Tensor:
    """Rotary angular frequencies (rotary_dim // 2,) float32: ``10000 ** (-2i / rotary_dim)``.

    Only ``2 * (rotary_dim // 2)`` channels of each head are rotated; an odd ``rotary_dim`` therefore
    rotates one channel fewer than it names. ``rotary_dim`` 0 or 1 gives no frequencies (no rotation).
    """
    n = rotary_dim // 2
    exponents = torch.arange(0, rotary_dim, 2, device="cpu")[:n].float() / rotary_dim
    return torch.empty(n).copy_(1.0 / (10000.0**exponents))


class ChannelAffine(nn.Module):
    """Per-channel ``gamma`` (ones) and ``beta`` (zeros), both (1, 1, dim): a layer norm's affine part."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))


class ProjectNorm(nn.Module):
    """``proj`` Linear(dim_in, dim_out) and ``norm`` affine (norm used only in ``block1``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.norm = ChannelAffine(dim_out)


class ConditionedResBlock(nn.Module):
    """Two-projection residual block modulated by the conditioning vector.

    ``mlp`` = [SiLU, Linear(cond_dim, 2 * dim)] gives (scale, shift); ``block1`` projects and is
    normalised + modulated; ``block2`` projects only (its ``norm`` exists in the checkpoint, unused).
    """

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        self.block1 = ProjectNorm(dim, dim)
        self.block2 = ProjectNorm(dim, dim)


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


class TemporalSelfAttention(nn.Module):
    """``to_qkv`` Linear(dim, 3*dim, no bias), ``proj`` Linear(dim, dim), ``rotary_emb.freqs``."""

    def __init__(self, dim: int, heads: int, rotary_dim: int) -> None:
        super().__init__()
        head_dim = dim // heads
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.rotary_emb = RotaryFrequencies(rotary_dim)


class PreNormAttention(nn.Module):
    """``fn`` = the attention, ``norm`` = its pre-norm affine (registered in this order)."""

    def __init__(self, dim: int, heads: int, rotary_dim: int) -> None:
        super().__init__()
        self.fn = TemporalSelfAttention(dim, heads, rotary_dim)
        self.norm = ChannelAffine(dim)


class ResidualAttention(nn.Module):
    """Wrapper giving the ``layers.{i}.2.fn.*`` key prefix (the residual add happens in compute)."""

    def __init__(self, dim: int, heads: int, rotary_dim: int) -> None:
        super().__init__()
        self.fn = PreNormAttention(dim, heads, rotary_dim)


class UnusedPositionalEncoding(nn.Module):
    """The ``freq_bands`` buffer (10,) = 2 ** linspace(1, 9, 10): in the checkpoint, never used."""

    def __init__(self, num_freqs: int = 10) -> None:
        super().__init__()
        values = 2.0 ** torch.linspace(1, num_freqs - 1, num_freqs, device="cpu")
        self.register_buffer("freq_bands", torch.empty(num_freqs).copy_(values))


class SinusoidSlot(nn.Module):
    """Parameter-free placeholder at ``time_mlp.0`` (the sinusoidal embedding is computed in code)."""


class RelativePositionTable(nn.Module):
    """``relative_attention_bias`` Embedding(num_buckets, heads): one bias per bucket and head."""

    def __init__(self, heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        # N(0, 1) like nn.Embedding's own init; passing the tensor keeps meta-device builds fast
        self.relative_attention_bias = nn.Embedding(num_buckets, heads, _weight=torch.randn(num_buckets, heads))


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
            SinusoidSlot(), nn.Linear(dim, timestep_embed_dim), nn.SiLU(),
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


class PointModelSlot(nn.Module):
    """Gives the ``point_model.model.`` key prefix of the official ConditionalPointCloudDiffusionModel."""

    def __init__(self, body: DenoiserBody) -> None:
        super().__init__()
        self.model = body

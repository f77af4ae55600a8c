"""KDTalker motion denoiser: a temporal transformer predicting the DDIM noise of 70-d motion tokens.

Architecture (official ``SimpleTransModel`` inside ``PointModel``; full size dim 768, 6 layers):

* time: sinusoidal embedding of the timestep (``dim`` channels, [sin | cos]) -> Linear(dim, 256)
  -> SiLU -> Linear(256, 256). Conditioning per token = [time embedding (256), context (512)].
* tokens: Linear(70, dim), then per layer two conditioned residual blocks and one pre-norm
  self-attention over time with T5 relative position bias and partial rotary embedding, then
  Linear(dim, 70).

The plain, paper-like code of every block is in :mod:`kdtalker_core.networks.denoiser_blocks`
(:meth:`MotionDenoiser.reference_forward` runs it). :meth:`MotionDenoiser.forward` and
:meth:`MotionDenoiser.window_eps_fn` run a fused fast path over the same parameters ("plan"); tests
check that both give the same numbers.

The state dict is exactly ``ckpt['model']`` of KDTalker.pth (prefix ``point_model.model.``). The
official shared rotary ``freqs`` appears once per layer; here each attention layer owns a copy
(see :class:`~kdtalker_core.networks.denoiser_blocks.RotaryFrequencies`), so a strict load works.

Fast path: the SiLU of the concatenated conditioning splits exactly into a time part and a context
part, so each block's (scale, shift) is ``W_t silu(t_emb) + W_c silu(context) + b``; the block's
layer-norm affine is folded into it. The context part is computed once per sampling window, the
time part once per distinct timestep (cached), and the relative position bias and rotary tables
once per sequence length. The per-step work is then the token projections and attention only; on
x86 CPUs the sampler multiplies with weights packed once per window (MKL or oneDNN for
float32, whichever a probe finds faster; oneDNN for bfloat16:
:mod:`kdtalker_core.backends.mkl_linear`), the residual blocks' second SiLU and the attention
output's residual addition applied inside those products. On CUDA the sampling step (time modulation, trunk and
projections) is captured once per shape as a CUDA graph and replayed at every step and window
(:mod:`kdtalker_core.cuda_graph`; ``KDTALKER_CUDA_GRAPH=0`` turns it off). Everything runs in the parameters' dtype
(``model.to(torch.bfloat16)`` for bf16; matrix products accumulate in float32), except the small
time MLP, which always runs in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import cuda_graph as cuda_graphs
from ..attention import attention
from ..backends import mkl_linear
from ..errors import InputError
from ..networks.denoiser_blocks import (
    LN_EPS,
    DenoiserBody,
    PointModelSlot,
    relative_position_bucket,
    timestep_embedding,
)

__all__ = ["EpsFn", "MotionDenoiser", "relative_position_bucket", "timestep_embedding"]

#: eps-prediction callable used by the sampler: (x_t (B,N,70), t (B,) int64) -> eps (B,N,70).
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_MAX_TIME_CACHE = 4096


@dataclass
class _Plan:
    """Flat tensor lists and per-size caches for one parameter state (dtype, device, versions)."""

    signature: tuple
    dtype: torch.dtype
    res: list[tuple[torch.Tensor, ...]]  # (w1, b1, w2, b2, w_time, w_ctx, b_mod, gamma, beta)
    attn: list[tuple[torch.Tensor, ...]]  # (ln_gamma, ln_beta, w_qkv, w_proj, b_proj, freqs)
    rope: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    bias: dict[int, torch.Tensor] = field(default_factory=dict)
    time: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    packed_rows: int = 0  # row count the packed weights were prepared for (0: none)
    packed: list[tuple[mkl_linear.PackedWeight | None, ...]] = field(default_factory=list)  # per layer
    #: captured sampling steps (CUDA) by the shapes and dtypes of their inputs; None: capture failed
    graphs: dict[tuple, cuda_graphs.StepGraph | None] = field(default_factory=dict)

    def packed_for(self, rows: int) -> list[tuple[mkl_linear.PackedWeight | None, ...]]:
        """Per layer (block1, block2, block1', block2', qkv, proj) packed weights, or Nones.

        Packing is used for float32 and bfloat16 CPU weights (sampling windows; the
        plain forward does not pack); it keeps one packed copy of the layer weights (about their
        size: 113 MB at full size in float32, 57 MB in bf16) for the most recent row count. Packed
        products give F.linear's numbers up to float32 summation order (tests compare them).
        """
        layers = len(self.attn)
        device = self.attn[0][2].device if layers else torch.device("cpu")
        if device.type != "cpu" or not mkl_linear.packs(self.dtype):
            return [(None,) * 6] * layers
        if self.packed_rows != rows:
            self.packed = []
            pack = mkl_linear.pack_weight
            for layer in range(layers):
                a, b = self.res[2 * layer], self.res[2 * layer + 1]
                self.packed.append((
                    pack(a[0], rows), pack(a[2], rows), pack(b[0], rows), pack(b[2], rows),
                    pack(self.attn[layer][2], rows), pack(self.attn[layer][3], rows),
                ))
            self.packed_rows = rows
        return self.packed


class MotionDenoiser(nn.Module):
    """KDTalker's noise predictor over per-frame 70-d motion tokens (official weight layout).

    Args:
        dim: token width (768 official). Heads = ``dim // 64`` unless ``heads`` is given.
        num_layers: transformer layers (6 official).
        in_channels: motion vector size (70); also the output size unless ``out_channels``.
        context_dim: audio feature size per token (512).
        timestep_embed_dim: time MLP width (256).
        heads, rotary_dim: default ``dim // 64`` and ``min(32, heads)`` (official rules).
        num_buckets, max_distance: relative position bias buckets (32, 128).
        attention_backend: passed to :func:`kdtalker_core.attention.attention` ("auto" by default).
    """

    def __init__(
        self,
        dim: int = 768,
        num_layers: int = 6,
        in_channels: int = 70,
        context_dim: int = 512,
        timestep_embed_dim: int = 256,
        heads: int | None = None,
        rotary_dim: int | None = None,
        num_buckets: int = 32,
        max_distance: int = 128,
        out_channels: int | None = None,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        heads = dim // 64 if heads is None else heads
        if heads < 1:
            raise InputError(f"MotionDenoiser needs dim >= 64 (one 64-channel head), got dim={dim}.")
        rotary_dim = min(32, heads) if rotary_dim is None else rotary_dim
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.rotary_dim = rotary_dim
        self.in_channels = in_channels
        self.context_dim = context_dim
        self.timestep_embed_dim = timestep_embed_dim
        self.attention_backend = attention_backend
        if 2 * (rotary_dim // 2) > self.head_dim:
            raise InputError(f"rotary_dim {rotary_dim} exceeds the head size {self.head_dim}.")
        self.point_model = PointModelSlot(DenoiserBody(
            dim=dim, num_layers=num_layers, heads=heads, rotary_dim=rotary_dim,
            in_channels=in_channels, out_channels=in_channels if out_channels is None else out_channels,
            context_dim=context_dim, timestep_embed_dim=timestep_embed_dim,
            num_buckets=num_buckets, max_distance=max_distance,
        ))
        self._plan: _Plan | None = None

    # ------------------------------------------------------------------ bookkeeping

    @property
    def body(self) -> DenoiserBody:
        """The parameter tree (``point_model.model``)."""
        return self.point_model.model

    def invalidate_caches(self) -> None:
        """Drop cached tables; needed only after editing parameters through ``.data`` in place."""
        self._plan = None

    def release_packed_weights(self) -> None:
        """Free the packed copy of the layer weights (about 113 MB at full size in float32) kept since the
        last sampling window; the next window packs again (tens of milliseconds). Called when a
        sampling run ends, so the copy does not sit in memory while frames render."""
        if self._plan is not None:
            self._plan.packed = []
            self._plan.packed_rows = 0

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .bfloat16(): drop tables of the old state
        self._plan = None
        return super()._apply(fn, *args, **kwargs)

    def _get_plan(self) -> _Plan:
        """The plan for the current parameters, rebuilt when any parameter moved or changed."""
        params = list(self.parameters())
        dtype = self.body.input_projection.weight.dtype
        # Inference tensors (weights loaded under torch.inference_mode, as ComfyUI runs nodes) have no
        # version counter and cannot be modified in place: their storage address identifies them.
        signature = (dtype, tuple((p.data_ptr(), -1 if torch.is_inference(p) else p._version) for p in params))
        plan = self._plan
        if plan is not None and plan.signature == signature:
            return plan
        t = self.timestep_embed_dim
        res, attn = [], []
        for block_a, block_b, attn_wrap in self.body.layers:
            for block in (block_a, block_b):
                lin = block.mlp[1]
                res.append((
                    block.block1.proj.weight.detach(), block.block1.proj.bias.detach(),
                    block.block2.proj.weight.detach(), block.block2.proj.bias.detach(),
                    lin.weight.detach()[:, :t], lin.weight.detach()[:, t:], lin.bias.detach(),
                    block.block1.norm.gamma.detach().reshape(-1), block.block1.norm.beta.detach().reshape(-1),
                ))
            pre = attn_wrap.fn
            attn.append((
                pre.norm.gamma.detach().reshape(-1), pre.norm.beta.detach().reshape(-1),
                pre.fn.to_qkv.weight.detach(), pre.fn.proj.weight.detach(), pre.fn.proj.bias.detach(),
                pre.fn.rotary_emb.freqs.detach(),
            ))
        plan = _Plan(signature=signature, dtype=dtype, res=res, attn=attn)
        self._plan = plan
        return plan

    # ------------------------------------------------------------------ small public pieces

    def time_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Time MLP output (B, timestep_embed_dim) float32 for (B,) integer timesteps."""
        mlp = self.body.time_mlp
        emb = timestep_embedding(timesteps.reshape(-1), self.dim)
        emb = F.linear(emb, mlp[1].weight.float(), mlp[1].bias.float())
        return F.linear(F.silu(emb), mlp[3].weight.float(), mlp[3].bias.float())

    def relative_position_bias(self, num_frames: int) -> torch.Tensor:
        """Additive attention bias (heads, F, F) in the parameters' dtype; cached per ``num_frames``."""
        plan = self._get_plan()
        bias = plan.bias.get(num_frames)
        if bias is None:
            table = self.body.time_rel_pos_bias
            weight = table.relative_attention_bias.weight.detach()
            buckets = relative_position_bucket(
                num_frames, table.num_buckets, table.max_distance, device=weight.device
            )
            bias = weight[buckets].permute(2, 0, 1).contiguous()
            plan.bias[num_frames] = bias
        return bias

    def _rotary_tables(self, plan: _Plan, num_frames: int) -> list[torch.Tensor]:
        """Per layer the rotation of each token's rotated channel pairs: (F, 1, 1, r/2) complex64
        ``exp(i * position * freqs)``, r = rotated channels; cached per length.

        Channels (2i, 2i+1) read as the complex number x_2i + i x_2i+1 turn by angle
        ``position * freqs[i]``: one complex product (float32) per pair.
        """
        tables = plan.rope.get(num_frames)
        if tables is None:
            tables = []
            for *_, freqs in plan.attn:
                pos = torch.arange(num_frames, device=freqs.device, dtype=torch.float32)
                angles = pos[:, None] * freqs.float()[None, :]
                tables.append(torch.polar(torch.ones_like(angles), angles).reshape(num_frames, 1, 1, -1))
            plan.rope[num_frames] = tables
        return tables

    def _time_modulation(self, plan: _Plan, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Time part of every block's modulation: (gamma * scale_t, beta * scale_t + shift_t).

        Both (R, B, 1, dim) in the compute dtype, R = 2 * num_layers; the block's mlp bias is
        included here. Cached per tuple of timestep values when the timesteps live on the CPU
        (reading them costs no device sync there).
        """
        key = tuple(timesteps.tolist()) if timesteps.device.type == "cpu" else None
        if key is not None and key in plan.time:
            return plan.time[key]
        scale, shift = self._time_rows(plan, timesteps)
        out = scale[:, :, None, :], shift[:, :, None, :]
        if key is not None:
            if len(plan.time) >= _MAX_TIME_CACHE:
                plan.time.clear()
            plan.time[key] = out
        return out

    def _time_rows(self, plan: _Plan, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma * scale_t, beta * scale_t + shift_t) of every block for (T,) timesteps: two
        (R, T, dim) tensors in the compute dtype (products in the weights' dtype, the rest float32)."""
        device = plan.res[0][0].device if plan.res else timesteps.device
        act = F.silu(self.time_embedding(timesteps.to(device)))
        scales, shifts = [], []
        for *_, w_time, _w_ctx, b_mod, gamma, beta in plan.res:
            mod = F.linear(act.to(w_time.dtype), w_time, b_mod).float()
            scale, shift = mod.chunk(2, dim=-1)
            scales.append(gamma.float() * scale)
            shifts.append(beta.float() * scale + shift)
        return torch.stack(scales).to(plan.dtype), torch.stack(shifts).to(plan.dtype)

    def _cache_time_modulations(self, plan: _Plan, timesteps: torch.Tensor, batch: int) -> None:
        """Fill the time-modulation cache for every value in ``timesteps`` (a CPU (S,) schedule),
        each as the (batch,) timesteps a sampler step passes: one batched pass over the time MLP
        and the blocks' time projections (S rows) instead of S single-row passes (about 80 ms for
        a 50-step window on a 2-core CPU, against a few ms)."""
        values = [int(v) for v in timesteps.reshape(-1).tolist()]
        missing = sorted({v for v in values if (v,) * batch not in plan.time})
        if not missing or len(plan.time) + len(missing) > _MAX_TIME_CACHE:
            return
        scale, shift = self._time_rows(plan, torch.tensor(missing, dtype=torch.long))
        for i, v in enumerate(missing):
            plan.time[(v,) * batch] = (scale[:, i:i + 1, None, :].expand(-1, batch, -1, -1),
                                       shift[:, i:i + 1, None, :].expand(-1, batch, -1, -1))

    def _context_modulation(self, plan: _Plan, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context part of every block's modulation: (gamma * (1 + scale_c), beta * (1 + scale_c) + shift_c).

        ``context`` (B, F, context_dim); returns two (R, B, F, dim) tensors in the compute dtype.
        """
        act = F.silu(context.to(plan.dtype))
        scales, shifts = [], []
        for *_, w_ctx, _b_mod, gamma, beta in plan.res:
            scale, shift = F.linear(act, w_ctx).chunk(2, dim=-1)
            scale = scale + 1.0
            scales.append(gamma * scale)
            shifts.append(torch.addcmul(shift, beta, scale))
        return torch.stack(scales), torch.stack(shifts)

    # ------------------------------------------------------------------ the network

    def _trunk(
        self,
        plan: _Plan,
        x: torch.Tensor,
        mod_scale: torch.Tensor,
        mod_shift: torch.Tensor,
        rope: list[torch.Tensor],
        bias: torch.Tensor,
        packed: list[tuple[mkl_linear.PackedWeight | None, ...]] | None = None,
    ) -> torch.Tensor:
        """All layers on projected tokens x (B, F, dim); mod_* (R, B, F, dim) full modulation.

        ``packed``: per-layer packed weights from ``plan.packed_for(B * F)``, or None.
        """
        b, n, d = x.shape
        heads, head_dim = self.heads, self.head_dim
        rot = 2 * rope[0].shape[-1] if rope else 0
        scale = head_dim**-0.5
        if packed is None:
            packed = [(None,) * 6] * len(plan.attn)
        for layer, (ln_g, ln_b, w_qkv, w_proj, b_proj, _freqs) in enumerate(plan.attn):
            pk = packed[layer]
            for j, r in enumerate((2 * layer, 2 * layer + 1)):
                w1, b1, w2, b2 = plan.res[r][:4]
                h = F.layer_norm(mkl_linear.linear(x, w1, b1, pk[2 * j]), (d,), eps=LN_EPS)
                h = F.silu(torch.addcmul(mod_shift[r], h, mod_scale[r]), inplace=True)
                x = mkl_linear.linear(h, w2, b2, pk[2 * j + 1], silu=True).add_(x)
            y = F.layer_norm(x, (d,), ln_g, ln_b, eps=LN_EPS)
            qkv = mkl_linear.linear(y, w_qkv, None, pk[4]).view(b, n, 3, heads, head_dim)
            if rot:  # q and k: channel pairs as complex numbers, turned in float32 (2x faster than real ops)
                part = qkv[:, :, :2, :, :rot]
                turned = torch.view_as_complex(part.float().contiguous().unflatten(-1, (rot // 2, 2))) * rope[layer]
                part.copy_(torch.view_as_real(turned).flatten(-2))
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
            out = attention(q, k, v, bias, backend=self.attention_backend, scale=scale)
            out = out.transpose(1, 2).reshape(b, n, heads * head_dim)
            x = mkl_linear.linear(out, w_proj, b_proj, pk[5], residual=x)
        return x

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the noise of every token.

        Args:
            x: (B, F, in_channels) motion tokens.
            timesteps: (B,) int64 diffusion timesteps (0..999); a scalar is broadcast over B.
            context: (B, F, context_dim) per-token audio features; None means zeros.

        Returns:
            (B, F, out_channels) in the dtype of ``x``. Inference only (no autograd graph).
        """
        with torch.inference_mode():
            plan = self._get_plan()
            b, n, _ = x.shape
            if context is None:
                context = x.new_zeros(b, n, self.context_dim)
            if context.shape[:2] != (b, n):
                raise InputError(f"context {tuple(context.shape)} must match x {tuple(x.shape)} in (B, F).")
            t = _as_batch_timesteps(timesteps, b)
            c_scale, c_shift = self._context_modulation(plan, context)
            t_scale, t_shift = self._time_modulation(plan, t)
            body = self.body
            h = F.linear(x.to(plan.dtype), body.input_projection.weight, body.input_projection.bias)
            h = self._trunk(plan, h, c_scale + t_scale, c_shift + t_shift,
                            self._rotary_tables(plan, n), self.relative_position_bias(n))
            out = F.linear(h, body.output_projection.weight, body.output_projection.bias)
            return out.to(x.dtype)

    def reference_forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The same prediction as :meth:`forward`, computed by the plain modules (no fusion, no caches).

        Same arguments and result as :meth:`forward`; slower, meant for reading and for tests.
        """
        with torch.inference_mode():
            b, n, _ = x.shape
            if context is None:
                context = x.new_zeros(b, n, self.context_dim)
            if context.shape[:2] != (b, n):
                raise InputError(f"context {tuple(context.shape)} must match x {tuple(x.shape)} in (B, F).")
            out = self.body(x, _as_batch_timesteps(timesteps, b), context, attention_backend=self.attention_backend)
            return out.to(x.dtype)

    def window_eps_fn(self, ori_kps: torch.Tensor, ref_kps: torch.Tensor, aud_feat: torch.Tensor,
                      timesteps: torch.Tensor | None = None, cuda_graph: bool | None = None) -> EpsFn:
        """Noise predictor for one sampling window with the official conditioning.

        Tokens are [ori_kps, ref_kps, x_t] and the context is [0, 0, aud_feat]; the eps of the
        x_t tokens is returned. Everything that does not depend on x_t or t (context modulation,
        projected conditioning tokens, relative bias, rotary tables) is computed here once.

        Args:
            ori_kps: (B, 70) source token ``[zeros(7), normalised kp(63)]``.
            ref_kps: (B, 70) reference motion (the previous window's last frame, or the source).
            aud_feat: (B, N, context_dim) audio features of the window's N frames.
            timesteps: optional (S,) int64 CPU schedule the sampler will step through; their time
                modulations are then computed here in one batched pass (same values as computed
                step by step, up to the float rounding of a batched product).
            cuda_graph: on CUDA, replay the step as a CUDA graph captured once per shape and kept
                for later windows (:mod:`kdtalker_core.cuda_graph`; a failed or disagreeing
                capture falls back to running the step directly). None: on unless
                ``KDTALKER_CUDA_GRAPH=0``. Ignored on other devices.

        Returns:
            ``eps_fn(x_t (B, N, 70), t (B,) int64 or scalar) -> eps (B, N, 70)`` in x_t's dtype.
        """
        if aud_feat.dim() != 3 or ori_kps.shape != ref_kps.shape or ori_kps.shape[0] != aud_feat.shape[0]:
            raise InputError(
                "window_eps_fn expects ori_kps (B,70), ref_kps (B,70), aud_feat (B,N,512); got "
                f"{tuple(ori_kps.shape)}, {tuple(ref_kps.shape)}, {tuple(aud_feat.shape)}."
            )
        with torch.inference_mode():
            plan = self._get_plan()
            b, n, _ = aud_feat.shape
            tokens = n + 2
            body = self.body
            w_in, b_in = body.input_projection.weight, body.input_projection.bias
            w_out, b_out = body.output_projection.weight, body.output_projection.bias
            dtype, device = plan.dtype, w_in.device
            context = torch.cat([aud_feat.new_zeros(b, 2, aud_feat.shape[-1]), aud_feat], dim=1)
            c_scale, c_shift = self._context_modulation(plan, context.to(device))
            cond = torch.stack([ori_kps, ref_kps], dim=1).to(device=device, dtype=dtype)
            cond_tokens = F.linear(cond, w_in, b_in)
            rope = self._rotary_tables(plan, tokens)
            bias = self.relative_position_bias(tokens)
            packed = plan.packed_for(b * tokens)
            if timesteps is not None and timesteps.device.type == "cpu":
                self._cache_time_modulations(plan, timesteps, b)

            scale_buf, shift_buf = torch.empty_like(c_scale), torch.empty_like(c_shift)
        graphed = device.type == "cuda" and (cuda_graphs.wanted(device) if cuda_graph is None else bool(cuda_graph))

        def step(x_t: torch.Tensor, steps: torch.Tensor, c_scale: torch.Tensor, c_shift: torch.Tensor,
                 cond_tokens: torch.Tensor) -> torch.Tensor:
            # Everything that changes between steps or windows is an argument (a CUDA graph of this
            # function is replayed with new values); rope, bias and the weights depend only on the
            # shapes and parameters, which key the graph.
            t_scale, t_shift = self._time_modulation(plan, steps)
            # reused buffers: a fresh multi-MB tensor per step costs page faults on the CPU
            torch.add(c_scale, t_scale, out=scale_buf)
            torch.add(c_shift, t_shift, out=shift_buf)
            h = torch.cat([cond_tokens, F.linear(x_t.to(dtype), w_in, b_in)], dim=1)
            h = self._trunk(plan, h, scale_buf, shift_buf, rope, bias, packed)
            return F.linear(h[:, 2:], w_out, b_out).to(x_t.dtype)

        def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                args = (x_t, _as_batch_timesteps(t, b), c_scale, c_shift, cond_tokens)
                if graphed:
                    args = (x_t.to(device), args[1].to(device), *args[2:])
                    graph = self._step_graph(plan, step, args)
                    if graph is not None:
                        return graph(*args)
                return step(*args)

        return eps_fn

    @staticmethod
    def _step_graph(plan: _Plan, step: Callable[..., torch.Tensor],
                    args: tuple[torch.Tensor, ...]) -> cuda_graphs.StepGraph | None:
        """The plan's CUDA graph of ``step`` for inputs shaped like ``args``, captured on first use
        (None when the capture failed: the step then runs directly)."""
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        if key not in plan.graphs:
            plan.graphs[key] = cuda_graphs.capture(step, args, name="denoiser sampling step")
        return plan.graphs[key]


def _as_batch_timesteps(t: torch.Tensor | int, batch: int) -> torch.Tensor:
    """Timesteps as a (batch,) int64 tensor on their own device; a scalar or 1-element input is repeated."""
    t = torch.as_tensor(t).long().reshape(-1)
    if t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise InputError(f"got {t.numel()} timesteps for a batch of {batch}.")
    return t

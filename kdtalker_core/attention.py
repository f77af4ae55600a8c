"""One attention function with interchangeable kernels: xformers, PyTorch SDPA, or plain math.

All backends compute ``softmax(scale * q @ k^T + bias) @ v`` over the last two axes. Tensors are
laid out (B, H, N, Dh): batch, heads, tokens, channels per head. ``bias`` is an additive float
term broadcastable to (B, H, N_q, N_k) (the denoiser passes its relative position bias (H, N, N)).

Backend names:

* ``"xformers"``: ``xformers.ops.memory_efficient_attention``; usable only when xformers imports and
  the tensors are on CUDA.
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient / math
  kernels chosen by PyTorch).
* ``"math"``: explicit matmul + softmax, all in float32 whatever the inputs' dtype (the result is
  cast back); the reference the others are tested against.
* ``"auto"``: the process-wide choice made with :func:`set_attention_backend` if it names a concrete
  backend, otherwise xformers when usable for the given tensors, else SDPA, except on the CPU for
  short sequences (at most :data:`CPU_MATH_MAX_PAIRS` query-key pairs per head, such as the
  denoiser's 66 tokens), where the float32 math path is both faster and at least as accurate.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

from .errors import InputError

BACKENDS: tuple[str, ...] = ("auto", "xformers", "sdpa", "math")

_selected: str = "auto"

#: "auto" on the CPU: attention over at most this many query x key pairs per head runs the float32
#: math path instead of SDPA. Measured on a 2-core Zen 5 EPYC (2 threads, 12 heads of 64 channels,
#: relative bias): 66 tokens float32 SDPA 295 us / math 185 us, bf16 219 / 172 us (the same error
#: against float64: SDPA's bf16 kernel also computes in float32); 130 tokens 721 / 568 and 636 / 545;
#: 258 tokens about equal (2299 / 2052, 2113 / 2150).
CPU_MATH_MAX_PAIRS = 192 * 192


def _check_name(name: str) -> str:
    """Return ``name`` normalised to lower case, or raise InputError for an unknown backend."""
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise InputError(
            f"Unknown attention backend {name!r}. Choose one of {', '.join(BACKENDS)} "
            "('auto' picks xformers on CUDA when installed, else PyTorch SDPA)."
        )
    return key


def set_attention_backend(name: str) -> None:
    """Choose the process-wide backend used when :func:`attention` is called with ``backend="auto"``.

    ``name`` is one of :data:`BACKENDS`; ``"auto"`` restores the automatic choice. Choosing
    ``"xformers"`` when it is not installed raises InputError right away.
    """
    key = _check_name(name)
    if key == "xformers" and not xformers_installed():
        raise InputError(
            "Attention backend 'xformers' was requested but xformers is not installed. "
            "Install a build matching your PyTorch/CUDA, or choose 'sdpa' or 'auto'."
        )
    global _selected
    _selected = key


def get_attention_backend() -> str:
    """The process-wide backend name set by :func:`set_attention_backend` (``"auto"`` by default)."""
    return _selected


def xformers_installed() -> bool:
    """True when the ``xformers`` package can be imported (its CUDA kernels may still be absent)."""
    return importlib.util.find_spec("xformers") is not None


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Concrete backends usable for tensors on ``device`` (default: CUDA if present, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = ["sdpa", "math"]
    if torch.device(device).type == "cuda" and xformers_installed():
        names.insert(0, "xformers")
    return names


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map a requested name (possibly ``"auto"``) to the concrete backend used on ``device``."""
    key = _check_name(backend)
    if key == "auto":
        key = _selected
    if key == "auto":
        return "xformers" if device.type == "cuda" and xformers_installed() else "sdpa"
    if key == "xformers":
        if not xformers_installed():
            raise InputError(
                "Attention backend 'xformers' needs the xformers package; install it or use 'sdpa'/'auto'."
            )
        if device.type != "cuda":
            raise InputError(
                f"Attention backend 'xformers' runs on CUDA only, but the tensors are on {device}; "
                "use 'sdpa' or 'auto' on this device."
            )
    return key


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with an optional additive bias.

    Args:
        q, k, v: (B, H, N, Dh) queries, keys and values (same dtype and device).
        bias: additive term broadcastable to (B, H, N, N), same dtype as ``q``; None for none.
        backend: ``"auto"``, ``"xformers"``, ``"sdpa"`` or ``"math"`` (see the module docstring).
        scale: multiplier of ``q @ k^T``; default ``Dh ** -0.5``. Pass 1.0 for pre-scaled queries.

    Returns:
        (B, H, N, Dh) attention output in the dtype of ``q``.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    name = resolve_backend(backend, q.device)
    if (name == "sdpa" and q.device.type == "cpu" and q.shape[-2] * k.shape[-2] <= CPU_MATH_MAX_PAIRS
            and _check_name(backend) == "auto" and _selected == "auto"):
        name = "math"
    if name == "sdpa":
        if bias is not None and bias.dim() < 4:
            # a 4-D mask keeps PyTorch on its fused CPU kernel (a 3-D one falls back to the math path)
            bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    if name == "math":
        return _math_attention(q, k, v, bias, scale)
    return _xformers_attention(q, k, v, bias, scale)


def _math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Reference, in float32: scale q, (B,H,N,N) scores, add bias, softmax, weight the values;
    the result in q's dtype."""
    qf = q.float() * scale  # a new tensor (q itself is never scaled in place)
    scores = torch.matmul(qf, k.float().transpose(-2, -1))
    if bias is not None:  # broadcastable to the (B,H,N,N) scores: added in place
        scores.add_(bias.float())
    return torch.matmul(torch.softmax(scores, dim=-1), v.float()).to(q.dtype)


def _xformers_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """xformers memory-efficient attention; it wants (B, N, H, Dh) and a dense, 8-aligned bias."""
    import xformers.ops as xops

    b, h, n, _ = q.shape
    n_k = k.shape[-2]
    attn_bias = None
    if bias is not None:
        # xformers needs the bias last dim padded to a multiple of 8 in memory; slice back the view.
        padded = (n_k + 7) // 8 * 8
        storage = torch.zeros(b, h, n, padded, dtype=q.dtype, device=q.device)
        storage[..., :n_k] = bias.to(q.dtype)
        attn_bias = storage[..., :n_k]
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias, scale=scale
    )
    return out.transpose(1, 2)

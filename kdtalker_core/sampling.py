"""DDIM sampling as plain functions over a noise-prediction callable (k-diffusion style).

Reproduces diffusers 0.10.2 ``DDIMScheduler`` as configured by KDTalker: linear betas
1e-5..8e-3 over 1000 training steps, "leading" timesteps ``(arange(S) * (1000 // S))`` reversed
(980, 960, ..., 0 for 50 steps), epsilon prediction, no clipping, final alpha 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import InputError

#: (x_t (B,N,C), t (B,) int64) -> predicted noise (B,N,C)
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: callback(step_index, timestep, x after the step); raising stops sampling (the exception propagates)
StepCallback = Callable[[int, int, torch.Tensor], None]


def linear_alphas_cumprod(
    beta_start: float = 1e-5, beta_end: float = 8e-3, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """Cumulative products of ``1 - beta`` for linearly spaced betas: (num_train_timesteps,) float32."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(num_inference_steps: int = 50, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Descending DDIM timesteps (S,) int64: ``k * (num_train_timesteps // S)`` for k = S-1 .. 0.

    50 steps give 980, 960, ..., 0; 10 steps give 900, 800, ..., 0.
    """
    steps = int(num_inference_steps)
    if not 1 <= steps <= num_train_timesteps:
        raise InputError(
            f"The number of sampling steps must be between 1 and {num_train_timesteps}, got {steps}."
        )
    ratio = num_train_timesteps // steps
    return (torch.arange(steps - 1, -1, -1, dtype=torch.long) * ratio).contiguous()


def _step_coefficients(
    alphas_cumprod: torch.Tensor, timesteps: list[int], eta: float, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-step scalars (S,) float32 on ``device``, computed like diffusers' ``DDIMScheduler.step``.

    The step after the last timestep uses alpha 1 (set_alpha_to_one); each step's "previous"
    timestep is the next entry of ``timesteps``.
    """
    ac = alphas_cumprod.detach().to(device=device, dtype=torch.float32)
    idx = torch.tensor(timesteps, dtype=torch.long, device=device)
    a_t = ac[idx]
    a_prev = torch.cat([ac[idx[1:]], torch.ones(1, dtype=torch.float32, device=device)])
    beta_t = 1 - a_t
    variance = (1 - a_prev) / beta_t * (1 - a_t / a_prev)
    std = eta * variance**0.5
    return {
        "sqrt_beta": beta_t**0.5,
        "sqrt_alpha": a_t**0.5,
        "sqrt_alpha_prev": a_prev**0.5,
        "direction": (1 - a_prev - std**2) ** 0.5,
        "std": std,
    }


def sample_ddim(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run DDIM from noise ``x_T`` (B, ...) down through ``timesteps`` and return x0 (same shape/dtype).

    Each step with noise prediction ``eps = eps_fn(x_t, t)``::

        x0_pred = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
        x_prev  = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev - sigma^2) * eps + sigma * z

    with ``sigma = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))`` and ``z`` standard
    normal noise drawn from ``generator`` only when ``eta > 0``.

    Args:
        eps_fn: noise predictor, called with x_t and a (B,) int64 timestep tensor on x_T's device.
        x_T: initial noise.
        alphas_cumprod: (num_train_timesteps,) from :func:`linear_alphas_cumprod`.
        timesteps: descending (S,) int timesteps from :func:`ddim_timesteps`.
        eta: DDIM stochasticity (0 = deterministic, as KDTalker samples).
        generator: random source for ``eta > 0``.
        callback: ``callback(step_index, t, x_t_after_step)`` after every step; an exception it
            raises propagates out of this function (use it to cancel).
    """
    steps = [int(t) for t in torch.as_tensor(timesteps).reshape(-1).tolist()]
    if not steps:
        raise InputError("DDIM needs at least one timestep; ask ddim_timesteps() for 1 or more steps.")
    num_train = alphas_cumprod.shape[0]
    if any(not 0 <= t < num_train for t in steps):
        raise InputError(f"DDIM timesteps must lie in [0, {num_train}); got {steps}.")
    if eta < 0:
        raise InputError(f"DDIM eta must be >= 0, got {eta}.")
    device = x_T.device
    coef = _step_coefficients(alphas_cumprod, steps, float(eta), device)
    batch = x_T.shape[0]
    t_batches = torch.tensor(steps, dtype=torch.long, device=device)[:, None].expand(len(steps), batch)
    x = x_T
    for i, t in enumerate(steps):
        eps = eps_fn(x, t_batches[i]).to(x.dtype)
        x0 = (x - coef["sqrt_beta"][i] * eps) / coef["sqrt_alpha"][i]
        x = coef["sqrt_alpha_prev"][i] * x0 + coef["direction"][i] * eps
        if eta > 0:
            noise_device = generator.device if generator is not None else device
            noise = torch.randn(x.shape, generator=generator, device=noise_device, dtype=x.dtype)
            x = x + coef["std"][i] * noise.to(device)
        if callback is not None:
            callback(i, t, x)
    return x

"""Kalman (Rauch-Tung-Striebel) smoothing of per-frame motion curves.

Model (the settings KDTalker's inference uses, per dimension, all dimensions independent)::

    x_t = x_{t-1} + w_t,   w_t ~ N(0, q)        identity dynamics, q = transition_cov
    y_t = x_t + v_t,       v_t ~ N(0, r)        identity observation, r = observation_cov
    x_0 ~ N(y_0, 1)                             prior: first observation, unit variance

The forward filter uses the prior directly at t = 0 (no predict step there), then the RTS
backward pass; the result is the smoothed state *mean*.

Because every covariance is a multiple of the identity, the variance recursion is one scalar
sequence shared by all dimensions. It is run once (in float64, cut short as soon as it reaches
its fixed point); the means then follow two first-order linear recurrences with scalar
per-step coefficients (forward: ``m_t = a_t m_{t-1} + k_t y_t``; backward:
``s_t = j_t s_{t+1} + (1 - j_t) m_t``). Those are solved in chunks: within a chunk every output
is a fixed linear combination of the chunk's inputs (one batched matrix product for all chunks
at once); the chunk-to-chunk carries form a shorter recurrence of the same kind, solved
recursively. No Python loop runs over time.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InputError

#: Official (inference.py) process noise variance per frame.
TRANSITION_COV = 0.05
#: Official observation noise variance.
OBSERVATION_COV = 0.001
#: Official prior variance of the first state.
INITIAL_COV = 1.0

_CHUNK = 32


def _variance_sequences(
    num_steps: int, q: float, r: float, p0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Filter gains and smoother gains of the scalar model.

    Returns ``(k, j)`` float64 arrays: ``k`` (T,) Kalman gains, ``j`` (T-1,) RTS gains
    ``P_filt[t] / P_pred[t+1]``. The recursion stops as soon as the filtered variance
    repeats exactly (its fixed point in float64); the remaining entries are copies.
    """
    p_pred = np.empty(num_steps, dtype=np.float64)
    p_filt = np.empty(num_steps, dtype=np.float64)
    pp = float(p0)
    prev_pf = math.nan
    t = 0
    while t < num_steps:
        k = pp / (pp + r)
        pf = pp - k * pp
        p_pred[t] = pp
        p_filt[t] = pf
        t += 1
        if pf == prev_pf:  # fixed point: every later step is identical
            p_pred[t:] = pp
            p_filt[t:] = pf
            break
        prev_pf = pf
        pp = pf + q
    gains = p_pred / (p_pred + r)
    rts = p_filt[:-1] / p_pred[1:]
    return gains, rts


def _linear_recurrence(coef: torch.Tensor, drive: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """Solve ``x_t = coef[t] * x_{t-1} + drive[t]`` for t = 0..T-1 with ``x_{-1} = init``.

    coef (T,) float64, drive (T,n) float64, init (n,) float64 -> x (T,n) float64.
    Time is cut into chunks of ``_CHUNK`` steps. Inside a chunk each output is a fixed linear
    combination of the chunk's drives plus a multiple of the carry-in (one batched matmul for all
    chunks). The carries (last state of each chunk) obey the same kind of recurrence, one step per
    chunk, which is solved by recursion: depth log_32(T), no Python loop over time.
    """
    steps, dims = drive.shape
    c = min(_CHUNK, steps)
    n_chunks = -(-steps // c)
    pad = n_chunks * c - steps
    if pad:  # identity steps at the tail do not affect the real outputs
        coef = torch.cat([coef, coef.new_ones(pad)])
        drive = torch.cat([drive, drive.new_zeros(pad, dims)])
    a = coef.view(n_chunks, c)
    b = drive.view(n_chunks, c, dims)
    row = torch.arange(c).view(c, 1)
    col = torch.arange(c).view(1, c)
    # transfer[i, j] = prod_{k=j+1..i} a_k for i >= j, 0 above the diagonal (exact products, no logs)
    factors = torch.where(row > col, a.unsqueeze(2), a.new_ones(()))
    transfer = torch.cumprod(factors, dim=1).masked_fill_(row < col, 0.0)
    local = torch.bmm(transfer, b)  # outputs for a zero carry-in
    carry_gain = torch.cumprod(a, dim=1)  # weight of the carry-in on each output of its chunk
    if n_chunks == 1:
        carries = init.unsqueeze(0)
    else:
        ends = _linear_recurrence(carry_gain[:, -1], local[:, -1], init)
        carries = torch.cat([init.unsqueeze(0), ends[:-1]])
    out = local.addcmul_(carry_gain.unsqueeze(2), carries.unsqueeze(1))
    return out.view(n_chunks * c, dims)[:steps]


def kalman_smooth(
    seq: torch.Tensor,
    transition_cov: float = TRANSITION_COV,
    observation_cov: float = OBSERVATION_COV,
    *,
    strength: float = 1.0,
) -> torch.Tensor:
    """RTS-smoothed state means of ``seq`` (T,n) (or (T,)), same shape, dtype and device.

    With the defaults and ``strength=1.0`` this is exactly the official pykalman smoothing
    (``KalmanFilter(initial_state_mean=seq[0], transition_covariance=0.05*I,
    observation_covariance=0.001*I).smooth(seq)[0]``) up to float64 rounding. It runs in
    float64 on the CPU (also for GPU/MPS inputs) and returns the input dtype and device.

    ``strength`` divides the process noise: the transition covariance used is
    ``transition_cov / strength**2``, i.e. ``strength`` scales the process noise *standard
    deviation* down. Larger values smooth more (the smoother's effective averaging window grows
    roughly in proportion to ``strength`` once it spans several frames); ``strength=0`` turns
    smoothing off and returns a copy of the input. Cost: O(T*n*32) multiply-adds.
    """
    if strength < 0 or not math.isfinite(strength):
        raise InputError(f"smoothing strength must be a finite number >= 0, got {strength}")
    if not (transition_cov > 0 and observation_cov > 0):
        raise InputError(
            f"Kalman covariances must be > 0 (got transition {transition_cov}, observation "
            f"{observation_cov}); use strength=0 to disable smoothing"
        )
    if seq.ndim not in (1, 2):
        raise InputError(f"kalman_smooth expects a (T,) or (T,n) sequence, got shape {tuple(seq.shape)}")
    if strength == 0 or seq.shape[0] <= 1:
        return seq.clone()
    y = seq.detach().to(device="cpu", dtype=torch.float64)
    y2 = y.reshape(y.shape[0], -1)
    steps = y2.shape[0]
    q = transition_cov / strength**2
    gains, rts = _variance_sequences(steps, q, observation_cov, INITIAL_COV)
    k = torch.from_numpy(gains)
    j = torch.from_numpy(rts)
    # forward filter: m_0 = y_0 (prior mean is y_0), m_t = (1-k_t) m_{t-1} + k_t y_t
    filt = torch.empty_like(y2)
    filt[0] = y2[0]
    filt[1:] = _linear_recurrence(1.0 - k[1:], k[1:, None] * y2[1:], y2[0])
    # backward RTS pass: s_{T-1} = m_{T-1}, s_t = j_t s_{t+1} + (1-j_t) m_t, run on reversed time
    rev_coef = j.flip(0)
    rev_drive = ((1.0 - j)[:, None] * filt[:-1]).flip(0)
    smooth = torch.empty_like(y2)
    smooth[-1] = filt[-1]
    smooth[:-1] = _linear_recurrence(rev_coef, rev_drive, filt[-1]).flip(0)
    return smooth.reshape(seq.shape).to(device=seq.device, dtype=seq.dtype)

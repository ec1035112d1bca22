"""One-step updates of the reverse SDE shared by several samplers: each returns ``(mean, std)``.

``t_cur > t_next`` are ``(B,)`` times; the caller adds ``std · z``. ``y = x − μ`` throughout.

Where the SDE's coefficients are infinite at a step's start (rectified flow at t = 1: α = 0,
f = −∞, g² = ∞) the Euler-type steps do not exist; they take the exact Gaussian posterior step
there instead (``posterior``: x_next ~ N(α_next x̂₀, σ_next²) from the prior, DDIM's and the flow's
first step in distribution).
"""
from __future__ import annotations

import math

import torch

from ..tensors import bcast


def to_y(x, mu):
    """``y = x − μ`` (μ = None: no shift)."""
    return x if mu is None else x - mu


def to_x(y, mu):
    """``x = y + μ``."""
    return y if mu is None else y + mu


def singular_at_start(sde) -> bool:
    """Whether ``f`` is infinite at ``t_max`` (a host-side check on a float: no device sync)."""
    return not math.isfinite(float(sde.f(float(sde.t_max))))


def _posterior_where_singular(sde, x, t_cur, t_next, pred, mu, mean, std):
    """``(mean, std)`` with the posterior step's in the samples whose ``t_cur`` is a singular point."""
    if not singular_at_start(sde):
        return mean, std
    singular = bcast((~torch.isfinite(sde.f(t_cur))).double(), x) != 0
    post_mean, post_std = posterior(sde, x, t_cur, t_next, pred, mu)
    return torch.where(singular, post_mean, mean), torch.where(singular, post_std, std)


def euler_maruyama(sde, x, t_cur, t_next, pred, mu):
    """``x − [f (x − μ) − g² s] Δ`` and ``g sqrt(Δ)``."""
    dt = t_cur - t_next
    mean = x - sde.reverse_drift(x, t_cur, pred.score, mu) * bcast(dt, x)
    std = bcast(torch.sqrt(sde.g2(t_cur) * dt), x)
    return _posterior_where_singular(sde, x, t_cur, t_next, pred, mu, mean, std)


def reverse_diffusion(sde, x, t_cur, t_next, pred, mu, discretization: str = "exact"):
    """Song et al.'s reverse-diffusion predictor ``x − f_i + G_i² s``, noise ``G_i``.

    ``"exact"`` uses the SDE's exact forward transition ``y_cur = a y_next + G z`` (DDPM's step on a
    DDPM table, SMLD's on VE at its σ table: ``ReverseDiffusion``'s docstring says where score_sde
    differs); ``"euler"`` uses ``f_i = f(t)(x − μ)Δ``, ``G_i² = g² Δ`` (SGMSE's step).
    """
    if discretization == "exact":
        a, G2 = sde.transition(t_next, t_cur)
        f_i = bcast(a - 1, x) * to_y(x, mu)
    else:
        dt = t_cur - t_next
        f_i = bcast(sde.f(t_cur) * dt, x) * to_y(x, mu)
        G2 = sde.g2(t_cur) * dt
        mean, std = x - f_i + bcast(G2, x) * pred.score, bcast(torch.sqrt(G2), x)
        return _posterior_where_singular(sde, x, t_cur, t_next, pred, mu, mean, std)
    return x - f_i + bcast(G2, x) * pred.score, bcast(torch.sqrt(G2), x)


def posterior(sde, x, t_cur, t_next, pred, mu, variance: str = "posterior"):
    """Gaussian posterior ``q(x_next | x_cur, x̂_0)`` of the forward process, x̂₀ = the data prediction.

    Mean ``(α_n G²/σ_c²) ŷ_0 + (a σ_n²/σ_c²) y_c``; variance ``σ_n² G²/σ_c²`` (``"posterior"``: DDPM's
    β̃, SMLD's, IR-SDE's) or ``G²`` (``"forward"``: DDPM's β, score_sde's VP ancestral sampling).
    """
    a, G2 = sde.transition(t_next, t_cur)
    var_c, var_n = sde.sigma(t_cur) ** 2, sde.sigma(t_next) ** 2
    y0 = to_y(pred.data, mu)
    mean = bcast(sde.alpha(t_next) * G2 / var_c, x) * y0 + bcast(a * var_n / var_c, x) * to_y(x, mu)
    var = var_n * G2 / var_c if variance == "posterior" else G2
    return to_x(mean, mu), bcast(torch.sqrt(var), x)


def langevin(x, score, step, z):
    """One Langevin move ``x + ε s + sqrt(2ε) z`` with per-sample step ``ε`` (shape ``(B,)``)."""
    return x + bcast(step, x) * score + bcast(torch.sqrt(2 * step), x) * z

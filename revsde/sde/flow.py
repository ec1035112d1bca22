"""Rectified flow (flow matching: SD3, Flux, Wan, Sana, …) as a linear SDE: ``x_t = (1 − t) x_0 + t ε``."""
from __future__ import annotations

import torch

from ..tensors import as_time, bcast
from .base import LinearSDE, check_positive, check_t_min


class RectifiedFlow(LinearSDE):
    """``α_t = 1 − t``, ``σ_t = t``, μ = 0, t from ``t_min`` (default 0: the data) to 1 (the prior N(0, I)).

    Half log-SNR ``λ_t = log((1 − t)/t)``: −∞ at t = 1 and +∞ at t = 0, so a time shift (SD3's
    ``σ′ = sσ / (1 + (s − 1)σ)``) is the constant offset ``λ′ = λ − log s`` (``revsde.grids``).
    The forward SDE has ``f = −1/(1 − t)`` and ``g² = 2t/(1 − t)``, both infinite at t = 1: the PF-ODE
    drift is the flow ``α′ x̂₀ + σ′ ε̂ = ε̂ − x̂₀`` itself (finite everywhere, ``pf_ode_drift``), and the
    reverse SDE's Euler step from t = 1, which does not exist, is taken as the exact Gaussian
    posterior step there (``revsde.samplers.updates``). ``model_time(t) = time_scale · t``: 1 for
    networks trained on t itself, ``num_train_timesteps`` (1000) for diffusers' flow models, which see
    ``σ · 1000``.
    """

    prior_std = 1.0
    default_grid = "uniform_t"  # FlowMatchEuler's σ without shift; λ is infinite at both ends (no logsnr grid)

    def __init__(self, *, t_min: float = 0.0, time_scale: float = 1.0):
        self.t_max = 1.0
        self.t_min = check_t_min(t_min, self.t_max)
        self.time_scale = check_positive("time_scale", time_scale)

    def log_alpha(self, t):
        return torch.log1p(-as_time(t))

    def alpha(self, t):
        return 1 - as_time(t)

    def sigma(self, t):
        return as_time(t).clone()

    def f(self, t):
        return -1 / (1 - as_time(t))

    def g2(self, t):
        t = as_time(t)
        return 2 * t / (1 - t)

    def alpha_dot(self, t):
        return torch.full_like(as_time(t), -1.0)

    def sigma_dot(self, t):
        return torch.ones_like(as_time(t))

    def log_snr(self, t):
        t = as_time(t)
        return torch.log1p(-t) - torch.log(t)

    def t_from_log_snr(self, lam):
        return torch.sigmoid(-as_time(lam))

    def transition(self, t_from, t_to):
        a = self.alpha(t_to) / self.alpha(t_from)  # 0 into t = 1, where the prior forgets the data
        return a, self.sigma(t_to) ** 2 - (a * self.sigma(t_from)) ** 2

    def data_from_flow(self, y, u, t):
        """``x₀ = x − t u`` (one fused op)."""
        return torch.addcmul(y, bcast(self.sigma(t), y), u, value=-1)

    def noise_from_flow(self, y, u, t):
        """``ε = x + (1 − t) u``."""
        return torch.addcmul(y, bcast(self.alpha(t), y), u)

    def pf_ode_drift(self, x, t, pred, mu=None):
        """The probability-flow drift: the flow prediction (the network's own output for a flow model)."""
        return pred.flow

    def reverse_sde_drift(self, x, t, pred, mu=None):
        """``u + (σ′ − f σ) ε̂``: the same drift with ``g²/(2σ) = σ′ − fσ = 1/(1 − t)``, finite at t = 0
        (σ = 0, where the score −ε̂/σ is lost) and infinite only at t = 1."""
        return torch.addcmul(pred.flow, bcast(1 / (1 - as_time(t)), x), pred.noise)

    def model_time(self, t):
        return self.time_scale * as_time(t)

    def config(self):
        return {"t_min": self.t_min, "time_scale": self.time_scale}

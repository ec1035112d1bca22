"""OUVE: the Ornstein–Uhlenbeck SDE with variance-exploding diffusion of SGMSE / SGMSE+."""
from __future__ import annotations

import math

import torch

from ..tensors import as_time
from .base import LinearSDE, check_increasing, check_positive, check_t_min


class OUVESDE(LinearSDE):
    """``dx = θ (μ − x) dt + σ_min (σ_max/σ_min)^t sqrt(2 log(σ_max/σ_min)) dw`` (μ = the noisy speech).

    ``α_t = e^{−θt}``; ``σ_t² = σ_min² (e^{2Lt} − e^{−2θt}) L / (θ + L)`` with ``L = log(σ_max/σ_min)``.
    The prior is SGMSE's ``x_T = μ + σ(T) z``; ``t_min`` is SGMSE's ``t_eps`` (0.03). Pass ``t_min=0``
    to integrate to 0 as SGMSE's last "from eps to 0" step does.
    """

    def __init__(self, theta: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5, *,
                 t_min: float = 0.03):
        self.theta = check_positive("theta", theta)
        self.sigma_min, self.sigma_max = check_increasing("sigma_min", sigma_min, "sigma_max", sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.t_max = 1.0
        self.t_min = check_t_min(t_min, self.t_max)
        self.prior_std = float(self.sigma(self.t_max))

    def log_alpha(self, t):
        return -self.theta * as_time(t)

    def sigma(self, t):
        t, L = as_time(t), self._log_ratio
        # e^{2Lt} − e^{−2θt} = e^{2Lt} (1 − e^{−2(θ+L)t}), written with expm1 for small t
        var = self.sigma_min**2 * torch.exp(2 * L * t) * -torch.expm1(-2 * (self.theta + L) * t)
        return torch.sqrt(var * L / (self.theta + L))

    def f(self, t):
        return torch.full_like(as_time(t), -self.theta)

    def g2(self, t):
        return 2 * self._log_ratio * self.sigma_min**2 * torch.exp(2 * self._log_ratio * as_time(t))

    def config(self):
        return {"theta": self.theta, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "t_min": self.t_min}

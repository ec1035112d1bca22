"""Variance-exploding SDE (SMLD / NCSN, Song et al. 2021)."""
from __future__ import annotations

import math

import torch

from ..tensors import as_time
from .base import LinearSDE, check_increasing, check_t_min


class VESDE(LinearSDE):
    """``dx = σ(t) sqrt(2 log(σ_max/σ_min)) dw`` with ``σ(t) = σ_min (σ_max/σ_min)^t``; α ≡ 1.

    ``model_time(t)`` is σ(t), the conditioning of NCSN networks.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, t_min: float = 1e-5):
        self.sigma_min, self.sigma_max = check_increasing("sigma_min", sigma_min, "sigma_max", sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.t_max = 1.0
        self.t_min = check_t_min(t_min, self.t_max)
        self.prior_std = self.sigma_max

    def log_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return 2 * self._log_ratio * self.sigma(t) ** 2

    def t_from_log_snr(self, lam):
        return (-as_time(lam) - math.log(self.sigma_min)) / self._log_ratio

    def model_time(self, t):
        return self.sigma(t)

    def config(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}

"""Mean-reverting SDE of IR-SDE (Luo et al. 2023), exact at its discrete grid points."""
from __future__ import annotations

import math

import torch

from ..tensors import as_time
from .base import LinearSDE, check_positive, check_t_min, log_alpha_from_log_snr

SCHEDULES = ("cosine", "linear", "constant")
CONVENTIONS = ("mrs", "irsde")


def theta_schedule(schedule: str, steps: int) -> torch.Tensor:
    """IR-SDE's θ_0..θ_T (T + 1 values), computed in float64."""
    if schedule == "cosine":
        s, n = 0.008, steps + 2
        k = torch.arange(n + 1, dtype=torch.float64)
        ac = torch.cos(((k / n) + s) / (1 + s) * math.pi / 2) ** 2
        return 1 - (ac / ac[0])[1:-1]
    if schedule == "linear":
        scale = 1000 / (steps + 1)
        return torch.linspace(scale * 1e-4, scale * 0.02, steps + 1, dtype=torch.float64)
    if schedule == "constant":
        return torch.ones(steps + 1, dtype=torch.float64)
    raise ValueError(f"MRSDE schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")


class MRSDE(LinearSDE):
    """IR-SDE ``dx = θ_t (μ − x) dt + sqrt(2 λ² θ_t) dw``, λ = ``stationary_std``.

    Continuous time ``t ∈ [0, 1]`` maps to IR-SDE's index ``τ = t·steps`` (``model_time``); θ is
    piecewise constant (θ_k on ``(k−1, k]``), so ``θ̄`` is linear between indices and every quantity
    is exact at IR-SDE's grid points: ``α = exp(−θ̄(τ) dt)``, ``σ² = λ² (1 − α²)``, with
    ``dt = −log(eps)/θ̄_T`` so that ``α(1) = eps``.

    ``convention="mrs"`` (default) keeps θ_0 in ``θ̄`` as the MR Sampler code does, so σ(0) > 0 and
    λ(0) is finite; ``"irsde"`` subtracts it as IR-SDE training does (σ(0) = 0, so ``t_min``
    defaults to index 1 there).
    """

    def __init__(self, stationary_std: float = 50 / 255, schedule: str = "cosine", steps: int = 100,
                 eps: float = 0.005, *, convention: str = "mrs", t_min: float | None = None):
        self.stationary_std = check_positive("stationary_std", stationary_std)
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1 (got {steps!r})")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1) (got {eps!r})")
        if convention not in CONVENTIONS:
            raise ValueError(f"MRSDE convention must be one of {', '.join(CONVENTIONS)} (got {convention!r})")
        self.schedule, self.steps, self.eps, self.convention = schedule, steps, float(eps), convention
        self.thetas = theta_schedule(schedule, steps)
        cum = torch.cumsum(self.thetas, 0)
        self.thetas_cumsum = cum - self.thetas[0] if convention == "irsde" else cum
        self.dt = -math.log(eps) / float(self.thetas_cumsum[-1])
        self.t_max = 1.0
        self.t_min = check_t_min((1 / steps if convention == "irsde" else 0.0) if t_min is None else t_min,
                                 self.t_max)
        self.prior_std = self.velocity_scale = self.stationary_std

    @classmethod
    def from_irsde_config(cls, max_sigma: float, T: int = 100, schedule: str = "cosine",
                          eps: float = 0.005, **kwargs) -> "MRSDE":
        """From an IR-SDE yml ``sde:`` block: ``max_sigma ≥ 1`` is in 8-bit units (divided by 255)."""
        std = max_sigma / 255 if max_sigma >= 1 else max_sigma
        return cls(std, schedule, T, eps, **kwargs)

    def _segment(self, t):
        t = as_time(t)
        tau = t * self.steps
        k = (torch.ceil(tau) - 1).clamp(0, self.steps - 1).long()  # θ_{k+1} is active on (k, k+1]
        return tau, k

    def _theta_bar(self, t):
        tau, k = self._segment(t)
        cum = self.thetas_cumsum.to(tau.device)
        return cum[k] + (tau - k) * (cum[k + 1] - cum[k])

    def _theta(self, t):
        _, k = self._segment(t)
        return self.thetas.to(k.device)[k + 1]

    def log_alpha(self, t):
        return -self._theta_bar(t) * self.dt

    def sigma(self, t):
        return self.stationary_std * torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def f(self, t):
        return -self._theta(t) * self.dt * self.steps

    def g2(self, t):
        return 2 * self.stationary_std**2 * self._theta(t) * self.dt * self.steps

    def t_from_log_snr(self, lam):
        # (x − μ)/λ is VP: α² = sigmoid(2(λ_t + log λ)); then invert the piecewise-linear θ̄.
        theta_bar = -log_alpha_from_log_snr(as_time(lam) + math.log(self.stationary_std)) / self.dt
        cum = self.thetas_cumsum.to(theta_bar.device)
        k = (torch.searchsorted(cum, theta_bar.contiguous()) - 1).clamp(0, self.steps - 1)
        return (k + (theta_bar - cum[k]) / (cum[k + 1] - cum[k])) / self.steps

    def model_time(self, t):
        return as_time(t) * self.steps

    def config(self):
        return {"stationary_std": self.stationary_std, "schedule": self.schedule, "steps": self.steps,
                "eps": self.eps, "convention": self.convention, "t_min": self.t_min}

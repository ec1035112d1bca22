"""Mean-reverting SDE of IR-SDE (Luo et al. 2023), exact at its discrete grid points."""
from __future__ import annotations

import math

import torch

from ..tensors import as_time
from .base import LinearSDE, check_positive, check_t_min

SCHEDULES = ("cosine", "linear", "constant")
CONVENTIONS = ("mrs", "irsde")
INTERPOLATIONS = ("hermite", "linear")


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

    Continuous time ``t ∈ [0, 1]`` maps to IR-SDE's index ``τ = t·steps`` (``model_time``).
    ``α = exp(−θ̄(τ) dt)`` and ``σ² = λ² (1 − α²)`` are exact at IR-SDE's grid points, where
    ``θ̄_k = Σ_{i≤k} θ_i`` and ``dt = −log(eps)/θ̄_T`` (so ``α(1) = eps``). Between indices θ̄ follows
    a monotone C¹ cubic Hermite interpolation (knot slopes = mean of the neighbouring θ's), so θ, f
    and g² are continuous: a piecewise-constant θ would put a jump in the ODE's right-hand side at
    every index and cost the Runge–Kutta solvers their order.

    ``interpolation="linear"`` reads α, σ and λ between indices as the official code does (the MR
    Sampler's ``interpolate_fn``): each piecewise-linear in t on its own table, so λ ≠ log(α/σ) off
    the indices and f, g² jump at them (Runge–Kutta solvers lose their order there). Use it to
    reproduce the official samplers at non-integer times (the MR Sampler's linear-lambda grid is
    ``grids.logsnr`` on it); the two agree at every index and differ by up to ~3e-4 in the t of a
    10-step logsnr grid.

    ``convention="mrs"`` (default) keeps θ_0 in ``θ̄`` as the MR Sampler code does, so σ(0) > 0 and
    λ(0) is finite; ``"irsde"`` subtracts it as IR-SDE training does (σ(0) = 0, so ``t_min``
    defaults to index 1 there).
    """

    def __init__(self, stationary_std: float = 50 / 255, schedule: str = "cosine", steps: int = 100,
                 eps: float = 0.005, *, convention: str = "mrs", interpolation: str = "hermite",
                 t_min: float | None = None):
        self.stationary_std = check_positive("stationary_std", stationary_std)
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1 (got {steps!r})")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1) (got {eps!r})")
        if convention not in CONVENTIONS:
            raise ValueError(f"MRSDE convention must be one of {', '.join(CONVENTIONS)} (got {convention!r})")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"MRSDE interpolation must be one of {', '.join(INTERPOLATIONS)} (got {interpolation!r})")
        self.schedule, self.steps, self.eps, self.convention = schedule, steps, float(eps), convention
        self.interpolation = interpolation
        self.thetas = theta_schedule(schedule, steps)
        cum = torch.cumsum(self.thetas, 0)
        self.thetas_cumsum = cum - self.thetas[0] if convention == "irsde" else cum
        self.dt = -math.log(eps) / float(self.thetas_cumsum[-1])
        self._slopes = self._knot_slopes()
        # the official tables at the indices 0..steps (interpolation="linear" reads between them)
        self._alphas = torch.exp(-self.thetas_cumsum * self.dt)
        self._sigmas = self.stationary_std * torch.sqrt(-torch.expm1(-2 * self.thetas_cumsum * self.dt))
        self._lambdas = torch.log(self._alphas) - torch.log(self._sigmas)
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

    def _knot_slopes(self) -> torch.Tensor:
        """θ at the integer indices for the Hermite interpolation of θ̄: the mean of the two adjacent
        segments' θ, limited (Fritsch–Carlson) so θ stays positive inside every segment."""
        seg = self.thetas[1:]  # θ̄ rises by θ_k over (k−1, k]
        d = torch.empty(self.steps + 1, dtype=torch.float64)
        d[1:-1] = 0.5 * (seg[:-1] + seg[1:])
        # ends: the mean with θ_0 (which MRS counts before index 0), else linear extrapolation
        d[0] = 0.5 * (self.thetas[0] + seg[0]) if self.convention == "mrs" else 1.5 * seg[0] - 0.5 * seg[1]
        d[-1] = 1.5 * seg[-1] - 0.5 * seg[-2]
        d.clamp_(min=0)
        for k in range(self.steps):
            a, b = d[k] / seg[k], d[k + 1] / seg[k]
            r = torch.sqrt(a * a + b * b)
            if r > 3:
                d[k], d[k + 1] = 3 * a / r * seg[k], 3 * b / r * seg[k]
        return d

    def _segment(self, t):
        t = as_time(t)
        tau = t * self.steps
        k = torch.floor(tau).clamp(0, self.steps - 1).long()  # segment (k, k+1)
        return tau - k, k

    def _theta_bar(self, t):
        s, k = self._segment(t)
        cum, d = self.table_on("thetas_cumsum", s.device), self.table_on("_slopes", s.device)
        p0, p1, m0, m1 = cum[k], cum[k + 1], d[k], d[k + 1]
        s2, s3 = s * s, s * s * s
        return (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (3 * s2 - 2 * s3) * p1 + (s3 - s2) * m1

    def _theta(self, t):
        s, k = self._segment(t)
        cum, d = self.table_on("thetas_cumsum", s.device), self.table_on("_slopes", s.device)
        p0, p1, m0, m1 = cum[k], cum[k + 1], d[k], d[k + 1]
        return 6 * s * (1 - s) * (p1 - p0) + (3 * s * s - 4 * s + 1) * m0 + (3 * s * s - 2 * s) * m1

    def _lerp(self, name: str, t):
        """Table ``name`` read piecewise-linearly at ``t``: (value, slope in t)."""
        s, k = self._segment(t)
        table = self.table_on(name, s.device)
        slope = table[k + 1] - table[k]
        return table[k] + s * slope, slope * self.steps

    def log_alpha(self, t):
        if self.interpolation == "linear":
            return torch.log(self._lerp("_alphas", t)[0])
        return -self._theta_bar(t) * self.dt

    def alpha(self, t):
        return self._lerp("_alphas", t)[0] if self.interpolation == "linear" else super().alpha(t)

    def sigma(self, t):
        if self.interpolation == "linear":
            return self._lerp("_sigmas", t)[0]
        return self.stationary_std * torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def log_snr(self, t):
        if self.interpolation == "hermite":
            return super().log_snr(t)
        lam = self._lerp("_lambdas", t)[0]
        if self.convention == "irsde":  # λ_0 = +∞: the first segment from the interpolated α and σ
            lam = torch.where(self._segment(t)[1] == 0, super().log_snr(t), lam)
        return lam

    def f(self, t):
        if self.interpolation == "linear":
            alpha, slope = self._lerp("_alphas", t)
            return slope / alpha
        return -self._theta(t) * self.dt * self.steps

    def g2(self, t):
        if self.interpolation == "linear":  # dσ²/dt − 2 f σ²
            sigma, slope = self._lerp("_sigmas", t)
            return 2 * sigma * slope - 2 * self.f(t) * sigma**2
        return 2 * self.stationary_std**2 * self._theta(t) * self.dt * self.steps

    def model_time(self, t):
        return as_time(t) * self.steps

    def config(self):
        return {"stationary_std": self.stationary_std, "schedule": self.schedule, "steps": self.steps,
                "eps": self.eps, "convention": self.convention, "interpolation": self.interpolation,
                "t_min": self.t_min}

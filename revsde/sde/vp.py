"""Variance-preserving SDEs: linear-β VP, cosine VP, discrete DDPM tables, and sub-VP (Song et al. 2021)."""
from __future__ import annotations

import math

import torch

from ..tensors import as_time
from .base import LinearSDE, check_increasing, check_positive, check_t_min, log_alpha_from_log_snr, vp_sigma


class VPSDE(LinearSDE):
    """VP SDE ``dx = −½ β(t) x dt + sqrt(β(t)) dw`` with linear ``β(t) = β_min + t (β_max − β_min)``.

    ``α_t = exp(−¼ t² (β_max − β_min) − ½ t β_min)``, ``σ_t² = 1 − α_t²``. Alternative schedules:
    ``VPSDE.cosine()`` and ``VPSDE.from_alphas_cumprod(table)`` (a DDPM training table).
    """

    prior_std = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3):
        self.beta_min, self.beta_max = check_increasing("beta_min", beta_min, "beta_max", beta_max)
        self.t_max = 1.0
        self.t_min = check_t_min(t_min, self.t_max)

    @classmethod
    def cosine(cls, s: float = 0.008, *, t_min: float = 1e-3, t_max: float = 0.9946) -> "CosineVPSDE":
        """Improved-DDPM cosine schedule in continuous time (``t_max`` < 1 keeps λ finite, as DPM-Solver)."""
        return CosineVPSDE(s, t_min=t_min, t_max=t_max)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod) -> "DiscreteVPSDE":
        """A discrete DDPM table ``ᾱ_0..ᾱ_{N−1}``, interpolated linearly in log-SNR between points."""
        return DiscreteVPSDE(alphas_cumprod)

    def _int_beta(self, t):
        return 0.5 * t**2 * (self.beta_max - self.beta_min) + t * self.beta_min

    def log_alpha(self, t):
        return -0.5 * self._int_beta(as_time(t))

    def sigma(self, t):
        return vp_sigma(self.log_alpha(t))

    def f(self, t):
        t = as_time(t)
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def g2(self, t):
        return -2 * self.f(t)

    def t_from_log_snr(self, lam):
        # ∫β = softplus(−2λ); solve the quadratic ½ Δβ t² + β_min t = ∫β for t ≥ 0.
        int_beta = torch.nn.functional.softplus(-2 * as_time(lam))
        d = self.beta_max - self.beta_min
        return 2 * int_beta / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * int_beta))

    def config(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class CosineVPSDE(VPSDE):
    """VP SDE with ``α_t = cos(π/2 · (t + s)/(1 + s)) / cos(π/2 · s/(1 + s))`` (Nichol & Dhariwal)."""

    def __init__(self, s: float = 0.008, *, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s = check_positive("s", s)
        if not 0 < t_max < 1:
            raise ValueError(f"t_max of the cosine schedule must lie in (0, 1) (got {t_max})")
        self.t_max = float(t_max)
        self.t_min = check_t_min(t_min, self.t_max)
        self._log_alpha_0 = math.log(math.cos(math.pi / 2 * s / (1 + s)))

    def _phase(self, t):
        return math.pi / 2 * (as_time(t) + self.s) / (1 + self.s)

    def log_alpha(self, t):
        return torch.log(torch.cos(self._phase(t))) - self._log_alpha_0

    def f(self, t):
        return -torch.tan(self._phase(t)) * math.pi / (2 * (1 + self.s))

    def t_from_log_snr(self, lam):
        log_alpha = log_alpha_from_log_snr(as_time(lam)) + self._log_alpha_0
        return 2 * (1 + self.s) / math.pi * torch.arccos(torch.exp(log_alpha)) - self.s

    def config(self):
        return {"s": self.s, "t_min": self.t_min, "t_max": self.t_max}


class DiscreteVPSDE(VPSDE):
    """A DDPM table ``ᾱ_i`` (i = 0..N−1) as a continuous VP SDE.

    Time ``t = i / (N − 1)`` so every table point is a grid point; ``λ_t`` is linear in ``t`` between
    points, which makes ``α``, ``σ``, ``f`` and ``g²`` exact functions of t (``f = σ² dλ/dt``,
    ``g² = −2 σ² dλ/dt``). ``model_time(t)`` is the DDPM index ``t (N − 1)``.

    ``zero_snr``: the last value stands for ᾱ = 0 (a zero-terminal-SNR table, Lin et al. 2024, whose
    last ᾱ diffusers replaces by 2⁻²⁴ to keep σ finite), so sampling starts there, at diffusers' σ.
    Points before it whose ᾱ is not above it (a linear table's last three) lie beyond that start: their
    λ is interpolated linearly in the index between the last point above the end and the end, so λ
    still decreases strictly. ``alphas_cumprod`` keeps the table as given.
    """

    def __init__(self, alphas_cumprod, *, zero_snr: bool = False):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must hold at least 2 values, each in (0, 1)")
        body = ac[:-1] if zero_snr else ac
        if not bool((body[1:] < body[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing" + (
                " before its zero-SNR end" if zero_snr else " (the last value of a zero-terminal-SNR table, "
                "diffusers' 2^-24, may lie above the ones before it with zero_snr=True)"))
        lam = 0.5 * (torch.log(ac) - torch.log1p(-ac))
        if zero_snr:
            lam = _beyond_zero_snr_start_interpolated(lam)
        self.alphas_cumprod = ac
        self.num_train_timesteps = ac.numel()
        self._lam = lam
        self.t_min, self.t_max = 0.0, 1.0

    @classmethod
    def from_betas(cls, betas) -> "DiscreteVPSDE":
        return cls(torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0))

    @classmethod
    def from_schedule(cls, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                      beta_schedule: str = "linear", trained_betas=None,
                      rescale_betas_zero_snr: bool = False) -> "DiscreteVPSDE":
        """The table a diffusers scheduler config describes, computed as diffusers computes it (float32
        betas and cumulative product), so both integrate the same schedule."""
        return cls(ddpm_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                       rescale_betas_zero_snr).double(), zero_snr=rescale_betas_zero_snr)

    def _segment(self, t):
        """Index position, segment k (points k, k+1) and the table on ``t``'s device."""
        t = as_time(t)
        lam = self.table_on("_lam", t.device)
        pos = t * (self.num_train_timesteps - 1)
        k = (torch.ceil(pos) - 1).clamp(0, self.num_train_timesteps - 2).long()
        return pos, k, lam

    def log_snr(self, t):
        pos, k, lam = self._segment(t)
        return lam[k] + (pos - k) * (lam[k + 1] - lam[k])

    def log_alpha(self, t):
        return log_alpha_from_log_snr(self.log_snr(t))

    def sigma(self, t):
        return torch.sqrt(torch.sigmoid(-2 * self.log_snr(t)))

    def _dlam_dt(self, t):
        _, k, lam = self._segment(t)
        return (lam[k + 1] - lam[k]) * (self.num_train_timesteps - 1)

    def f(self, t):
        return torch.sigmoid(-2 * self.log_snr(t)) * self._dlam_dt(t)

    def t_from_log_snr(self, lam_query):
        lam_query = as_time(lam_query)
        neg = -self.table_on("_lam", lam_query.device)  # increasing
        k = (torch.searchsorted(neg, -lam_query.contiguous()) - 1).clamp(0, self.num_train_timesteps - 2)
        pos = k + (-lam_query - neg[k]) / (neg[k + 1] - neg[k])
        return pos / (self.num_train_timesteps - 1)

    def model_time(self, t):
        return as_time(t) * (self.num_train_timesteps - 1)

    def config(self):
        return {"num_train_timesteps": self.num_train_timesteps}


def _beyond_zero_snr_start_interpolated(lam: torch.Tensor) -> torch.Tensor:
    """``lam`` with the points before the last whose λ is not above the last one's replaced by λ linear in
    the index from the last point above it to the end."""
    n = lam.numel()
    at_or_below = (lam[:-1] <= lam[-1]).nonzero().flatten()
    if at_or_below.numel() == 0:
        return lam
    first = int(at_or_below[0])
    if first == 0:
        raise ValueError("alphas_cumprod with zero_snr=True: every value lies at or below the last one, the "
                         "zero-SNR end (the table must decrease towards it)")
    lam = lam.clone()
    weight = torch.arange(1, n - first, dtype=lam.dtype) / (n - first)
    lam[first:-1] = lam[first - 1] + weight * (lam[-1] - lam[first - 1])
    return lam


class SubVPSDE(VPSDE):
    """sub-VP SDE: ``dx = −½ β x dt + sqrt(β (1 − e^{−2∫β})) dw``; ``σ_t = 1 − α_t²`` (no square root)."""

    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))

    def g2(self, t):
        return -2 * self.f(t) * -torch.expm1(4 * self.log_alpha(t))

    def t_from_log_snr(self, lam):
        # α / (1 − α²) = e^λ  ⇒  α = (sqrt(1 + 4e^{2λ}) − 1) / (2 e^λ); then the VP quadratic.
        e = torch.exp(as_time(lam))
        alpha = 2 * e / (1 + torch.sqrt(1 + 4 * e**2))
        int_beta = -2 * torch.log(alpha)
        d = self.beta_max - self.beta_min
        return 2 * int_beta / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * int_beta))


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                        beta_schedule: str = "linear", trained_betas=None,
                        rescale_betas_zero_snr: bool = False) -> torch.Tensor:
    """``ᾱ_0..ᾱ_{N−1}`` (float32) of a DDPM training schedule named as in diffusers' scheduler configs.

    linear: β linear in [β_start, β_end]; scaled_linear (Stable Diffusion): sqrt β linear;
    squaredcos_cap_v2: Nichol & Dhariwal's cosine ᾱ with β ≤ 0.999; ``trained_betas`` overrides all.
    ``rescale_betas_zero_snr`` (Lin et al. 2024) shifts sqrt ᾱ to reach 0 at the end; the last value
    is then set to 2⁻²⁴ as diffusers does, keeping λ finite.
    """
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2 (got {num_train_timesteps!r})")
    n = num_train_timesteps
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32).flatten()
        if betas.numel() != n:
            raise ValueError(f"trained_betas holds {betas.numel()} values for num_train_timesteps={n}")
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        alpha_bar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                             dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)} or trained_betas given "
                         f"(got {beta_schedule!r})")
    if rescale_betas_zero_snr:
        root = torch.cumprod(1 - betas, 0).sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))
        alphas_bar = root**2
        betas = 1 - torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    if rescale_betas_zero_snr:
        alphas_cumprod[-1] = 2**-24
    return alphas_cumprod

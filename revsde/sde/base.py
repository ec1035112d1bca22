"""The linear SDE contract: everything follows from α_t and σ_t (DESIGN §1)."""
from __future__ import annotations

import abc
import math
import numbers

import torch

from ..tensors import as_time, bcast
from .cached import served_from_grid


class LinearSDE(abc.ABC):
    """A diffusion SDE with affine marginal ``x_t = α_t x_0 + (1 − α_t) μ + σ_t ε``.

    Forward SDE ``dx = f(t)(x − μ) dt + g(t) dw`` with ``f = d log α_t/dt`` and
    ``g² = dσ_t²/dt − 2 f σ_t²``. Time runs forward from ``t_min`` (data) to ``t_max`` (prior).
    Every method takes a float or a ``(B,)`` tensor of times and returns float64 tensors
    of the same shape.

    Subclasses define ``log_alpha``, ``sigma``, ``f`` and ``g2`` in closed form (the tests check
    the identities between them numerically); ``t_from_log_snr`` has a generic bisection here.
    """

    t_min: float
    t_max: float
    prior_std: float
    #: the grid ``revsde.sample`` uses when none is given, before the sampler's default (None: the sampler's)
    default_grid: str | None = None
    #: the ``c`` of the velocity ``v = (α c ε − σ (x_0 − μ) / c) / sqrt(α² + σ²/c²)`` (``Prediction``)
    velocity_scale: float = 1.0

    # --- the schedule, defined by each SDE -----------------------------------------------------
    @abc.abstractmethod
    def log_alpha(self, t) -> torch.Tensor:
        """``log α_t``."""

    @abc.abstractmethod
    def sigma(self, t) -> torch.Tensor:
        """``σ_t``, the std of ``x_t`` given ``x_0``."""

    @abc.abstractmethod
    def f(self, t) -> torch.Tensor:
        """Drift coefficient ``f(t) = d log α_t / dt``."""

    @abc.abstractmethod
    def g2(self, t) -> torch.Tensor:
        """Squared diffusion ``g(t)² = dσ_t²/dt − 2 f(t) σ_t²``."""

    # --- derived quantities --------------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def alpha_dot(self, t) -> torch.Tensor:
        """``dα_t/dt = f α``."""
        return self.f(t) * self.alpha(t)

    def sigma_dot(self, t) -> torch.Tensor:
        """``dσ_t/dt = (g² + 2 f σ²) / (2σ)``."""
        sigma = self.sigma(t)
        return (self.g2(t) + 2 * self.f(t) * sigma**2) / (2 * sigma)

    def log_snr(self, t) -> torch.Tensor:
        """Half log-SNR ``λ_t = log(α_t / σ_t)``, decreasing in t."""
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def t_from_log_snr(self, lam) -> torch.Tensor:
        """Inverse of ``log_snr`` on ``[0, t_max]`` (bisection to float64 precision)."""
        lam = as_time(lam)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, float(self.t_max))
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # λ decreases with t: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("model_time")
        if own is not None and not getattr(own, "served_from_grid", False):
            cls.model_time = served_from_grid(own)  # a grid row's model time comes from the run's cache

    @served_from_grid
    def model_time(self, t) -> torch.Tensor:
        """The time value the network was trained with (the continuous time by default). At a row of a
        grid a run is on (``GridCoefficients``), the value comes from that grid's table."""
        return as_time(t)

    def transition(self, t_from, t_to) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward transition ``y_to = a · y_from + G z`` (``y = x − μ``, ``t_from < t_to``): ``(a, G²)``."""
        a = torch.exp(self.log_alpha(t_to) - self.log_alpha(t_from))
        return a, self.sigma(t_to) ** 2 - (a * self.sigma(t_from)) ** 2

    # --- tensors --------------------------------------------------------------------------------
    def marginal(self, x0: torch.Tensor, t, mu: torch.Tensor | None = None):
        """Mean and std of ``x_t`` given ``x_0`` (std broadcastable against ``x0``)."""
        t = _per_sample(t, x0)
        alpha = bcast(self.alpha(t), x0)
        mean = alpha * x0 if mu is None else alpha * x0 + (1 - alpha) * mu
        return mean, bcast(self.sigma(t), x0)

    def perturb(self, x0: torch.Tensor, t, noise: torch.Tensor, mu: torch.Tensor | None = None):
        """``x_t = α_t x_0 + (1 − α_t) μ + σ_t · noise``."""
        mean, std = self.marginal(x0, t, mu)
        return mean + std * noise

    def prior_sample(self, shape, mu: torch.Tensor | None = None, generator=None,
                     dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """``μ + prior_std · z`` (``z`` complex-normal with E|z|² = 1 for complex dtypes).

        ``generator`` is one ``torch.Generator`` or a list of them, one per sample.
        """
        from ..noise import randn

        if dtype is None:
            dtype = mu.dtype if mu is not None else torch.get_default_dtype()
        if device is None and mu is not None:
            device = mu.device
        z = randn(tuple(shape), generator, dtype=dtype, device=device)
        x = self.prior_std * z
        return x if mu is None else x + mu

    def reverse_drift(self, x: torch.Tensor, t, score: torch.Tensor, mu: torch.Tensor | None = None,
                      ode: bool = False) -> torch.Tensor:
        """Drift of the reverse SDE ``f (x − μ) − g² ∇log p_t`` or of the PF-ODE (``½ g²``)."""
        t = _per_sample(t, x)
        y = x if mu is None else x - mu
        g2 = self.g2(t) * (0.5 if ode else 1.0)
        return bcast(self.f(t), x) * y - bcast(g2, x) * score

    def reverse_sde_drift(self, x: torch.Tensor, t, pred, mu: torch.Tensor | None = None) -> torch.Tensor:
        """The reverse SDE's drift ``f (x − μ) − g² ∇log p_t`` at a ``Prediction`` (SDEs where σ reaches 0
        with g² = 0 write it without the score, which is lost there)."""
        return self.reverse_drift(x, t, pred.score, mu)

    def data_from_flow(self, y: torch.Tensor, u: torch.Tensor, t) -> torch.Tensor:
        """``y₀ = (σ′ y − σ u) / D`` from the flow ``u = α′ y₀ + σ′ ε`` at ``y = α y₀ + σ ε``
        (``D = α σ′ − σ α′ > 0``; finite where α = 0)."""
        a, s, a_dot, s_dot = (bcast(v(t), y) for v in (self.alpha, self.sigma, self.alpha_dot, self.sigma_dot))
        return (s_dot * y - s * u) / (a * s_dot - s * a_dot)

    def noise_from_flow(self, y: torch.Tensor, u: torch.Tensor, t) -> torch.Tensor:
        """``ε = (α u − α′ y) / D`` from the flow ``u`` at ``y``."""
        a, s, a_dot, s_dot = (bcast(v(t), y) for v in (self.alpha, self.sigma, self.alpha_dot, self.sigma_dot))
        return (a * u - a_dot * y) / (a * s_dot - s * a_dot)

    def pf_ode_drift(self, x: torch.Tensor, t, pred, mu: torch.Tensor | None = None) -> torch.Tensor:
        """The PF-ODE drift at a ``Prediction``: ``f (x − μ) − ½ g² ∇log p_t``, equal to the flow
        ``α′ x̂₀ + σ′ ε̂`` (SDEs whose f or g² is infinite somewhere compute it as that)."""
        return self.reverse_drift(x, t, pred.score, mu, ode=True)

    def pf_ode_coefficients(self, t):
        """The PF-ODE drift as ``c_y (x − μ) + c_ε ε̂`` with ``(c_y, c_ε) = (f, ½ g²/σ)`` at times ``t`` (the
        score ``−ε̂/σ`` folded in), for samplers that plan their steps on a grid; None for an SDE that
        computes its drift otherwise (its own ``pf_ode_drift``: rectified flow's is the flow itself)."""
        if getattr(self.pf_ode_drift, "__func__", None) is not LinearSDE.pf_ode_drift:
            return None
        return self.f(t), 0.5 * self.g2(t) / self.sigma(t)

    def table_on(self, name: str, device) -> torch.Tensor:
        """The tensor attribute ``name`` on ``device``, copied there once: a host→device copy at every
        call would synchronise the host with the device."""
        cache = self.__dict__.setdefault("_tables_on", {})
        key = (name, torch.device(device))
        if key not in cache:
            cache[key] = getattr(self, name).to(device)
        return cache[key]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({fields})"

    def config(self) -> dict:
        """Constructor arguments (for reprs and checkpoints)."""
        return {}


def _per_sample(t, x: torch.Tensor) -> torch.Tensor:
    t = as_time(t, like=x)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def vp_sigma(log_alpha: torch.Tensor) -> torch.Tensor:
    """``σ = sqrt(1 − α²)`` without cancellation near α = 1."""
    return torch.sqrt(-torch.expm1(2 * log_alpha))


def log_alpha_from_log_snr(lam: torch.Tensor) -> torch.Tensor:
    """For VP-type schedules (α² + σ² = 1): ``log α = −½ softplus(−2λ)``."""
    return -0.5 * torch.nn.functional.softplus(-2 * lam)


def check_positive(name: str, value: float) -> float:
    # numbers.Real admits numpy scalars (np.float32 is not a float subclass); bool is not a number here
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number (got {value!r})")
    return float(value)


def check_increasing(lo_name: str, lo: float, hi_name: str, hi: float) -> tuple[float, float]:
    lo, hi = check_positive(lo_name, lo), check_positive(hi_name, hi)
    if hi <= lo:
        raise ValueError(f"{hi_name} must exceed {lo_name} (got {lo_name}={lo}, {hi_name}={hi})")
    return lo, hi


def check_t_min(t_min: float, t_max: float) -> float:
    if not (0 <= t_min < t_max):
        raise ValueError(f"t_min must lie in [0, t_max={t_max}) (got {t_min!r})")
    return float(t_min)

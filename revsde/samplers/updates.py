"""Updates of the reverse SDE and PF-ODE shared by several samplers: each step returns ``(mean, std)``.

A sampler plans its steps once per grid (``euler_plan``, ``posterior_plan``, ``affine``: every step's
coefficients computed together, vectorised over the ``(N+1, B)`` grid on its device, as ``(N, B, 1, …)``
rows in the state's dtype), then step ``i`` reads row ``i`` (``euler_step``, ``posterior_step``,
``affine_step``): no time function is evaluated inside the loop. ``euler_maruyama`` and ``posterior``
take one step at given ``(B,)`` times ``t_cur > t_next`` for callers outside a run. The caller adds
``std · z``. ``y = x − μ`` throughout.

Where the SDE's coefficients are infinite at a step's start (rectified flow at t = 1: α = 0,
f = −∞, g² = ∞) the Euler-type steps do not exist; they take the exact Gaussian posterior step
there instead (``posterior``: x_next ~ N(α_next x̂₀, σ_next²) from the prior, DDIM's and the flow's
first step in distribution).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..tensors import bcast, real_dtype


def to_y(x, mu):
    """``y = x − μ`` (μ = None: no shift)."""
    return x if mu is None else x - mu


def to_x(y, mu):
    """``x = y + μ``."""
    return y if mu is None else y + mu


def singular_at_start(sde) -> bool:
    """Whether ``f`` is infinite at ``t_max`` (a host-side check on a float: no device sync)."""
    return not math.isfinite(float(sde.f(float(sde.t_max))))


class Affine(NamedTuple):
    """A step linear in the state and one network output, on every step of a grid (rows ``[i]``: step ``i``,
    each ``(B, 1, …)`` in the state's dtype): ``x + shift (x − μ) + out · q`` (``keep = 1 + shift``), where
    ``q`` is the score (``score_step``) or the noise ε̂ (``affine_step``)."""

    keep: tuple[torch.Tensor, ...]
    shift: tuple[torch.Tensor, ...]
    out: tuple[torch.Tensor, ...]


def affine(shift: torch.Tensor, out: torch.Tensor, x: torch.Tensor) -> Affine:
    """An ``Affine`` plan from ``(N, B)`` tables of ``shift`` and ``out``."""
    return Affine(*per_step(x, 1 + shift, shift, out))


def affine_step(plan: Affine, i: int, x, eps, mu):
    """Row ``i`` of ``plan`` applied to ε̂: ``x + shift (x − μ) + out · ε̂`` in two tensor ops (three with μ)."""
    if mu is None:
        return torch.addcmul(plan.keep[i] * x, plan.out[i], eps)
    return torch.addcmul(torch.addcmul(x, plan.shift[i], x - mu), plan.out[i], eps)


def score_step(plan: Affine, i: int, x, score, mu):
    """Row ``i`` of ``plan`` applied to the score, each product rounded on its own as score_sde's predictors
    round them (``x − f_i + G² s``: its samplers' results are reproduced to the bit where the coefficients
    agree)."""
    if mu is None:
        return plan.keep[i] * x + plan.out[i] * score
    return x + plan.shift[i] * (x - mu) + plan.out[i] * score


class EulerPlan(NamedTuple):
    """An Euler-type predictor on every step of a grid: its mean (``Affine`` on the score, or on ε̂ where
    ``on_noise``) and noise ``std``. ``singular``: the steps some of whose samples start where ``f`` is
    infinite (rectified flow at t = 1), which take the posterior step there (``posterior_rows``, ``post``)."""

    mean: Affine
    on_noise: bool
    std: tuple[torch.Tensor, ...]
    singular: list[bool]
    posterior_rows: tuple[torch.Tensor, ...] | None
    post: PosteriorPlan | None


class PosteriorPlan(NamedTuple):
    """The posterior step's coefficients on every step: ``mean = μ + data · ŷ₀ + keep · (x − μ)``, ``std``."""

    data: tuple[torch.Tensor, ...]
    keep: tuple[torch.Tensor, ...]
    std: tuple[torch.Tensor, ...]


def per_step(x: torch.Tensor, *tables: torch.Tensor, dtype=None) -> list[tuple[torch.Tensor, ...]]:
    """``(N, B)`` (or ``(N,)``) tables as rows of shape ``(B, 1, …)`` in ``x``'s real dtype (or ``dtype``) on its
    device: row ``i`` broadcasts against the state, as ``bcast`` of the step's coefficient would. The rows
    are made once (a tuple), so a step's look-up is no tensor operation."""
    dtype = real_dtype(x.dtype) if dtype is None else dtype
    shape = (-1,) + (1,) * (x.ndim - 1)
    return [c.to(device=x.device, dtype=dtype).reshape((c.shape[0],) + shape).unbind(0) for c in tables]


def euler_plan(sde, grid, x, discretization: str = "euler") -> EulerPlan:
    """Euler–Maruyama's (= the reverse-diffusion predictor's ``"euler"``) coefficients on the whole grid
    at once: ``x − [f (x − μ) − g² s] Δ``, noise ``g sqrt(Δ)``, taken on ε̂ (``s = −ε̂/σ``: the factor
    ``−g²Δ/σ`` planned, and no score made at each step); with ``"exact"`` the reverse-diffusion predictor's
    ``x − (a − 1)(x − μ) + G² s``, noise ``G`` (``a``, ``G²`` the SDE's forward transition), on the score
    and rounded as score_sde's (``score_step``)."""
    t_cur, t_next = grid[:-1], grid[1:]
    if discretization == "exact":
        a, G2 = _transitions(sde, grid)
        shift, var = 1 - a, G2
        mean = affine(shift, var, x)
    else:
        dt = t_cur - t_next
        shift, var = -grid_table(sde, "f", grid)[:-1] * dt, grid_table(sde, "g2", grid)[:-1] * dt
        mean = affine(shift, -var / grid_table(sde, "sigma", grid)[:-1], x)
    (std,) = per_step(x, torch.sqrt(var))
    singular, rows, post = [False] * (grid.shape[0] - 1), None, None
    if discretization != "exact" and singular_at_start(sde):
        infinite = ~torch.isfinite(grid_table(sde, "f", grid)[:-1])
        if infinite.ndim == 1:
            infinite = infinite[:, None]
        singular = infinite.any(1).tolist()  # one host read per run
        if any(singular):
            rows, post = per_step(x, infinite, dtype=torch.bool)[0], posterior_plan(sde, grid, x)
    return EulerPlan(mean, discretization != "exact", std, singular, rows, post)


def euler_step(plan: EulerPlan, i: int, x, pred, mu):
    """Step ``i`` of an ``euler_plan``: ``(mean, std)``."""
    if plan.on_noise:
        mean = affine_step(plan.mean, i, x, pred.noise, mu)
    else:
        mean = score_step(plan.mean, i, x, pred.score, mu)
    std = plan.std[i]
    if plan.singular[i]:  # the Euler step does not exist from f = ∞: the posterior step in those samples
        post_mean, post_std = posterior_step(plan.post, i, x, pred, mu)
        rows = plan.posterior_rows[i]
        mean, std = torch.where(rows, post_mean, mean), torch.where(rows, post_std, std)
    return mean, std


def posterior_plan(sde, grid, x, variance: str = "posterior") -> PosteriorPlan:
    """``posterior``'s coefficients on the whole grid at once."""
    a, G2 = _transitions(sde, grid)
    sigma2 = grid_table(sde, "sigma", grid) ** 2
    var_c, var_n = sigma2[:-1], sigma2[1:]
    var = var_n * G2 / var_c if variance == "posterior" else G2
    data, keep, std = per_step(x, grid_table(sde, "alpha", grid)[1:] * G2 / var_c, a * var_n / var_c, torch.sqrt(var))
    return PosteriorPlan(data, keep, std)


def posterior_step(plan: PosteriorPlan, i: int, x, pred, mu):
    """Step ``i`` of a ``posterior_plan``: ``(mean, std)``."""
    mean = torch.addcmul(plan.data[i] * to_y(pred.data, mu), plan.keep[i], to_y(x, mu))
    return to_x(mean, mu), plan.std[i]


def grid_table(sde, name: str, grid):
    """``name`` on every row of ``grid`` (the cached table when ``sde`` is the run's ``GridCoefficients``)."""
    return getattr(sde, name)(grid)


def _transitions(sde, grid):
    """``(a, G²)`` of every step's forward transition ``t_next → t_cur``, as ``sde.transition`` gives them
    (through the SDE's own method, so an SDE that defines it differently is followed)."""
    return sde.transition(grid[1:], grid[:-1])


# --- one step at given times (outside a planned run: a training loss, torchsde's first step) ---------------
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

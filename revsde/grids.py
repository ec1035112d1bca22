"""Time grids: decreasing float64 tensors from ``t_max`` to ``t_min`` with ``steps + 1`` points.

``get(name)(sde, steps, **options)`` builds one; ``resolve`` also accepts an explicit ``(N+1,)`` or
``(N+1, B)`` tensor (per-sample times) or a callable ``grid(sde, steps)`` such as ``Shifted(3.0)``,
and validates it.

Time shifts (flow matching): SD3's static shift ``σ′ = sσ / (1 + (s − 1)σ)`` and Flux's dynamic shift
(``time_shift``, with μ from the image's sequence length: ``flux_mu``) are, on rectified flow
(σ = t), offsets of the half log-SNR: ``λ′ = e·λ − log s`` (``e`` the ``exponent``, 1 but for
``time_shift``'s third argument). ``Shifted`` applies that to any base grid of any SDE.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .grid_files import fingerprint, load_grid, save_grid  # noqa: F401  (revsde.grids.save_grid, …)
from .tensors import bcast


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (got {steps!r})")
    return steps


def uniform_t(sde, steps: int) -> torch.Tensor:
    """Uniform in t (score_sde, SGMSE)."""
    return torch.linspace(sde.t_max, sde.t_min, _check_steps(steps) + 1, dtype=torch.float64)


def _finite_log_snr_ends(sde, name: str) -> torch.Tensor:
    ends = sde.log_snr(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))
    if not bool(torch.isfinite(ends).all()):
        raise ValueError(f"the {name} grid needs a finite log-SNR at {'both ends' if name == 'logsnr' else 't_max'}, but {sde!r} has "
                         f"λ(t_max) = {float(ends[0])}, λ(t_min) = {float(ends[1])}; give the SDE a t_min > 0 "
                         "with σ(t_min) > 0 and α(t_max) > 0, or use another grid (uniform_t, Shifted for "
                         "rectified flow)")
    return ends


def logsnr(sde, steps: int) -> torch.Tensor:
    """Uniform in half log-SNR λ (DPM-Solver's "logSNR" / MR Sampler's "linear-lambda")."""
    ends = _finite_log_snr_ends(sde, "logsnr")
    lam = torch.linspace(float(ends[0]), float(ends[1]), _check_steps(steps) + 1, dtype=torch.float64)
    return _pin_ends(sde.t_from_log_snr(lam), sde)


def karras(sde, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al.'s power law in ``σ̃ = σ/α`` (``σ̃_k^{1/ρ}`` uniform)."""
    if rho <= 0:
        raise ValueError(f"karras grid needs rho > 0 (got {rho})")
    ends = -sde.log_snr(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))  # log σ̃
    if not bool(torch.isfinite(ends[0])):
        _finite_log_snr_ends(sde, "karras")  # σ̃ = σ/α is infinite at t_max: refused with the same message
    ramp = torch.linspace(0, 1, _check_steps(steps) + 1, dtype=torch.float64)
    hi, lo = torch.exp(ends[0] / rho), torch.exp(ends[1] / rho)
    log_sigma = rho * torch.log(hi + ramp * (lo - hi))
    return _pin_ends(sde.t_from_log_snr(-log_sigma), sde)


def quadratic(sde, steps: int) -> torch.Tensor:
    """Quadratic in t, dense near the data (DDIM's "quad" skip)."""
    ramp = torch.linspace(1, 0, _check_steps(steps) + 1, dtype=torch.float64)
    return _pin_ends(sde.t_min + (sde.t_max - sde.t_min) * ramp**2, sde)


def _pin_ends(t: torch.Tensor, sde) -> torch.Tensor:
    """Round-trip through λ (or ``t_min + (t_max − t_min)``) can move the ends by an ulp; put them back exactly."""
    t = t.clone()
    t[0], t[-1] = sde.t_max, sde.t_min
    return t


GRIDS: dict[str, Callable] = {"uniform_t": uniform_t, "logsnr": logsnr, "karras": karras, "quadratic": quadratic}
TIME_SHIFT_TYPES = ("exponential", "linear")


def static_shift(sigma, shift: float):
    """SD3's shift of flow-matching σ (or t): ``shift · σ / (1 + (shift − 1) σ)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def time_shift(sigma, mu: float, time_shift_type: str = "exponential", exponent: float = 1.0):
    """diffusers' ``time_shift`` (Flux's dynamic shifting): ``e^μ / (e^μ + (1/σ − 1)^exponent)``, or
    ``μ / (μ + (1/σ − 1)^exponent)`` for ``time_shift_type="linear"``. Exact at σ = 0 and 1."""
    if time_shift_type not in TIME_SHIFT_TYPES:
        raise ValueError(f"time_shift_type must be one of {', '.join(TIME_SHIFT_TYPES)} (got {time_shift_type!r})")
    scale = math.exp(mu) if time_shift_type == "exponential" else mu
    return scale / (scale + (1 / sigma - 1) ** exponent)


def flux_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """Flux's μ for an image of ``image_seq_len`` latent tokens (diffusers' ``calculate_shift``): linear
    from ``base_shift`` at ``base_seq_len`` to ``max_shift`` at ``max_seq_len``."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


class Shifted:
    """A base grid (default ``uniform_t``) with a flow-matching time shift, as a grid for ``resolve`` and
    ``revsde.sample(grid=Shifted(3.0))``.

    ``shift``: SD3's static shift s (``λ′ = λ − log s``). ``mu``: Flux's dynamic shift (``time_shift``
    with ``time_shift_type`` and ``exponent``: ``λ′ = e·λ − μ``, or ``− log μ`` when linear). Give one.
    On rectified flow ``Shifted(s)`` is diffusers' FlowMatch σ with ``shift=s`` on the same base; on any
    other SDE it moves the same base grid by the same λ offset.
    """

    def __init__(self, shift: float | None = None, *, mu: float | None = None,
                 time_shift_type: str = "exponential", exponent: float = 1.0, base: str = "uniform_t"):
        if (shift is None) == (mu is None):
            raise ValueError("Shifted needs exactly one of shift (SD3's static shift) or mu (Flux's dynamic shift)")
        if shift is not None and not (isinstance(shift, (int, float)) and not isinstance(shift, bool)
                                      and math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a positive number (got {shift!r})")
        if time_shift_type not in TIME_SHIFT_TYPES:
            raise ValueError(f"time_shift_type must be one of {', '.join(TIME_SHIFT_TYPES)} (got {time_shift_type!r})")
        if mu is not None and time_shift_type == "linear" and not mu > 0:
            raise ValueError(f"a linear time shift needs mu > 0 (got {mu!r})")
        if not (isinstance(exponent, (int, float)) and exponent > 0):
            raise ValueError(f"exponent must be a positive number (got {exponent!r})")
        get(base)
        self.shift, self.mu, self.time_shift_type, self.exponent, self.base = shift, mu, time_shift_type, exponent, base

    def offset(self) -> float:
        """``log s`` of the equivalent static shift."""
        if self.shift is not None:
            return math.log(self.shift)
        return self.mu if self.time_shift_type == "exponential" else math.log(self.mu)

    def __call__(self, sde, steps: int) -> torch.Tensor:
        t = get(self.base)(sde, steps)
        exponent = 1.0 if self.shift is not None else float(self.exponent)
        return _pin_ends(sde.t_from_log_snr(exponent * sde.log_snr(t) - self.offset()), sde)

    def __repr__(self) -> str:
        if self.shift is not None:
            return f"Shifted({self.shift!r}, base={self.base!r})"
        return (f"Shifted(mu={self.mu!r}, time_shift_type={self.time_shift_type!r}, exponent={self.exponent!r}, "
                f"base={self.base!r})")


# --- noise levels (Denoising MCMC's classifier levels) ---------------------------------------------

def noise_levels(sde, count: int) -> torch.Tensor:
    """``count`` level times from ``t_max`` down, uniform in λ, the last one λ-step above ``t_min`` (float64)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of noise levels must be an integer >= 1 (got {count!r})")
    return logsnr(sde, count)[:-1].clone()


def check_levels(levels, sde=None) -> torch.Tensor:
    """``levels`` as a float64 ``(K,)`` tensor, strictly decreasing, inside ``(t_min, t_max]`` of ``sde``."""
    t = torch.as_tensor(levels, dtype=torch.float64).flatten().cpu()
    if t.numel() < 1:
        raise ValueError("levels must hold at least one time")
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ValueError("levels must be strictly decreasing times (index 0 the noisiest)")
    if sde is not None:
        tol = 1e-9 * max(1.0, sde.t_max)
        if bool((t <= sde.t_min).any() or (t > sde.t_max + tol).any()):
            raise ValueError(f"levels must lie in (t_min, t_max] = ({sde.t_min}, {sde.t_max}] "
                             f"(got {float(t.min())} .. {float(t.max())})")
    return t


# --- grids made from a grid (Denoising MCMC's init pass and its chains' integration) ---------------------

def resample_grid(sde, grid, steps: int) -> torch.Tensor:
    """``grid`` (``(N+1,)`` or ``(N+1, B)``) with ``steps`` intervals instead of N, between the same ends and
    with the same spacing profile: its half log-SNR λ (t if λ is not finite) interpolated linearly in the
    step index, so a ``logsnr`` grid becomes the ``logsnr`` grid of ``steps`` steps."""
    n = grid.shape[0] - 1
    lam = sde.log_snr(grid)
    finite = bool(torch.isfinite(lam).all())
    value = lam if finite else grid
    pos = torch.linspace(0, n, steps + 1, dtype=torch.float64, device=grid.device)
    lo = pos.floor().long().clamp(max=n - 1)  # a grid has N ≥ 1 intervals; the last point uses lo = N − 1
    w = bcast((pos - lo).to(value.dtype), value[lo])
    out = value[lo] + w * (value[lo + 1] - value[lo])
    t = (sde.t_from_log_snr(out) if finite else out).to(grid.dtype).clone()
    t[0], t[-1] = grid[0], grid[-1]
    return t.contiguous()


def integration_grid(sde, grid, t_start) -> torch.Tensor:
    """The ``(N+1, B)`` grid moved to start at ``t_start`` (``(B,)``) and end where ``grid`` ends, each
    point at the same fraction of the λ-range as in ``grid`` (of the t-range if λ is not finite):
    a ``logsnr`` grid becomes the ``logsnr`` grid from each chain's level."""
    t_end = grid[-1]
    lam, lam_start = sde.log_snr(grid), sde.log_snr(t_start)
    if bool(torch.isfinite(lam).all() and torch.isfinite(lam_start).all()):
        frac = (lam - lam[0]) / (lam[-1] - lam[0])
        t = sde.t_from_log_snr(lam_start + frac * (lam[-1] - lam_start))
    else:
        frac = (grid - grid[0]) / (grid[-1] - grid[0])
        t = t_start + frac * (t_end - t_start)
    t = t.to(grid.dtype).clone()
    t[0], t[-1] = t_start, t_end
    return t.contiguous()


def sgmse_grid(steps: int, t_eps: float, t_max: float = 1.0) -> torch.Tensor:
    """SGMSE+'s time points: ``linspace(t_max, t_eps, steps)`` then 0 (``steps`` intervals; its last step,
    from ``t_eps`` to 0, is SGMSE's "from eps to 0"; one step goes from ``t_max`` straight to 0, as SGMSE's
    loop does with N = 1)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"SGMSE's grid needs at least 1 step (got {steps!r})")
    return torch.cat([torch.linspace(t_max, t_eps, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


def get(name: str) -> Callable:
    try:
        return GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown grid {name!r}; valid grids: {', '.join(GRIDS)}") from None


def available() -> list[str]:
    return list(GRIDS)


def resolve(grid, sde, steps: int | None, batch: int, device=None) -> torch.Tensor:
    """A validated ``(N+1, B)`` float64 grid from a name or an explicit tensor."""
    if isinstance(grid, str) or (callable(grid) and not torch.is_tensor(grid)):
        if steps is None:
            raise ValueError(f"grid {grid!r} needs steps (an integer >= 1)")
        if isinstance(grid, str):
            t = get(grid)(sde, steps)
        else:
            t = torch.as_tensor(grid(sde, steps), dtype=torch.float64)
            if t.ndim != 1 or t.shape[0] != steps + 1 or not bool((t[1:] < t[:-1]).all()):
                raise ValueError(f"grid {grid!r} gave times that are not {steps + 1} strictly decreasing values")
    else:
        t = torch.as_tensor(grid, dtype=torch.float64)
        if t.ndim not in (1, 2) or t.shape[0] < 2:
            raise ValueError(f"an explicit grid must have shape (N+1,) or (N+1, B) with N >= 1 (got {tuple(t.shape)})")
        if t.ndim == 2 and t.shape[1] != batch:
            raise ValueError(f"a per-sample grid must have shape (N+1, {batch}) for this batch (got {tuple(t.shape)})")
        if steps is not None and steps != t.shape[0] - 1:
            raise ValueError(f"steps={steps} disagrees with the explicit grid's {t.shape[0] - 1} intervals; "
                             "give one or the other")
        tol = 1e-9 * max(1.0, sde.t_max)
        if bool((t < sde.t_min - tol).any() or (t > sde.t_max + tol).any()):
            raise ValueError(f"grid times must lie in [t_min, t_max] = [{sde.t_min}, {sde.t_max}] "
                             f"(got min {float(t.min())}, max {float(t.max())})")
        if not bool((t[1:] < t[:-1]).all()):
            raise ValueError("grid times must be strictly decreasing (from the prior towards the data)")
        t = t.clamp(sde.t_min, sde.t_max)
    if t.ndim == 1:
        t = t[:, None].expand(-1, batch)
    return t.to(device).contiguous()


# --- grids fitted to a model (revsde.grid_fit: LD3) and grid files (revsde.grid_files) ---------------
# The fit drives samplers, and a sampler (dmcmc) imports this module: grid_fit is imported here when
# called and takes ``resolve`` as an argument, so the imports run one way (grids -> grid_fit).

def fit_grid(model, shape, *, sampler, steps: int, **kwargs):
    """``revsde.grid_fit.fit``: the fitted grid with its losses and settings (a ``GridFit``)."""
    from .grid_fit import fit

    return fit(model, shape, sampler=sampler, steps=steps, resolve=resolve, **kwargs)


def optimize(model, shape, *, sampler, steps: int, n: int = 64, seed: int = 0, mu=None, cond=None,
             **options) -> torch.Tensor:
    """A decreasing ``(steps + 1,)`` float64 grid for ``sampler`` fitted to ``model`` from its own samples
    (LD3: ``n`` seeded prior draws, the few-step outputs matched to a high-NFE teacher's by Adam on the
    grid's increments). ``shape`` is one sample's shape; ``options`` the sampler's options and the fit's
    (``start``, ``teacher``, ``teacher_steps``, ``iterations``, ``lr``, ``progress``, ``dtype``,
    ``device``): see ``revsde.grid_fit.fit``. ODE samplers only; deterministic by ``seed``."""
    return fit_grid(model, shape, sampler=sampler, steps=steps, n=n, seed=seed, mu=mu, cond=cond, **options).grid

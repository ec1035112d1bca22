"""Time grids: decreasing float64 tensors from ``t_max`` to ``t_min`` with ``steps + 1`` points.

``get(name)(sde, steps, **options)`` builds one; ``resolve`` also accepts an explicit ``(N+1,)`` or
``(N+1, B)`` tensor (per-sample times) and validates it.
"""
from __future__ import annotations

from typing import Callable

import torch


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (got {steps!r})")
    return steps


def uniform_t(sde, steps: int) -> torch.Tensor:
    """Uniform in t (score_sde, SGMSE)."""
    return torch.linspace(sde.t_max, sde.t_min, _check_steps(steps) + 1, dtype=torch.float64)


def logsnr(sde, steps: int) -> torch.Tensor:
    """Uniform in half log-SNR λ (DPM-Solver's "logSNR" / MR Sampler's "linear-lambda")."""
    ends = sde.log_snr(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))
    if not bool(torch.isfinite(ends).all()):
        raise ValueError(f"the logsnr grid needs a finite log-SNR at both ends, but {sde!r} has "
                         f"λ(t_max) = {float(ends[0])}, λ(t_min) = {float(ends[1])}; give the SDE a t_min > 0 "
                         "with σ(t_min) > 0, or use another grid")
    lam = torch.linspace(float(ends[0]), float(ends[1]), _check_steps(steps) + 1, dtype=torch.float64)
    return _pin_ends(sde.t_from_log_snr(lam), sde)


def karras(sde, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al.'s power law in ``σ̃ = σ/α`` (``σ̃_k^{1/ρ}`` uniform)."""
    if rho <= 0:
        raise ValueError(f"karras grid needs rho > 0 (got {rho})")
    ends = -sde.log_snr(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))  # log σ̃
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


def get(name: str) -> Callable:
    try:
        return GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown grid {name!r}; valid grids: {', '.join(GRIDS)}") from None


def available() -> list[str]:
    return list(GRIDS)


def resolve(grid, sde, steps: int | None, batch: int, device=None) -> torch.Tensor:
    """A validated ``(N+1, B)`` float64 grid from a name or an explicit tensor."""
    if isinstance(grid, str):
        if steps is None:
            raise ValueError(f"grid {grid!r} needs steps (an integer >= 1)")
        t = get(grid)(sde, steps)
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

"""Restart sampling (Xu et al., "Restart Sampling for Improving Generative Processes", NeurIPS 2023)
around any ODE sampler.

The ODE sampler runs down the grid; on reaching the restart interval's low end ``t_lo`` it goes back
``restarts`` times: a forward jump of the SDE's own transition from ``t_lo`` to ``t_hi``,
``y_hi = (α_hi/α_lo) y_lo + sqrt(σ_hi² − (α_hi/α_lo)² σ_lo²) z`` on ``y = x − μ`` (exact for every linear
SDE), then the ODE sampler again from ``t_hi`` to ``t_lo`` in ``restart_steps`` steps uniform in λ; then
it goes on down the grid. The forward noise contracts the errors accumulated so far (the paper's
Theorem 1), while the ODE keeps its few-step accuracy between the jumps. The interval is given in
EDM's noise scale ``σ/α`` (``restart_sigmas``, Xu et al.'s [t_min, t_max]; their CIFAR-10 setting
[0.06, 0.30] by default); ``t_lo`` is the first grid time at or below its low end.
"""
from __future__ import annotations

import torch

from ..tensors import bcast
from .base import Query, Sampler, Step
from .registry import get as get_sampler
from .updates import to_x, to_y


class Restart(Sampler):
    """Restart: ``integrator`` (an ODE sampler's name, default ``ode_heun``, with ``integrator_options``)
    down the grid, and ``restarts`` times back from ``t_lo`` to ``t_hi`` (``restart_sigmas`` in σ/α) by
    the SDE's forward transition, each pass integrated in ``restart_steps`` steps (a multistep
    integrator starts its history afresh on each pass and after the last; ``restarts=0`` is the
    integrator alone). SDE (the jumps draw noise), no strong order; NFE = (steps + restarts ·
    restart_steps) · the integrator's evaluations per step."""

    name = "restart"
    kind = "sde"
    order = None
    evals_per_step = None  # the restart passes add evaluations to the grid's
    default_grid = "logsnr"

    def __init__(self, *, integrator: str = "ode_heun", integrator_options: dict | None = None,
                 restart_sigmas: tuple = (0.06, 0.30), restarts: int = 2, restart_steps: int = 3):
        self.integrator, self.integrator_options = integrator, dict(integrator_options or {})
        inner = get_sampler(integrator, **self.integrator_options)
        if inner.kind != "ode" or inner.adaptive or inner.evals_per_step is None:
            raise ValueError(f"sampler 'restart' wraps a fixed-step ODE sampler (ode_euler, ode_heun, ode_rk4, "
                             f"mrs, unipc, ...); {integrator!r} is not one")
        self._inner = inner
        lo, hi = (tuple(restart_sigmas) + (None, None))[:2] if isinstance(restart_sigmas, (tuple, list)) else (None, None)
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi):
            raise ValueError(f"sampler 'restart' takes restart_sigmas = (low, high) in σ/α with 0 < low < high "
                             f"(got {restart_sigmas!r})")
        self.restart_sigmas = (float(lo), float(hi))
        for key, value, least in (("restarts", restarts, 0), ("restart_steps", restart_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"sampler 'restart' takes {key} as an integer >= {least} (got {value!r})")
        self.restarts, self.restart_steps = restarts, restart_steps

    def query_times(self, grid):
        raise ValueError("sampler 'restart' goes back up the grid between its evaluations; a step-by-step "
                         "driver (a diffusers scheduler) cannot follow it: use revsde.sample")

    def run(self, sde, grid, x, mu, noise):
        counter = [0]
        if self.restarts == 0:  # the integrator alone, in one run (a multistep history is not cut)
            return (yield from self._relay(sde, grid, x, mu, noise, counter))
        lam = sde.log_snr(grid)  # (N+1, B)
        lam_lo, lam_hi = -torch.log(torch.tensor(self.restart_sigmas, dtype=lam.dtype, device=lam.device))
        reached = torch.nonzero((lam >= lam_lo).all(1)).flatten()
        if reached.numel() == 0 or int(reached[0]) == 0:
            raise ValueError(f"sampler 'restart': the grid never enters the restart interval σ/α in "
                             f"{list(self.restart_sigmas)} after its start (σ/α from {float((-lam[0]).exp().max()):.3g} "
                             f"to {float((-lam[-1]).exp().min()):.3g}); choose restart_sigmas inside that range")
        j = int(reached[0])  # t_lo = grid[j]
        t_lo = grid[j]
        t_hi = sde.t_from_log_snr(torch.maximum(lam_hi.expand_as(lam[0]), lam[0]))
        x = yield from self._relay(sde, grid[: j + 1], x, mu, noise, counter)
        a_lo, s_lo, a_hi, s_hi = sde.alpha(t_lo), sde.sigma(t_lo), sde.alpha(t_hi), sde.sigma(t_hi)
        ratio = a_hi / a_lo
        jump = torch.sqrt(torch.clamp(s_hi**2 - ratio**2 * s_lo**2, min=0))
        weights = torch.linspace(0, 1, self.restart_steps + 1, dtype=lam.dtype, device=lam.device)[:, None]
        lam_pass = sde.log_snr(t_hi)[None] * (1 - weights) + lam[j][None] * weights
        pass_grid = sde.t_from_log_snr(lam_pass)
        pass_grid[0], pass_grid[-1] = t_hi, t_lo
        for _ in range(self.restarts):
            y = bcast(ratio, x) * to_y(x, mu) + bcast(jump, x) * noise(t_lo, t_hi)
            x = yield from self._relay(sde, pass_grid, to_x(y, mu), mu, noise, counter)
        if j < grid.shape[0] - 1:
            x = yield from self._relay(sde, grid[j:], x, mu, noise, counter)
        return x

    def _relay(self, sde, grid, x, mu, noise, counter):
        """The integrator from ``grid[0]`` to ``grid[-1]``: its queries go up as they are, its steps are
        numbered on across the passes."""
        run = self._inner.run(sde, grid, x, mu, noise)
        message = None
        try:
            while True:
                request = run.send(message)
                if isinstance(request, Query):
                    message = yield request
                else:
                    yield Step(counter[0], request.x, request.t, request.denoised)
                    counter[0] += 1
                    message = None
        except StopIteration as stop:
            return stop.value

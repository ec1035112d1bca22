"""Fixed-step Runge–Kutta solvers of the probability-flow ODE ``dx/dt = f (x − μ) − ½ g² ∇log p_t``."""
from __future__ import annotations

import torch

from ..sde.cached import GridCoefficients
from .base import Query, Sampler, Step
from .updates import affine, affine_step, per_step, to_x, to_y


def ode_velocity(sde, x, t, pred, mu):
    return sde.pf_ode_drift(x, t, pred, mu)


def drift_tables(sde, times):
    """The PF-ODE drift's ``(f, ½ g²/σ)`` at ``times`` (``(N+1, B)``), or None where the SDE computes its drift
    otherwise (``LinearSDE.pf_ode_coefficients``): then each step calls ``pf_ode_drift``."""
    return sde.pf_ode_coefficients(times)


class _ODESampler(Sampler):
    kind = "ode"
    default_grid = "logsnr"

    def __init__(self):
        pass


class ODEEuler(_ODESampler):
    """Euler's method on the PF-ODE (Song et al. 2021). Order 1; 1 evaluation per step; ODE."""

    name = "ode_euler"
    order = 1.0
    evals_per_step = 1

    def run(self, sde, grid, x, mu, noise):
        h = grid[1:] - grid[:-1]
        drift = drift_tables(sde, grid)
        # x + h (f (x − μ) + ½ g²/σ ε̂), planned for every step; or x + h · pf_ode_drift
        step = affine(h * drift[0][:-1], h * drift[1][:-1], x) if drift is not None else per_step(x, h)[0]
        times = grid.unbind(0)  # each row's view made once
        for i in range(grid.shape[0] - 1):
            t_cur, t_next = times[i], times[i + 1]
            pred = yield Query(x, t_cur)
            if drift is not None:
                x = affine_step(step, i, x, pred.noise, mu)
            else:
                x = torch.addcmul(x, step[i], ode_velocity(sde, x, t_cur, pred, mu))
            yield Step(i, x, t_next, pred)
        return x


class ODEHeun(_ODESampler):
    """Heun's method (explicit trapezoid) on the PF-ODE, as Karras et al.'s Alg. 1 without churn.

    Order 2; 2 evaluations per step; ODE.
    """

    name = "ode_heun"
    order = 2.0
    evals_per_step = 2

    def query_times(self, grid):
        return torch.stack([grid[:-1], grid[1:]], 1).flatten(0, 1)

    def run(self, sde, grid, x, mu, noise):
        h = grid[1:] - grid[:-1]
        drift = drift_tables(sde, grid)
        if drift is None:
            return (yield from self._run_with_drift(sde, grid, x, mu, h))
        f, c = drift
        # Euler predictor x + h d(x); the corrector x + h/2 (d(x) + d(x_euler)) written with h d(x) = x_euler − x:
        # ½ (x + x_euler) + h/2 d(x_euler), linear in x, x_euler and the second ε̂.
        predictor = affine(h * f[:-1], h * c[:-1], x)
        keep, half_c = per_step(x, 0.5 + 0.5 * h * f[1:], 0.5 * h * c[1:])
        times = grid.unbind(0)  # each row's view made once
        for i in range(grid.shape[0] - 1):
            t_cur, t_next = times[i], times[i + 1]
            pred = yield Query(x, t_cur)
            x_euler = affine_step(predictor, i, x, pred.noise, mu)
            pred_next = yield Query(x_euler, t_next)
            y = torch.add(keep[i] * to_y(x_euler, mu), to_y(x, mu), alpha=0.5)
            x = to_x(torch.addcmul(y, half_c[i], pred_next.noise), mu)
            yield Step(i, x, t_next, pred_next)
        return x

    def _run_with_drift(self, sde, grid, x, mu, h):
        """Heun's steps on the SDE's own ``pf_ode_drift`` (an SDE that plans none)."""
        h, half_h = per_step(x, h, 0.5 * h)
        times = grid.unbind(0)  # each row's view made once
        for i in range(grid.shape[0] - 1):
            t_cur, t_next = times[i], times[i + 1]
            pred = yield Query(x, t_cur)
            d_cur = ode_velocity(sde, x, t_cur, pred, mu)
            # Euler predictor, then the trapezoidal correction.
            x_euler = torch.addcmul(x, h[i], d_cur)
            pred_next = yield Query(x_euler, t_next)
            x = torch.addcmul(x, half_h[i], d_cur + ode_velocity(sde, x_euler, t_next, pred_next, mu))
            yield Step(i, x, t_next, pred_next)
        return x


class ODERK4(_ODESampler):
    """The classical fourth-order Runge–Kutta method on the PF-ODE. Order 4; 4 evaluations per step; ODE."""

    name = "ode_rk4"
    order = 4.0
    evals_per_step = 4

    def query_times(self, grid):
        mid = 0.5 * (grid[:-1] + grid[1:])
        return torch.stack([grid[:-1], mid, mid, grid[1:]], 1).flatten(0, 1)

    def run(self, sde, grid, x, mu, noise):
        mids = 0.5 * (grid[:-1] + grid[1:])
        at_mid = GridCoefficients(sde, mids)  # the midpoints' coefficients, once for the grid
        mids = mids.unbind(0)
        h = grid[1:] - grid[:-1]
        h, half_h, sixth_h = per_step(x, h, 0.5 * h, h / 6)
        times = grid.unbind(0)  # each row's view made once
        for i in range(grid.shape[0] - 1):
            t_cur, t_mid, t_next = times[i], mids[i], times[i + 1]
            pred = yield Query(x, t_cur)
            k1 = ode_velocity(sde, x, t_cur, pred, mu)
            x2 = torch.addcmul(x, half_h[i], k1)
            k2 = ode_velocity(at_mid, x2, t_mid, (yield Query(x2, t_mid)), mu)
            x3 = torch.addcmul(x, half_h[i], k2)
            k3 = ode_velocity(at_mid, x3, t_mid, (yield Query(x3, t_mid)), mu)
            x4 = torch.addcmul(x, h[i], k3)
            pred = yield Query(x4, t_next)
            k4 = ode_velocity(sde, x4, t_next, pred, mu)
            x = torch.addcmul(x, sixth_h[i], k1 + 2 * (k2 + k3) + k4)
            yield Step(i, x, t_next, pred)
        return x

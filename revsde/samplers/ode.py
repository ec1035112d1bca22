"""Fixed-step Runge–Kutta solvers of the probability-flow ODE ``dx/dt = f (x − μ) − ½ g² ∇log p_t``."""
from __future__ import annotations

import torch

from ..tensors import bcast
from .base import Query, Sampler, Step


def ode_velocity(sde, x, t, pred, mu):
    return sde.pf_ode_drift(x, t, pred, mu)


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
        for i in range(grid.shape[0] - 1):
            t_cur, t_next = grid[i], grid[i + 1]
            pred = yield Query(x, t_cur)
            x = x + bcast(t_next - t_cur, x) * ode_velocity(sde, x, t_cur, pred, mu)
            yield Step(i, x, t_next, pred.data)
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
        for i in range(grid.shape[0] - 1):
            t_cur, t_next = grid[i], grid[i + 1]
            h = bcast(t_next - t_cur, x)
            pred = yield Query(x, t_cur)
            d_cur = ode_velocity(sde, x, t_cur, pred, mu)
            # Euler predictor, then the trapezoidal correction.
            x_euler = x + h * d_cur
            pred_next = yield Query(x_euler, t_next)
            x = x + h * 0.5 * (d_cur + ode_velocity(sde, x_euler, t_next, pred_next, mu))
            yield Step(i, x, t_next, pred_next.data)
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
        for i in range(grid.shape[0] - 1):
            t_cur, t_next = grid[i], grid[i + 1]
            t_mid = 0.5 * (t_cur + t_next)
            h = bcast(t_next - t_cur, x)
            pred = yield Query(x, t_cur)
            k1 = ode_velocity(sde, x, t_cur, pred, mu)
            x2 = x + 0.5 * h * k1
            k2 = ode_velocity(sde, x2, t_mid, (yield Query(x2, t_mid)), mu)
            x3 = x + 0.5 * h * k2
            k3 = ode_velocity(sde, x3, t_mid, (yield Query(x3, t_mid)), mu)
            x4 = x + h * k3
            pred = yield Query(x4, t_next)
            k4 = ode_velocity(sde, x4, t_next, pred, mu)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            yield Step(i, x, t_next, pred.data)
        return x

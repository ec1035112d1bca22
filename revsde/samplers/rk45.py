"""Adaptive Dormand–Prince 5(4) on the probability-flow ODE, written here so every evaluation is a
counted query and the only host synchronisation per step is the error norm."""
from __future__ import annotations

import torch

from ..tensors import bcast
from .base import Query, Sampler, SamplingError, Step, check_number
from .ode import ode_velocity

# Dormand & Prince (1980) tableau; the 7th stage is the next step's first (FSAL).
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# B5 − B4 (the embedded 4th-order weights, 7 stages; the last weight multiplies the FSAL stage)
E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


class ODERK45(Sampler):
    """Dormand–Prince RK5(4) with adaptive steps on the PF-ODE (score_sde's ``RK45`` sampler, written out).

    Integrates from ``grid[0]`` to ``grid[-1]`` (per sample) in the normalised time
    ``s ∈ [0, 1]``, ``t = t_0 + s (t_1 − t_0)``, so per-sample start times share one step size.
    Step control as SciPy's ``solve_ivp``: RMS norm of the error scaled by ``atol + rtol·|x|``,
    safety 0.9, factor in [0.2, 10], initial step by Hairer's rule (one extra evaluation).
    Order 5; 6 evaluations per accepted step (FSAL), adaptive; ODE.
    """

    name = "ode_rk45"
    kind = "ode"
    order = 5.0
    evals_per_step = None
    adaptive = True
    default_grid = "uniform_t"

    def __init__(self, *, rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 10_000):
        self.rtol = check_number(self.name, "rtol", rtol, minimum=0, strict=True)
        self.atol = check_number(self.name, "atol", atol, minimum=0, strict=True)
        self.max_steps = check_number(self.name, "max_steps", max_steps, minimum=1, integer=True)

    def _rms(self, v, scale) -> float:
        return float(torch.sqrt(torch.mean((v.abs() / scale) ** 2)))

    def run(self, sde, grid, x, mu, noise):
        t0, t1 = grid[0], grid[-1]
        span = t1 - t0  # negative: time runs towards the data

        def rhs(x, s, pred):
            return bcast(span, x) * ode_velocity(sde, x, t0 + s * span, pred, mu)

        def at(s):
            return t0 + s * span

        s = 0.0
        k1 = rhs(x, s, (yield Query(x, at(s))))
        # Initial step (Hairer, Nørsett & Wanner, II.4).
        scale = self.atol + self.rtol * x.abs()
        d0, d1 = self._rms(x, scale), self._rms(k1, scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, 1.0)
        x_probe = x + h0 * k1
        k_probe = rhs(x_probe, h0, (yield Query(x_probe, at(h0))))
        d2 = self._rms(k_probe - k1, scale) / h0
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
        h = min(100 * h0, h1, 1.0)

        accepted = 0
        for _ in range(self.max_steps):
            h = min(h, 1.0 - s)
            ks = [k1]
            for stage in range(1, 6):
                xs = x + h * sum(a * k for a, k in zip(A[stage], ks))
                ks.append(rhs(xs, s + C[stage] * h, (yield Query(xs, at(s + C[stage] * h)))))
            x_new = x + h * sum(b * k for b, k in zip(B5, ks) if b)
            pred_new = yield Query(x_new, at(s + h))
            k_new = rhs(x_new, s + h, pred_new)
            err = h * sum(e * k for e, k in zip(E, ks + [k_new]) if e)
            scale = self.atol + self.rtol * torch.maximum(x.abs(), x_new.abs())
            err_norm = self._rms(err, scale)
            if err_norm <= 1.0:
                s_new = 1.0 if s + h >= 1.0 - 1e-12 else s + h
                x, k1, s = x_new, k_new, s_new
                yield Step(accepted, x, at(s), pred_new.data)
                accepted += 1
                if s >= 1.0:
                    return x
                factor = 10.0 if err_norm == 0 else min(10.0, 0.9 * err_norm ** (-1 / 5))
            else:
                factor = max(0.2, 0.9 * err_norm ** (-1 / 5))
            h *= factor
        raise SamplingError(f"sampler 'ode_rk45' did not reach t = {float(t1[0])} within max_steps={self.max_steps} "
                           f"steps (rtol={self.rtol}, atol={self.atol}); loosen the tolerances or raise max_steps")

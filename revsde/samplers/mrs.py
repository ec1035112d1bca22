"""The MR Sampler (Li et al., ICLR 2025): semi-analytic multistep solvers of the PF-ODE and reverse SDE.

With ``y = x − μ`` every linear SDE is VP-type, so these are DPM-Solver / DPM-Solver++ /
SDE-DPM-Solver++ on y, with λ the half log-SNR and ``h = λ_next − λ_cur``. The linear part is
integrated exactly; only the network's output is Taylor-expanded (multistep: one evaluation per step).
Velocity prediction integrates ``dŷ/dφ = v̂`` exactly in the angle ``φ = atan(σ/(c α))`` of the
normalised state ``ŷ = y / (c r)`` (Adams–Bashforth on the velocity; ``Prediction`` defines c, r).
"""
from __future__ import annotations

import warnings

import torch

from ..tensors import bcast
from .base import Query, Sampler, Step, check_choice

PREDICTIONS = ("data", "noise", "velocity")


class MRSampler(Sampler):
    """MR Sampler: ``order`` 1–3 (ODE) or 1–2 (SDE, ``stochastic=True``); ``prediction`` data (default,
    stable at low NFE), noise, or velocity (ODE only). One evaluation per step; multistep with warm-up
    (step i uses order ≤ i + 1). ``lower_order_final`` (DPM-Solver++'s rule, on by default): with
    fewer than 15 steps the last step is first order and the one before at most second order.
    ``denoise_last`` returns the data prediction of the last evaluation instead of the last step
    (correct for every prediction type). ODE: global order = ``order``; SDE: a weak solver (its noise
    is an exact draw of the step's stochastic integral, not a Brownian increment), no strong order.
    """

    name = "mrs"
    evals_per_step = 1
    default_grid = "logsnr"

    def __init__(self, *, order: int = 2, prediction: str = "data", stochastic: bool = False,
                 lower_order_final: bool = True, denoise_last: bool = False):
        self.stochastic = check_choice(self.name, "stochastic", stochastic, (False, True))
        self.prediction = check_choice(self.name, "prediction", prediction, PREDICTIONS)
        valid_orders = (1, 2) if stochastic else (1, 2, 3)
        if order not in valid_orders or isinstance(order, bool):
            kind = "SDE (stochastic=True)" if stochastic else "ODE"
            raise ValueError(f"sampler 'mrs' supports order {', '.join(map(str, valid_orders))} for the {kind} "
                             f"(got {order!r})")
        if stochastic and prediction == "velocity":
            raise ValueError("sampler 'mrs' supports prediction 'data' or 'noise' with stochastic=True; "
                             "'velocity' is ODE-only")
        self.solver_order = order
        self.lower_order_final = check_choice(self.name, "lower_order_final", lower_order_final, (True, False))
        self.denoise_last = check_choice(self.name, "denoise_last", denoise_last, (False, True))

    def options(self):
        return {"order": self.solver_order, "prediction": self.prediction, "stochastic": self.stochastic,
                "lower_order_final": self.lower_order_final, "denoise_last": self.denoise_last}

    @property
    def kind(self):
        return "sde" if self.stochastic else "ode"

    @property
    def order(self):
        return None if self.stochastic else float(self.solver_order)

    def step_order(self, i: int, n: int) -> int:
        order = min(self.solver_order, i + 1)  # warm-up: not enough history yet
        if self.lower_order_final and n < 15:
            if i == n - 1:
                order = 1
            elif i == n - 2:
                order = min(order, 2)
        return order

    def run(self, sde, grid, x, mu, noise):
        n = grid.shape[0] - 1
        if self.stochastic and self.prediction == "noise" and n <= 10:
            warnings.warn(f"sampler 'mrs' with stochastic=True and prediction='noise' diverges at low NFE "
                          f"({n} steps): its coefficients grow like e^h. Use prediction='data'.", stacklevel=3)
        lam = sde.log_snr(grid)  # (N+1, B)
        history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (λ or φ, converted output), newest first
        for i in range(n):
            t_cur, t_next = grid[i], grid[i + 1]
            pred = yield Query(x, t_cur)
            if self.denoise_last and i == n - 1:
                x = pred.data
                yield Step(i, x, t_next, pred.data)
                return x
            order = self.step_order(i, n)
            if self.prediction == "velocity":
                x, history = self._velocity_step(sde, x, mu, pred, t_cur, t_next, history, order)
            else:
                q = pred.noise if self.prediction == "noise" else _minus(pred.data, mu)
                history = [(lam[i], q)] + history[:2]
                x = self._exponential_step(sde, x, mu, t_cur, t_next, lam[i], lam[i + 1], history, order, noise)
            yield Step(i, x, t_next, pred.data)
        return x

    # --- data / noise: exponential integrators (MR Sampler §5, DPM-Solver++) ----------------------
    def _exponential_step(self, sde, x, mu, t_cur, t_next, lam_s, lam_t, history, order, noise):
        h = lam_t - lam_s
        a_s, a_t = sde.alpha(t_cur), sde.alpha(t_next)
        s_s, s_t = sde.sigma(t_cur), sde.sigma(t_next)
        q0 = history[0][1]
        b = lambda c: bcast(c, x)
        # Divided differences D1 (≈ h q'), D2 (≈ h² q''/2) from the multistep history.
        d1 = d2 = 0
        if order >= 2:
            r0 = (lam_s - history[1][0]) / h
            d1_0 = (q0 - history[1][1]) / b(r0)
            d1 = d1_0
            if order == 3:
                r1 = (history[1][0] - history[2][0]) / h
                d1_1 = (history[1][1] - history[2][1]) / b(r1)
                d1 = d1_0 + (d1_0 - d1_1) * b(r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / b(r0 + r1)
        y = _minus(x, mu)
        if self.prediction == "data":
            if self.stochastic:
                # y_t = (σ_t/σ_s) e^{−h} y_s + α_t (1 − e^{−2h}) q0 + α_t (1 − (1 − e^{−2h})/(2h)) D1 + σ_t sqrt(1 − e^{−2h}) z
                em = -torch.expm1(-2 * h)
                y = b(s_t / s_s * torch.exp(-h)) * y + b(a_t * em) * q0
                if order == 2:
                    y = y + b(a_t * (1 - em / (2 * h))) * d1
                y = y + b(s_t * torch.sqrt(em)) * noise(t_cur, t_next)
            else:
                phi1 = torch.expm1(-h)
                phi2 = phi1 / h + 1
                phi3 = phi2 / h - 0.5
                y = b(s_t / s_s) * y - b(a_t * phi1) * q0
                if order >= 2:
                    y = y + b(a_t * phi2) * d1
                if order == 3:
                    y = y - b(a_t * phi3) * d2
        else:  # noise prediction
            phi1 = torch.expm1(h)
            if self.stochastic:
                # y_t = (α_t/α_s) y_s − 2σ_t (e^h − 1) q0 − 2σ_t ((e^h − 1)/h − 1) D1 + σ_t sqrt(e^{2h} − 1) z
                y = b(a_t / a_s) * y - b(2 * s_t * phi1) * q0
                if order == 2:
                    y = y - b(2 * s_t * (phi1 / h - 1)) * d1
                y = y + b(s_t * torch.sqrt(torch.expm1(2 * h))) * noise(t_cur, t_next)
            else:
                phi2 = phi1 / h - 1
                phi3 = phi2 / h - 0.5
                y = b(a_t / a_s) * y - b(s_t * phi1) * q0
                if order >= 2:
                    y = y - b(s_t * phi2) * d1
                if order == 3:
                    y = y - b(s_t * phi3) * d2
        return _plus(y, mu)

    # --- velocity: Adams–Bashforth in the angle φ ------------------------------------------------
    def _velocity_step(self, sde, x, mu, pred, t_cur, t_next, history, order):
        c = sde.velocity_scale

        def frame(t):
            a, s = sde.alpha(t), sde.sigma(t)
            r = torch.sqrt(a**2 + (s / c) ** 2)
            return torch.atan2(s / c, a), r

        phi_s, r_s = frame(t_cur)
        phi_t, r_t = frame(t_next)
        v = pred.velocity / c
        history = [(phi_s, v)] + history[:2]
        b = lambda val: bcast(val, x)
        h = phi_t - phi_s
        # ∫_0^h of the Newton polynomial through the last `order` velocities (offsets s = φ − φ_s).
        integral = b(h) * v
        if order >= 2:
            d1 = history[1][0] - phi_s
            f01 = (history[1][1] - v) / b(d1)
            integral = integral + f01 * b(h**2 / 2)
            if order == 3:
                d2 = history[2][0] - phi_s
                f12 = (history[2][1] - history[1][1]) / b(d2 - d1)
                f012 = (f12 - f01) / b(d2)
                integral = integral + f012 * b(h**3 / 3 - d1 * h**2 / 2)
        y_hat = _minus(x, mu) / b(c * r_s) + integral
        return _plus(y_hat * b(c * r_t), mu), history


def _minus(x, mu):
    return x if mu is None else x - mu


def _plus(y, mu):
    return y if mu is None else y + mu

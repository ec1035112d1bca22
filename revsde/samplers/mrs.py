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

from ..tensors import bcast, real_dtype
from .base import Query, Sampler, Step, check_choice
from .updates import to_x, to_y

PREDICTIONS = ("data", "noise", "velocity")


class MRSampler(Sampler):
    """MR Sampler: ``order`` 1–3 (ODE) or 1–2 (SDE, ``stochastic=True``); ``prediction`` data (default,
    stable at low NFE), noise, or velocity (ODE only). One evaluation per step; multistep with warm-up
    (step i uses order ≤ i + 1). ``lower_order_final`` (DPM-Solver++'s rule, on by default): with
    fewer than 15 steps the last step is first order and the one before at most second order.
    ``denoise_last`` returns the data prediction of the last evaluation instead of the last step
    (correct for every prediction type). ``warmup``: ``"multistep"`` (DPM-Solver++'s and the MR
    Sampler code's: the first steps run at lower order, NFE = steps) or ``"midpoint"`` (the first step
    is a second-order single step with one extra evaluation at its λ-midpoint, which then serves as
    history). The first-order start caps the global order at 2, so order 3 is third-order only with
    ``warmup="midpoint"``; the ``order`` attribute states the global order of the configuration.
    ``second_order``: ``"exact"`` integrates the line through the last two outputs exactly (the MR
    Sampler's Taylor form; diffusers' ``solver_type="heun"``); ``"midpoint"`` integrates its value at
    the step's λ-midpoint instead (DPM-Solver++(2M) as published; diffusers' default
    ``solver_type="midpoint"``): both second order.
    ``third_order``: ``"exact"`` integrates the quadratic through the last three outputs exactly;
    ``"dpm-solver"`` reproduces the 3M update of DPM-Solver(++) (diffusers, and the MR Sampler's
    ``step_ode_3rd``), whose second-difference term carries half the exact weight — second-order
    consistent, so its ``order`` is 2.
    ODE: global order as stated; SDE: a weak solver (its noise is an exact draw of the step's
    stochastic integral, not a Brownian increment), no strong order.
    """

    name = "mrs"
    evals_per_step = 1
    default_grid = "logsnr"

    def __init__(self, *, order: int = 2, prediction: str = "data", stochastic: bool = False,
                 lower_order_final: bool = True, denoise_last: bool = False, warmup: str = "multistep",
                 second_order: str = "exact", third_order: str = "exact"):
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
        self.warmup = check_choice(self.name, "warmup", warmup, ("multistep", "midpoint"))
        self.second_order = check_choice(self.name, "second_order", second_order, ("exact", "midpoint"))
        self.third_order = check_choice(self.name, "third_order", third_order, ("exact", "dpm-solver"))
        if prediction == "velocity" and (second_order, third_order) != ("exact", "exact"):
            raise ValueError("sampler 'mrs' with prediction='velocity' integrates in the angle φ: "
                             "second_order and third_order must be 'exact'")
        if stochastic and warmup != "multistep":
            raise ValueError("sampler 'mrs' supports warmup='midpoint' for the ODE only (stochastic=False)")

    def options(self):
        return {"order": self.solver_order, "prediction": self.prediction, "stochastic": self.stochastic,
                "lower_order_final": self.lower_order_final, "denoise_last": self.denoise_last,
                "warmup": self.warmup, "second_order": self.second_order, "third_order": self.third_order}

    @property
    def kind(self):
        return "sde" if self.stochastic else "ode"

    @property
    def order(self):
        if self.stochastic:
            return None
        if self.warmup == "multistep" or self.third_order == "dpm-solver":
            return float(min(self.solver_order, 2))
        return float(self.solver_order)

    def query_times(self, grid):
        if self.warmup == "midpoint" and self.solver_order > 1:
            raise ValueError("sampler 'mrs' with warmup='midpoint' evaluates at a λ-midpoint computed from the SDE; "
                             "use warmup='multistep' for a step-by-step driver")
        return super().query_times(grid)

    def step_order(self, i: int, n: int, history: int, to_data: bool = False) -> int:
        """The order of step ``i`` of ``n``. ``to_data``: the step ends at σ = 0 (λ = +∞, rectified flow's
        t = 0), where a polynomial through the last outputs would be integrated to infinity: first order
        (x̂₀ itself), as diffusers' solvers with ``final_sigmas_type="zero"``."""
        if to_data:
            return 1
        order = min(self.solver_order, history)  # warm-up: not enough history yet
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
        if self.prediction != "velocity" and (self.warmup == "multistep" or self.solver_order == 1):
            x = yield from self._run_planned(sde, grid, x, mu, noise)
            return x
        lam = sde.log_snr(grid)  # (N+1, B)
        to_data = torch.isposinf(lam[1:]).any(1).tolist()
        if self.warmup == "midpoint" and bool(torch.isneginf(lam[0]).any()):
            raise ValueError("sampler 'mrs' with warmup='midpoint' needs a finite log-SNR at the grid's start (its "
                             "midpoint is a λ-midpoint); the grid starts where α = 0 (λ = −∞, rectified flow's "
                             "t = 1): use warmup='multistep'")
        history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (λ or φ, converted output), newest first
        for i in range(n):
            t_cur, t_next = grid[i], grid[i + 1]
            pred = yield Query(x, t_cur)
            if self.denoise_last and i == n - 1:
                x = pred.data
                yield Step(i, x, t_next, pred.data)
                return x
            history = [(self._node(sde, t_cur, lam[i]), self._convert(sde, pred, mu))] + history[:2]
            if i == 0 and self.warmup == "midpoint" and self.solver_order > 1 and n > 1:
                # A second-order single step: evaluate once more at the λ-midpoint, keep it as history.
                t_mid = sde.t_from_log_snr(0.5 * (lam[0] + lam[1]))
                x_mid = self._advance(sde, x, mu, t_cur, t_mid, history, 1, noise)
                pred_mid = yield Query(x_mid, t_mid)
                history = [(self._node(sde, t_mid, None), self._convert(sde, pred_mid, mu))] + history[:2]
                x = self._advance(sde, x, mu, t_cur, t_next, history, 2, noise, start=history[1][0])
            else:
                order = self.step_order(i, n, len(history), to_data[i])
                x = self._advance(sde, x, mu, t_cur, t_next, history, order, noise)
            yield Step(i, x, t_next, pred.data)
        return x

    def _run_planned(self, sde, grid, x, mu, noise):
        """The multistep solver with every step's coefficients computed up front, vectorised over the
        grid (one pass of small tensor ops instead of one per step); each step is then
        ``y ← L y + Σ_j W_j q_j (+ s z)`` with the last ``order`` outputs q."""
        n = grid.shape[0] - 1
        lam = sde.log_snr(grid)
        to_data = torch.isposinf(lam[1:]).any(1).tolist()  # one host read per run
        orders = [self.step_order(i, n, min(i + 1, 3), to_data[i]) for i in range(n)]
        # Steps from α = 0 (λ = −∞, rectified flow's t = 1): the noise form's α_t/α_s is infinite there, so
        # it takes that (first-order) step as α_t x̂₀ + σ_t ε̂, the same update in the data form.
        from_prior = torch.isneginf(lam[:-1]).any(1).tolist() if self.prediction == "noise" else [False] * n
        if self.stochastic and any(from_prior):
            raise ValueError("sampler 'mrs' with stochastic=True and prediction='noise' cannot start where α = 0 "
                             "(λ = −∞, rectified flow's t = 1): its noise term e^h is infinite there; use "
                             "prediction='data'")
        lam0, lam_t = lam[:-1], lam[1:]
        lam1 = torch.cat([lam0[:1] - 1, lam0[:-1]])  # the node before; a stand-in where there is none
        lam2 = torch.cat([lam1[:1] - 1, lam1[:-1]])
        alpha, sigma = sde.alpha(grid), sde.sigma(grid)
        coeffs = {k: self._coefficients([lam0, lam1, lam2], lam0, lam_t, alpha[:-1], alpha[1:], sigma[:-1],
                                         sigma[1:], k) for k in sorted(set(orders))}
        shape = (n, -1) + (1,) * (x.ndim - 1)
        cast = lambda c: c.to(device=x.device, dtype=real_dtype(x.dtype)).reshape(shape)
        linear, weights, noise_std = {}, {}, {}
        for k, (lin, ws, std) in coeffs.items():
            linear[k], weights[k] = cast(lin), [cast(w) for w in ws]
            noise_std[k] = cast(std) if std is not None else None
        x_start, history = x, []
        for i in range(n):
            t_next = grid[i + 1]
            pred = yield Query(x, grid[i])
            if self.denoise_last and i == n - 1:
                x = pred.data
                yield Step(i, x, t_next, pred.data)
                return x
            history = [self._convert(sde, pred, mu)] + history[:2]
            k = orders[i]
            if from_prior[i]:
                y = self._from_prior(sde, grid, i, x, pred, mu, linear[k][i], weights[k][0][i], history[0])
            else:
                y = linear[k][i] * to_y(x, mu)
                for w, q in zip(weights[k], history):
                    y = y.addcmul_(w[i], q)  # y is this step's own tensor: updated in place, one kernel per term
            if self.stochastic:
                y = y + noise_std[k][i] * noise(grid[i], t_next)
            x = to_x(y, mu)
            yield Step(i, x, t_next, pred.data)
        if self.stochastic and self.prediction == "noise":
            self._check_divergence(x, x_start, mu)
        return x

    @staticmethod
    def _from_prior(sde, grid, i, x, pred, mu, linear, weight, eps):
        """Step ``i`` of the noise form in the samples that start at α = 0: ``α_t ŷ₀ + σ_t ε̂``."""
        start = bcast(torch.isneginf(sde.log_snr(grid[i])).double(), x) != 0
        ddim = bcast(sde.alpha(grid[i + 1]), x) * to_y(pred.data, mu) + bcast(sde.sigma(grid[i + 1]), x) * eps
        return torch.where(start, ddim, linear * to_y(x, mu) + weight * eps)

    def _check_divergence(self, x, x_start, mu):
        """Noise-prediction SDE steps amplify errors by e^h: flag a result far outside the start's scale."""
        rms = lambda v: float(to_y(v, mu).abs().pow(2).mean().sqrt())
        if rms(x) > 10 * rms(x_start):
            warnings.warn(f"sampler 'mrs' (stochastic, prediction='noise') diverged: the result's RMS "
                          f"{rms(x):.3g} is over 10x the prior's {rms(x_start):.3g}. Use prediction='data'.",
                          stacklevel=3)

    def _node(self, sde, t, lam):
        """The integration variable at t: half log-SNR λ, or the angle φ for velocity."""
        if self.prediction == "velocity":
            return torch.atan2(sde.sigma(t) / sde.velocity_scale, sde.alpha(t))
        return sde.log_snr(t) if lam is None else lam

    def _convert(self, sde, pred, mu):
        if self.prediction == "velocity":
            return pred.velocity / sde.velocity_scale
        return pred.noise if self.prediction == "noise" else to_y(pred.data, mu)

    def _advance(self, sde, x, mu, t_cur, t_next, history, order, noise, start=None):
        """One step from t_cur to t_next; ``start`` is the node of x when it is not history[0]'s."""
        if self.prediction == "velocity":
            return self._velocity_step(sde, x, mu, t_cur, t_next, history, order, start)
        return self._exponential_step(sde, x, mu, t_cur, t_next, history, order, noise, start)

    # --- data / noise: exponential integrators (MR Sampler §4-5, DPM-Solver(++)) -----------------
    def _coefficients(self, nodes, lam_s, lam_t, a_s, a_t, s_s, s_t, order):
        """``y_t = L y_s + Σ_j W_j q_j (+ S z)``: returns ``L, [W_0 .. W_{order−1}], S`` (``S`` None for the
        ODE), for tensors of any common shape (one step, or a whole grid at once).

        ``∫_{λ_s}^{λ_t} w(λ) P(λ) dλ`` with P the Newton polynomial through the outputs ``q_j`` at
        ``nodes[j]`` (newest first), u = λ − λ_t and ``w ∝ e^{a u}``, written out per output. For the
        multistep case this is the MR Sampler's φ-function update (data, ODE, order 2:
        ``−α_t[φ1 q0 − φ2 D1]``). ``second_order="midpoint"`` integrates P's value at the step's
        λ-midpoint; ``third_order="dpm-solver"`` gives the second difference half its weight (3M)."""
        h = lam_t - lam_s
        if self.prediction == "data":
            # ODE: y_t = (σ_t/σ_s) y_s + α_t ∫ e^{u} P;  SDE: (σ_t/σ_s) e^{−h} y_s + 2 α_t ∫ e^{2u} P + σ_t sqrt(1 − e^{−2h}) z
            a, weight = (2.0, 2 * a_t) if self.stochastic else (1.0, a_t)
            linear = s_t / s_s * (torch.exp(-h) if self.stochastic else 1)
            noise_std = s_t * torch.sqrt(-torch.expm1(-2 * h)) if self.stochastic else None
        else:
            # ODE: y_t = (α_t/α_s) y_s − σ_t ∫ e^{−u} P;  SDE: same with 2σ_t, + σ_t sqrt(e^{2h} − 1) z
            a, weight = -1.0, -(2 if self.stochastic else 1) * s_t
            linear = a_t / a_s
            noise_std = s_t * torch.sqrt(torch.expm1(2 * h)) if self.stochastic else None
        midpoint = order == 2 and self.second_order == "midpoint"
        m = _exp_moments(a, h, 1 if order == 1 or midpoint else order)
        if order == 1 and self.prediction == "noise":
            # to σ_t = 0 (h = ∞): σ_t e^h = α_t σ_s / α_s is finite where σ_t (e^h − 1) reads 0 · ∞
            to_data = torch.isposinf(h)
            lifted = a_t * s_s / a_s
            k = 2 if self.stochastic else 1
            w = torch.where(to_data, -k * (lifted - s_t), weight * m[0])
            if self.stochastic:
                noise_std = torch.where(to_data, torch.sqrt(torch.clamp(lifted**2 - s_t**2, min=0)), noise_std)
            return linear, [w], noise_std
        if order == 1:
            return linear, [weight * m[0]], noise_std
        lam0, lam1 = nodes[0], nodes[1]
        d01, d0 = lam0 - lam1, lam_t - lam0
        # g multiplies the first divided difference (q0 − q1)/d01
        g = m[0] * (0.5 * (lam_s + lam_t) - lam0) if midpoint else m[0] * d0 + m[1]
        if order == 2:
            return linear, [weight * (m[0] + g / d01), -weight * g / d01], noise_std
        lam2 = nodes[2]
        d12, d02, d1 = lam1 - lam2, lam0 - lam2, lam_t - lam1
        if self.third_order == "dpm-solver":
            c = m[0] * (d0 * d1 - 0.5 * d0**2) + m[1] * d1 + 0.5 * m[2]
        else:
            c = m[0] * d0 * d1 + m[1] * (d0 + d1) + m[2]
        c = c / d02  # multiplies (q0 − q1)/d01 − (q1 − q2)/d12
        return linear, [weight * (m[0] + g / d01 + c / d01), weight * (-g / d01 - c / d01 - c / d12),
                        weight * c / d12], noise_std

    def _exponential_step(self, sde, x, mu, t_cur, t_next, history, order, noise, start=None):
        """One step from ``t_cur`` with the last ``order`` outputs of ``history`` ((λ, q), newest first)."""
        lam_s = history[0][0] if start is None else start  # where x is
        linear, weights, noise_std = self._coefficients(
            [node for node, _ in history], lam_s, sde.log_snr(t_next), sde.alpha(t_cur), sde.alpha(t_next),
            sde.sigma(t_cur), sde.sigma(t_next), order)
        y = bcast(linear, x) * to_y(x, mu)
        for w, (_, q) in zip(weights, history):
            y = y + bcast(w, x) * q
        if self.stochastic:
            y = y + bcast(noise_std, x) * noise(t_cur, t_next)
        return to_x(y, mu)

    # --- velocity: Adams–Bashforth in the angle φ ------------------------------------------------
    def _velocity_step(self, sde, x, mu, t_cur, t_next, history, order, start=None):
        c = sde.velocity_scale

        def frame(t):
            a, s = sde.alpha(t), sde.sigma(t)
            return torch.atan2(s / c, a), torch.sqrt(a**2 + (s / c) ** 2)

        phi_x, r_s = frame(t_cur)
        phi_t, r_t = frame(t_next)
        phi_s, v = history[0]  # the expansion point (the newest evaluation)
        b = lambda val: bcast(val, x)
        # ∫ from φ_x to φ_t of the Newton polynomial through the last `order` velocities, in offsets
        # s = φ − φ_s from the expansion point: P(s) = v s + f01 s²/2 + f012 (s³/3 − d1 s²/2).
        def antiderivative(s_):
            value = b(s_) * v
            if order >= 2:
                value = value + f01 * b(s_**2 / 2)
            if order == 3:
                value = value + f012 * b(s_**3 / 3 - d1 * s_**2 / 2)
            return value

        if order >= 2:
            d1 = history[1][0] - phi_s
            f01 = (history[1][1] - v) / b(d1)
        if order == 3:
            d2 = history[2][0] - phi_s
            f12 = (history[2][1] - history[1][1]) / b(d2 - d1)
            f012 = (f12 - f01) / b(d2)
        integral = antiderivative(phi_t - phi_s) - antiderivative(phi_x - phi_s)
        y_hat = to_y(x, mu) / b(c * r_s) + integral
        return to_x(y_hat * b(c * r_t), mu)


def _exp_moments(a: float, h: torch.Tensor, count: int = 3) -> list[torch.Tensor]:
    """``∫_{−h}^{0} e^{a u} u^n du`` for n = 0 .. count − 1 (h > 0 per sample, float64)."""
    moments = [-torch.expm1(-a * h) / a]
    if count > 1:
        e = torch.exp(-a * h)
        moments.append(-1 / a**2 - e * (-h / a - 1 / a**2))
        if count > 2:
            moments.append(2 / a**3 - e * (h**2 / a + 2 * h / a**2 + 2 / a**3))
    return moments

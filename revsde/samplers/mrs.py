"""The MR Sampler (Li et al., ICLR 2025): semi-analytic multistep solvers of the PF-ODE and reverse SDE.

With ``y = x − μ`` every linear SDE is VP-type, so these are DPM-Solver / DPM-Solver++ /
SDE-DPM-Solver++ on y, with λ the half log-SNR and ``h = λ_next − λ_cur``. The linear part is
integrated exactly; only the network's output is Taylor-expanded (multistep: one evaluation per step).
Velocity prediction integrates ``dŷ/dφ = v̂`` exactly in the angle ``φ = atan(σ/(c α))`` of the
normalised state ``ŷ = y / (c r)`` (Adams–Bashforth on the velocity; ``Prediction`` defines c, r).
Every step is ``y ← L y + Σ_j W_j q_j (+ S z)``; ``mrs_weights`` holds the weights and their formulas,
this module the loop.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from ..tensors import bcast, real_dtype
from . import mrs_weights
from .base import Query, Sampler, Step, check_choice
from .mrs_weights import StepWeights
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
    ``eta`` (data prediction) in [0, 1]: the reverse SDE with noise √η·g, from the ODE (η = 0) to the
    SDE (η = 1, ``stochastic=True``), as k-diffusion's ``sample_dpmpp_2m_sde(eta=…)``: exact in its
    linear part and noise for every η, so every η samples the same marginals.
    """

    name = "mrs"
    evals_per_step = 1
    default_grid = "logsnr"

    def __init__(self, *, order: int = 2, prediction: str = "data", stochastic: bool = False,
                 lower_order_final: bool = True, denoise_last: bool = False, warmup: str = "multistep",
                 second_order: str = "exact", third_order: str = "exact", eta: float | None = None):
        stochastic = check_choice(self.name, "stochastic", stochastic, (False, True))
        if eta is not None:
            if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
                raise ValueError(f"sampler 'mrs' takes eta in [0, 1] (0: the ODE, 1: the SDE) (got {eta!r})")
            if stochastic and eta == 0:
                raise ValueError("sampler 'mrs': stochastic=True with eta=0 contradict (eta=0 is the ODE); give one")
            if prediction != "data" and eta not in (0, 1):
                raise ValueError(f"sampler 'mrs' takes eta between 0 and 1 with prediction='data' only (got "
                                 f"prediction={prediction!r}, eta={eta!r})")
            stochastic = eta > 0
        self.eta = float(eta) if eta is not None else float(stochastic)
        self.stochastic = stochastic
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
                "warmup": self.warmup, "second_order": self.second_order, "third_order": self.third_order,
                "eta": self.eta}

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
        """DPM-Solver++'s multistep loop (Algorithm 2) on ``y = x − μ``: evaluate the network once,
        put its output at the head of the history, take ``y ← L y + Σ_j W_j q_j (+ S z)`` with the
        step's weights (``mrs_weights``)."""
        n = grid.shape[0] - 1
        if self.stochastic and self.prediction == "noise" and n <= 10:
            warnings.warn(f"sampler 'mrs' with stochastic=True and prediction='noise' diverges at low NFE "
                          f"({n} steps): its coefficients grow like e^h. Use prediction='data'.", stacklevel=3)
        plan = self._plan(sde, grid, x)
        x_start, history = x, []  # the converted outputs q, newest first
        for i in range(n):
            t_cur, t_next = grid[i], grid[i + 1]
            pred = yield Query(x, t_cur)
            if self.denoise_last and i == n - 1:
                x = pred.data
                yield Step(i, x, t_next, pred.data)
                return x
            history = [self._convert(sde, pred, mu)] + history[:2]
            if i == 0 and plan.midpoint is not None:
                # Warm-up: a first-order step to the λ-midpoint, whose output joins the history, so
                # that the first step is already second order.
                t_mid, half = plan.midpoint
                pred_mid = yield Query(to_x(_combine(half, to_y(x, mu), history), mu), t_mid)
                history = [self._convert(sde, pred_mid, mu)] + history[:2]
            w = _row(plan.weights[plan.orders[i]], i)
            if plan.from_prior[i]:
                y = self._from_prior(sde, grid, i, x, pred, mu, w.linear, w.outputs[0], history[0])
            else:
                y = _combine(w, to_y(x, mu), history)
            if self.stochastic:
                y = y + w.noise * noise(t_cur, t_next)
            x = to_x(y, mu)
            yield Step(i, x, t_next, pred.data)
        if self.stochastic and self.prediction == "noise":
            self._check_divergence(x, x_start, mu)
        return x

    def _plan(self, sde, grid, x) -> _Plan:
        """Every step's order and weights, computed up front for the whole grid (one pass of small
        tensor ops instead of one per step) and cast to the state's dtype."""
        n = grid.shape[0] - 1
        lam = sde.log_snr(grid)  # (N+1, B)
        to_data = torch.isposinf(lam[1:]).any(1).tolist()  # one host read per run
        midpoint = self.warmup == "midpoint" and self.solver_order > 1
        if midpoint and bool(torch.isneginf(lam[0]).any()):
            raise ValueError("sampler 'mrs' with warmup='midpoint' needs a finite log-SNR at the grid's start (its "
                             "midpoint is a λ-midpoint); the grid starts where α = 0 (λ = −∞, rectified flow's "
                             "t = 1): use warmup='multistep'")
        # Steps from α = 0 (λ = −∞, rectified flow's t = 1): the noise form's α_t/α_s is infinite there, so
        # it takes that (first-order) step as α_t x̂₀ + σ_t ε̂, the same update in the data form.
        from_prior = torch.isneginf(lam[:-1]).any(1).tolist() if self.prediction == "noise" else [False] * n
        if self.stochastic and any(from_prior):
            raise ValueError("sampler 'mrs' with stochastic=True and prediction='noise' cannot start where α = 0 "
                             "(λ = −∞, rectified flow's t = 1): its noise term e^h is infinite there; use "
                             "prediction='data'")
        alpha, sigma = sde.alpha(grid), sde.sigma(grid)
        node = self._node(sde, lam, alpha, sigma)
        evals = node[:-1]  # the nodes of the evaluations, in order
        half = None
        if midpoint and n > 1:
            t_mid = sde.t_from_log_snr(0.5 * (lam[0] + lam[1]))
            a_mid, s_mid = sde.alpha(t_mid), sde.sigma(t_mid)
            node_mid = self._node(sde, sde.log_snr(t_mid), a_mid, s_mid)
            evals = torch.cat([evals[:1], node_mid[None], evals[1:]])
            step = self._weights(sde, 1, [node[0]], node[0], node_mid, alpha[0], a_mid, sigma[0], s_mid)
            half = (t_mid, _map(step, lambda c: bcast(c, x)))
        # step i's history: the newest evaluations up to its own, after stand-ins where there are none
        ahead = evals.shape[0] - n
        evals = torch.cat([evals[:1] - 2, evals[:1] - 1, evals])
        nodes = [evals[2 + ahead - j:2 + ahead - j + n] for j in range(3)]
        orders = [self.step_order(i, n, min(i + 1 + ahead, 3), to_data[i]) for i in range(n)]
        shape = (n, -1) + (1,) * (x.ndim - 1)
        cast = lambda c: c.to(device=x.device, dtype=real_dtype(x.dtype)).reshape(shape)
        weights = {k: _map(self._weights(sde, k, nodes, node[:-1], node[1:], alpha[:-1], alpha[1:], sigma[:-1],
                                         sigma[1:]), cast) for k in sorted(set(orders))}
        return _Plan(orders, weights, from_prior, half)

    def _weights(self, sde, order, nodes, node_s, node_t, a_s, a_t, s_s, s_t) -> StepWeights:
        if self.prediction == "velocity":
            return mrs_weights.velocity(order, nodes, node_s, node_t, a_s, a_t, s_s, s_t, sde.velocity_scale)
        return mrs_weights.exponential(self.prediction, order, nodes, node_s, node_t, a_s, a_t, s_s, s_t,
                                       stochastic=self.stochastic, second_order=self.second_order,
                                       third_order=self.third_order, eta=self.eta)

    def _node(self, sde, lam, alpha, sigma):
        """The integration variable: the half log-SNR λ, or the angle φ for velocity."""
        return mrs_weights.angle(alpha, sigma, sde.velocity_scale) if self.prediction == "velocity" else lam

    def _convert(self, sde, pred, mu):
        """The output the step integrates: v̂/c, ε̂ or ŷ₀."""
        if self.prediction == "velocity":
            return pred.velocity / sde.velocity_scale
        return pred.noise if self.prediction == "noise" else to_y(pred.data, mu)

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


class _Plan(NamedTuple):
    """A run's steps: each one's order, the weights of each order (a row per step), whether it starts
    at α = 0 in the noise form, and the midpoint warm-up's ``(t_mid, weights)`` or None."""

    orders: list[int]
    weights: dict[int, StepWeights]
    from_prior: list[bool]
    midpoint: tuple[torch.Tensor, StepWeights] | None


def _map(w: StepWeights, f) -> StepWeights:
    """``f`` applied to every weight."""
    return StepWeights(f(w.linear), tuple(map(f, w.outputs)), None if w.noise is None else f(w.noise))


def _combine(w: StepWeights, y, history):
    """``L y + Σ_j W_j q_j`` (y is this step's own tensor: updated in place, one kernel per term)."""
    y = w.linear * y
    for wj, q in zip(w.outputs, history):
        y = y.addcmul_(wj, q)
    return y


def _row(w: StepWeights, i: int) -> StepWeights:
    return _map(w, lambda c: c[i])

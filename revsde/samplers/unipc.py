"""UniPC (Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", NeurIPS 2023): the UniP multistep predictor and the UniC corrector on the PF-ODE of any linear SDE.

On ``y = x − μ`` with λ the half log-SNR, ``h = λ_t − λ_s`` and the converted outputs m (data
``ŷ₀`` or noise ``ε̂``), one step of order p from the newest output m₀ at λ_s is (data prediction; the
noise form swaps α and σ and uses ``ĥ = h``)

    y_t = (σ_t/σ_s) y_s − α_t (e^{ĥ} − 1) m₀ − α_t B(ĥ) Σ_k ρ_k D_k,   ĥ = −h,   D_k = (m_k − m₀)/r_k,

with ``r_k = (λ_{s_k} − λ_s)/h`` the older nodes' offsets. The ρ solve the order conditions
``Σ_k ρ_k r_k^{i−1} = i! φ_{i+1}(ĥ) / B(ĥ)`` (φ_{i+1} the exponential-integrator
functions ``(e^{ĥ} − Σ_{j≤i} ĥ^j/j!)/ĥ^{i+1}``); ``B(ĥ) = ĥ`` (``variant="bh1"``) or ``e^{ĥ} − 1``
(``"bh2"``, the paper's recommendation for guided and few-step sampling). UniP of order p uses the p − 1
older outputs (ρ = 1/2 at p = 2, as the paper's Algorithm and diffusers fix it); UniC re-takes the last
step once the network has been evaluated at its end, adding that new output as one more node (r = 1)
with order p + 1 conditions — no extra evaluation: the corrected state starts the next predictor step,
the evaluation itself is not repeated (the output stays the one at the predicted state). The last step
is not corrected (nothing evaluates its end). Steps to σ = 0 (λ = +∞) are first order.
"""
from __future__ import annotations

import torch

from ..tensors import real_dtype
from .base import Query, Sampler, Step, check_choice
from .updates import to_x, to_y

VARIANTS = ("bh1", "bh2")
PREDICTIONS = ("data", "noise")


def order_condition_rhs(hh: torch.Tensor, order: int, variant: str) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``(e^{ĥ} − 1, B(ĥ), [b_1 .. b_order])`` with ``b_i = i! φ_{i+1}(ĥ) / B(ĥ)``, elementwise in ĥ."""
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    rhs, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, rhs


def solve_rhos(rks: list[torch.Tensor], rhs: list[torch.Tensor]) -> list[torch.Tensor]:
    """ρ with ``Σ_k ρ_k r_k^{i−1} = rhs_i`` for i = 1 .. len(rks) (a Vandermonde system per element)."""
    k = len(rks)
    matrix = torch.stack([torch.stack([r ** i for r in rks], -1) for i in range(k)], -2)  # (..., k, k)
    return list(torch.linalg.solve(matrix, torch.stack(rhs[:k], -1).unsqueeze(-1)).squeeze(-1).unbind(-1))


def unipc_weights(lam: list[torch.Tensor], lam_t: torch.Tensor, a_s, a_t, s_s, s_t, order: int, variant: str,
                  prediction: str, corrector: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``y_t = L y_s + Σ_j W_j m_j``: returns ``L, [W_0, W_1, …]`` for one UniP (``corrector=False``) or UniC
    step of ``order``, elementwise over tensors of any common shape (one step, or a whole grid at once).

    ``lam``: the nodes of the outputs the step uses, newest first, ``lam[0]`` where ``y_s`` is. The
    corrector's first weight belongs to the new output at ``lam_t`` and the rest to ``lam[0], lam[1], …``."""
    h = lam_t - lam[0]
    hh = -h if prediction == "data" else h
    h_phi_1, b_h, rhs = order_condition_rhs(hh, order, variant)
    if prediction == "data":
        linear, scale = s_t / s_s, -a_t
    else:
        linear, scale = a_t / a_s, -s_t
    base = scale * h_phi_1  # on m₀
    if prediction == "noise" and not corrector and order == 1:
        # to σ_t = 0 (h = ∞): σ_t (e^h − 1) = α_t σ_s / α_s − σ_t reads 0 · ∞ in the first form
        base = torch.where(torch.isposinf(h), -(a_t * s_s / a_s - s_t), base)
    rks = [(node - lam[0]) / h for node in lam[1:order if not corrector else order]]
    if corrector:
        rhos = [torch.full_like(h, 0.5)] if order == 1 else solve_rhos(rks + [torch.ones_like(h)], rhs)
    elif order == 1:
        rhos = []
    else:
        rhos = [torch.full_like(h, 0.5)] if order == 2 else solve_rhos(rks, rhs)
    # Σ_k ρ_k (m_k − m₀)/r_k, with the corrector's new output at r = 1 last
    older = [scale * b_h * rho / r for rho, r in zip(rhos, rks)]
    weights = [base - sum(older, torch.zeros_like(h))] + older
    if corrector:
        new = scale * b_h * rhos[-1]
        weights = [new, weights[0] - new] + weights[1:]
    return linear, weights


class UniPCSampler(Sampler):
    """UniPC: the UniP predictor of ``order`` 1–3 and the UniC corrector (``corrector=True``: one order
    higher, reusing the next step's evaluation, so NFE = steps), ``variant`` bh1 or bh2, ``prediction``
    data (default) or noise. Multistep with warm-up (step i uses order ≤ i + 1); ``lower_order_final``
    (on by default, as diffusers): step i's order is at most the n − i steps left. ODE, one evaluation per
    step; global order p + 1 with the corrector and p without, where the first-order start caps them at
    3 and 2. In diffusers' loop it equals ``UniPCMultistepScheduler`` (``solver_type`` bh1 or bh2).
    """

    name = "unipc"
    kind = "ode"
    evals_per_step = 1
    default_grid = "logsnr"

    def __init__(self, *, order: int = 2, variant: str = "bh2", prediction: str = "data", corrector: bool = True,
                 lower_order_final: bool = True):
        if order not in (1, 2, 3) or isinstance(order, bool):
            raise ValueError(f"sampler 'unipc' supports order 1, 2 or 3 (got {order!r})")
        self.solver_order = order
        self.variant = check_choice(self.name, "variant", variant, VARIANTS)
        self.prediction = check_choice(self.name, "prediction", prediction, PREDICTIONS)
        self.corrector = check_choice(self.name, "corrector", corrector, (True, False))
        self.lower_order_final = check_choice(self.name, "lower_order_final", lower_order_final, (True, False))

    def options(self):
        return {"order": self.solver_order, "variant": self.variant, "prediction": self.prediction,
                "corrector": self.corrector, "lower_order_final": self.lower_order_final}

    @property
    def order(self):
        return float(min(self.solver_order + 1, 3) if self.corrector else min(self.solver_order, 2))

    def step_orders(self, n: int, to_data: list[bool], from_prior: bool = False) -> list[int]:
        """The predictor's order at each step: warm-up, diffusers' ``lower_order_final`` (order at most the
        steps left), first order into σ = 0. ``from_prior``: the grid starts where α = 0 (λ = −∞, rectified
        flow's t = 1), whose output no polynomial in λ can pass through: later steps leave it out."""
        orders = []
        for i in range(n):
            order = min(self.solver_order, i + 1 if not from_prior or i == 0 else i)
            if self.lower_order_final:
                order = min(order, n - i)
            orders.append(1 if to_data[i] else order)
        return orders

    def run(self, sde, grid, x, mu, noise):
        n = grid.shape[0] - 1
        lam = sde.log_snr(grid)  # (N+1, B)
        to_data = torch.isposinf(lam[1:]).any(1).tolist()
        from_prior = self._check_start(lam)
        orders = self.step_orders(n, to_data, from_prior)
        alpha, sigma = sde.alpha(grid), sde.sigma(grid)
        cast = lambda c: c.to(device=x.device, dtype=real_dtype(x.dtype)).reshape((-1,) + (1,) * (x.ndim - 1))

        def nodes(i: int, count: int) -> list[torch.Tensor]:  # λ of the outputs at steps i, i−1, …
            return [lam[i - j] for j in range(count)]

        predictor = [unipc_weights(nodes(i, orders[i]), lam[i + 1], alpha[i], alpha[i + 1], sigma[i], sigma[i + 1],
                                   orders[i], self.variant, self.prediction, False) for i in range(n)]
        corrector = [None] + [unipc_weights(nodes(i - 1, orders[i - 1]), lam[i], alpha[i - 1], alpha[i], sigma[i - 1],
                                            sigma[i], orders[i - 1], self.variant, self.prediction, True)
                              for i in range(1, n)] if self.corrector else [None] * n
        history, y_prev = [], None
        for i in range(n):
            pred = yield Query(x, grid[i])
            m = pred.noise if self.prediction == "noise" else to_y(pred.data, mu)
            if corrector[i] is not None and not to_data[i - 1]:
                linear, weights = corrector[i]
                y = cast(linear) * y_prev + cast(weights[0]) * m
                for w, q in zip(weights[1:], history):
                    y = y + cast(w) * q
                x = to_x(y, mu)
            history = [m] + history[:2]
            y_prev = to_y(x, mu)
            linear, weights = predictor[i]
            y = cast(linear) * y_prev
            for w, q in zip(weights, history):
                y = y + cast(w) * q
            x = to_x(y, mu)
            yield Step(i, x, grid[i + 1], pred.data)
        return x

    def _check_start(self, lam: torch.Tensor) -> bool:
        """Whether the grid starts where α = 0 (λ = −∞), after refusing the forms that cannot start there."""
        if not bool(torch.isneginf(lam[0]).any()):
            return False
        if self.prediction == "noise":
            raise ValueError("sampler 'unipc' with prediction='noise' cannot start where α = 0 (λ = −∞, rectified "
                             "flow's t = 1): its α_t/α_s is infinite there; use prediction='data'")
        if self.variant == "bh1" and self.corrector:
            raise ValueError("sampler 'unipc' with variant='bh1' cannot correct the step from α = 0 (λ = −∞, "
                             "rectified flow's t = 1): its B(h) = h is infinite there; use variant='bh2'")
        return True


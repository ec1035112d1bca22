"""Song et al.'s reverse-SDE predictors as stand-alone samplers (score_sde, ICLR 2021).

Each predictor plans its coefficients for the whole grid before the loop (``plan``: one vectorised pass
on the grid's device) and takes step ``i`` from row ``i`` of the plan (``step``).
"""
from __future__ import annotations

from . import updates
from .base import Query, Sampler, Step, check_choice


class _PredictorSampler(Sampler):
    """Shared loop: one evaluation at ``t_cur``, the predictor's mean, then its noise."""

    kind = "sde"
    order = 1.0
    evals_per_step = 1

    def __init__(self, *, denoise: bool = True):
        self.denoise = check_choice(self.name, "denoise", denoise, (True, False))

    def plan(self, sde, grid, x):
        """Every step's coefficients, computed once for ``grid``."""
        raise NotImplementedError

    def step(self, plan, i, x, pred, mu):
        """``(mean, std)`` of step ``i``."""
        raise NotImplementedError

    def run(self, sde, grid, x, mu, noise):
        n = grid.shape[0] - 1
        plan = self.plan(sde, grid, x)
        times = grid.unbind(0)  # each row's view made once
        for i in range(n):
            t_cur, t_next = times[i], times[i + 1]
            pred = yield Query(x, t_cur)
            mean, std = self.step(plan, i, x, pred, mu)
            # The last step returns the noise-free mean (score_sde's noise_removal) unless told not to.
            x = mean if (self.denoise and i == n - 1) else mean + std * noise(t_cur, t_next)
            yield Step(i, x, t_next, pred)
        return x


class EulerMaruyama(_PredictorSampler):
    """Euler–Maruyama on the reverse SDE ``dx = [f (x − μ) − g² ∇log p] dt + g dw̄``.

    Song et al. 2021 (score_sde ``EulerMaruyamaPredictor``). Strong order 1 (additive noise);
    1 evaluation per step; SDE.
    """

    name = "euler_maruyama"

    def plan(self, sde, grid, x):
        return updates.euler_plan(sde, grid, x)

    def step(self, plan, i, x, pred, mu):
        return updates.euler_step(plan, i, x, pred, mu)


class ReverseDiffusion(_PredictorSampler):
    """Reverse-diffusion predictor ``x − f_i + G_i² s + G_i z`` (Song et al. 2021).

    ``discretization="exact"``: ``f_i = (a − 1)(x − μ)``, ``G_i² = σ_cur² − a² σ_next²`` with
    ``a = α_cur/α_next``, the SDE's own forward transition between the two grid times. That is
    score_sde's step exactly where score_sde's table and the SDE agree: on a DDPM table
    (``DiscreteVPSDE``, one index per step) it is DDPM's / score_sde's VP step (``a = sqrt(1 − β_k)``,
    ``G² = β_k``); on ``VESDE`` at score_sde's σ-table times ``k/(N − 1)`` it is SMLD's. On the
    continuous ``VPSDE()`` it is that SDE's transition, while score_sde steps with its table
    ``β_k = β_min/N + k (β_max − β_min)/(N (N − 1))``: they differ by O(1/N²) per step (on the ring
    mixture up to 2.4e-2 at N = 100, 2.7e-4 at N = 1000); for the table use
    ``VPSDE.from_alphas_cumprod``. ``"euler"``: ``f_i = f (x − μ) Δ``, ``G_i² = g² Δ`` with Δ the grid's
    spacing (SGMSE's step; score_sde's for sub-VP and SDEs without a ``discretize``, which take
    Δ = 1/N rather than their grid's (1 − ε)/(N − 1)). Strong order 1; 1 evaluation per step; SDE.
    """

    name = "reverse_diffusion"

    def __init__(self, *, discretization: str = "exact", denoise: bool = True):
        super().__init__(denoise=denoise)
        self.discretization = check_choice(self.name, "discretization", discretization, ("exact", "euler"))

    def plan(self, sde, grid, x):
        return updates.euler_plan(sde, grid, x, self.discretization)

    def step(self, plan, i, x, pred, mu):
        return updates.euler_step(plan, i, x, pred, mu)


class Ancestral(_PredictorSampler):
    """Ancestral sampling: draw ``x_next`` from the forward process's posterior given x̂₀ (Ho et al. 2020).

    Exact for every linear SDE and any grid (not a step skip). ``variance="posterior"`` is DDPM's β̃
    and SMLD's ancestral step; ``"forward"`` is DDPM's β, the choice of score_sde's VP ancestral
    predictor. Strong order 1; 1 evaluation per step; SDE.
    """

    name = "ancestral"

    def __init__(self, *, variance: str = "posterior", denoise: bool = True):
        super().__init__(denoise=denoise)
        self.variance = check_choice(self.name, "variance", variance, ("posterior", "forward"))

    def plan(self, sde, grid, x):
        return updates.posterior_plan(sde, grid, x, self.variance)

    def step(self, plan, i, x, pred, mu):
        return updates.posterior_step(plan, i, x, pred, mu)


PREDICTORS = {"euler_maruyama": EulerMaruyama, "reverse_diffusion": ReverseDiffusion, "ancestral": Ancestral}


class Posterior(Ancestral):
    """IR-SDE's posterior sampling (Luo et al. 2023; the MR Sampler paper's 100-NFE baseline), for any
    linear SDE and any grid: ``x_next ~ q(x_next | x_cur, x̂_0)``, the exact Gaussian posterior of the
    forward process between consecutive grid points with x̂₀ the data prediction. With IR-SDE's
    A = α_cur/α_next, B = α_cur, C = α_next: mean ``μ + A(1−C²)/(1−B²)(x − μ) + C(1−A²)/(1−B²)(x̂₀ − μ)``,
    std ``λ sqrt((1−A²)(1−C²)/(1−B²))`` — rescaled to the grid's actual steps, not a one-index step
    skip. DDPM's ancestral step (β̃) for VP. 1 evaluation per step; SDE.
    """

    name = "posterior"

    def __init__(self, *, denoise: bool = True):
        super().__init__(variance="posterior", denoise=denoise)

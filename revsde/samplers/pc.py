"""Predictor–corrector samplers: Song et al.'s PC and SGMSE+'s speech sampler."""
from __future__ import annotations

import torch

from . import updates
from .base import Query, Sampler, Step, check_choice, check_number
from .classic import PREDICTORS

CORRECTORS = ("langevin", "ald", None)


class PC(Sampler):
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1 as score_sde runs it: corrector first).

    Each step: ``corrector_steps`` Langevin moves at ``t_cur`` on ``p_{t_cur}``, then one predictor
    step to ``t_next``. Correctors: ``"langevin"`` with ``ε = 2 a_i (snr ‖z‖/‖s‖)²`` (norms per
    sample, so a sample never depends on its batch; score_sde averages them over the batch),
    ``"ald"`` with ``ε = 2 a_i (snr σ_t)²``, where ``a_i = (α_cur/α_next)²`` is the per-step α of
    score_sde; or ``None``. Langevin noise is fresh (not part of the Brownian path), so PC has no
    strong order; with ``corrector=None`` it is its predictor. Evaluations per step:
    ``1 + corrector_steps``; SDE.
    """

    name = "pc"
    kind = "sde"
    _discretization = "exact"  # of the reverse-diffusion predictor
    _anneal_with_alpha = True  # a_i in the corrector step (score_sde); SGMSE uses 1

    def __init__(self, *, predictor: str = "reverse_diffusion", corrector: str | None = "langevin",
                 snr: float = 0.16, corrector_steps: int = 1, denoise: bool = True):
        self.predictor = check_choice(self.name, "predictor", predictor, tuple(PREDICTORS))
        self.corrector = check_choice(self.name, "corrector", corrector, CORRECTORS)
        self.snr = check_number(self.name, "snr", snr, minimum=0, strict=True)
        self.corrector_steps = check_number(self.name, "corrector_steps", corrector_steps, minimum=0, integer=True)
        self.denoise = check_choice(self.name, "denoise", denoise, (True, False))
        options = {"discretization": self._discretization} if predictor == "reverse_diffusion" else {}
        self._predictor = PREDICTORS[predictor](denoise=denoise, **options)

    @property
    def _n_corrector(self) -> int:
        return 0 if self.corrector is None else self.corrector_steps

    @property
    def evals_per_step(self) -> int:
        return 1 + self._n_corrector

    @property
    def batch_independent(self) -> bool:
        return self._n_corrector == 0 or self.corrector != "langevin"

    @property
    def order(self):
        return self._predictor.order if self._n_corrector == 0 else None

    def _corrector_step_size(self, sde, t_cur, t_next, score, z):
        a = torch.exp(2 * (sde.log_alpha(t_cur) - sde.log_alpha(t_next))) if self._anneal_with_alpha else 1.0
        if self.corrector == "ald":
            return 2 * a * (self.snr * sde.sigma(t_cur)) ** 2
        norm = lambda v: v.reshape(v.shape[0], -1).abs().pow(2).sum(1).sqrt().mean().to(t_cur.dtype)
        return 2 * a * (self.snr * norm(z) / norm(score)) ** 2 * torch.ones_like(t_cur)

    def run(self, sde, grid, x, mu, noise):
        n = grid.shape[0] - 1
        for i in range(n):
            t_cur, t_next = grid[i], grid[i + 1]
            # Corrector: Langevin moves that leave p_{t_cur} invariant.
            for _ in range(self._n_corrector):
                pred = yield Query(x, t_cur)
                z = noise.fresh()
                step = self._corrector_step_size(sde, t_cur, t_next, pred.score, z)
                x = updates.langevin(x, pred.score, step, z)
            # Predictor: one step of the reverse SDE.
            pred = yield Query(x, t_cur)
            mean, std = self._predictor.update(sde, x, t_cur, t_next, pred, mu)
            x = mean if (self.denoise and i == n - 1) else mean + std * noise(t_cur, t_next)
            yield Step(i, x, t_next, pred.data)
        return x


class SGMSE(PC):
    """SGMSE+'s sampler (Richter et al. 2023): reverse diffusion (Euler discretisation) + annealed
    Langevin with ``ε = 2 (snr σ_t)²``, snr 0.5, one corrector step, corrector first, noise-free
    last step. With a complex state all noise is circular complex normal (E|z|² = 1), SGMSE's
    convention. Evaluations per step: 2 by default; SDE. SGMSE's own grid is N points
    ``linspace(1, t_eps, N)`` followed by a final step to 0: with ``OUVESDE(t_min=0)`` pass that grid
    (plus the final 0) explicitly to reproduce it.
    """

    name = "sgmse"
    _discretization = "euler"
    _anneal_with_alpha = False

    def __init__(self, *, snr: float = 0.5, corrector_steps: int = 1, denoise: bool = True):
        super().__init__(predictor="reverse_diffusion", corrector="ald", snr=snr,
                         corrector_steps=corrector_steps, denoise=denoise)

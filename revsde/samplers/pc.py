"""Predictor–corrector samplers: Song et al.'s PC and SGMSE+'s speech sampler."""
from __future__ import annotations

import torch

from ..tensors import real_dtype
from . import updates
from .base import Query, Sampler, Step, check_choice, check_number
from .classic import PREDICTORS

CORRECTORS = ("langevin", "ald", None)
LANGEVIN_NORMS = ("sample", "batch")


class PC(Sampler):
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1 as score_sde runs it: corrector first).

    Each step: ``corrector_steps`` Langevin moves at ``t_cur`` on ``p_{t_cur}``, then one predictor
    step to ``t_next``. Correctors: ``"langevin"`` with ``ε = 2 a_i (snr ‖z‖/‖s‖)²``, ``"ald"`` with
    ``ε = 2 a_i (snr σ_t)²``, where ``a_i = (α_cur/α_next)²`` is the per-step α of score_sde; or
    ``None``. ``langevin_norms="sample"`` (default) takes ‖z‖ and ‖s‖ of each sample, so a sample
    depends only on its own generator; ``"batch"`` averages each norm over the batch as score_sde's
    ``LangevinCorrector`` does (to reproduce it; every sample's step then depends on the whole batch).
    Per-sample norms concentrate in high dimension (images, spectrograms: the two choices then take
    almost the same steps); in a few dimensions ‖s‖ nears 0 around a mode and the step explodes, so
    there use ``"ald"`` or ``langevin_norms="batch"``.
    Langevin noise is fresh (not part of the Brownian path), so PC has no strong order; with
    ``corrector=None`` it is its predictor. Evaluations per step: ``1 + corrector_steps``; SDE.
    """

    name = "pc"
    kind = "sde"
    _discretization = "exact"  # of the reverse-diffusion predictor
    _anneal_with_alpha = True  # a_i in the corrector step (score_sde); SGMSE uses 1

    def __init__(self, *, predictor: str = "reverse_diffusion", corrector: str | None = "langevin",
                 snr: float = 0.16, corrector_steps: int = 1, langevin_norms: str = "sample",
                 denoise: bool = True):
        self.predictor = check_choice(self.name, "predictor", predictor, tuple(PREDICTORS))
        self.corrector = check_choice(self.name, "corrector", corrector, CORRECTORS)
        self.snr = check_number(self.name, "snr", snr, minimum=0, strict=True)
        self.corrector_steps = check_number(self.name, "corrector_steps", corrector_steps, minimum=0, integer=True)
        self.langevin_norms = check_choice(self.name, "langevin_norms", langevin_norms, LANGEVIN_NORMS)
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
        return self._n_corrector == 0 or self.corrector != "langevin" or self.langevin_norms == "sample"

    @property
    def order(self):
        return self._predictor.order if self._n_corrector == 0 else None

    def _corrector_plan(self, sde, grid, x):
        """The corrector's per-step factors, computed once for the grid: ``"ald"``'s ``ε`` and ``sqrt(2ε)`` as
        state-shaped rows; ``"langevin"``'s ``2 a_i`` per sample (``(N, B)``, in the state's real dtype), which
        each step multiplies by its ``(snr ‖z‖/‖s‖)²``."""
        if self._anneal_with_alpha:
            log_alpha = updates.grid_table(sde, "log_alpha", grid)
            a = torch.exp(2 * (log_alpha[:-1] - log_alpha[1:]))
        else:
            a = torch.ones_like(grid[:-1])
        if self.corrector == "ald":
            step = 2 * a * (self.snr * updates.grid_table(sde, "sigma", grid)[:-1]) ** 2
            return updates.per_step(x, step, torch.sqrt(2 * step))
        two_a = (2 * a).to(device=x.device, dtype=real_dtype(x.dtype))  # the state's precision, as its norms
        return (two_a if two_a.ndim > 1 else two_a[:, None]).unbind(0)

    def _corrector_step(self, plan, i, x, score, z):
        """One Langevin move ``x + ε s + sqrt(2ε) z`` at step ``i``, rounded as score_sde rounds it."""
        if self.corrector == "ald":
            step, root = plan[0][i], plan[1][i]
        else:
            noise_norm, grad_norm = _norm(z), _norm(score)  # per sample, (B,)
            if self.langevin_norms == "batch":  # score_sde: the batch means, one step for the whole batch
                noise_norm, grad_norm = noise_norm.mean(), grad_norm.mean()
            eps = (self.snr * noise_norm / grad_norm) ** 2 * plan[i]
            step = eps.reshape(eps.shape[:1] + (1,) * (x.ndim - 1))
            root = torch.sqrt(2 * step)
        return x + step * score + root * z

    def run(self, sde, grid, x, mu, noise):
        n, moves = grid.shape[0] - 1, range(self._n_corrector)
        plan = self._predictor.plan(sde, grid, x)
        corrector = self._corrector_plan(sde, grid, x) if moves else None
        times = grid.unbind(0)  # each row's view made once
        for i in range(n):
            t_cur, t_next = times[i], times[i + 1]
            # Corrector: Langevin moves that leave p_{t_cur} invariant.
            for _ in moves:
                pred = yield Query(x, t_cur)
                x = self._corrector_step(corrector, i, x, pred.score, noise.fresh())
            # Predictor: one step of the reverse SDE.
            pred = yield Query(x, t_cur)
            mean, std = self._predictor.step(plan, i, x, pred, mu)
            x = mean if (self.denoise and i == n - 1) else mean + std * noise(t_cur, t_next)
            yield Step(i, x, t_next, pred)
        return x


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norm (complex states: of the complex values), shape ``(B,)``."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


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

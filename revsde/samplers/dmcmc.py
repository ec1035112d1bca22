"""Denoising MCMC (Kim & Ye, "Denoising MCMC for Accelerating Diffusion-Based Generative Models",
arXiv 2209.14593): Denoising Langevin Gibbs (DLG) chains on the product space (x, noise level), then
any registered sampler integrates each chain's iterate from its own level down to the data.

Every linear SDE is a VE process in ``x̃ = (x − μ)/α_t = (x_0 − μ) + σ̃_t ε`` with ``σ̃_t = σ_t/α_t = e^{−λ_t}``,
so the chains run the reference's (VE) algorithm in x̃, whatever the SDE: they target
``π(x̃, k) ∝ p̃_k(x̃)``, the law of ``x̃`` at level k under a uniform prior over the classifier's K levels
``t_k``, and for VE (α ≡ 1, μ = 0) x̃ is x and everything below is the reference's code. One DLG
iteration is one network call, at ``x = μ + α_k x̃`` and ``t_k``, and one classifier call:

- x-step, Langevin on ``p̃_k`` with the reference's step: ``x̃ ← x̃ + (η/2) s̃ + sqrt(η) z`` with
  ``s̃ = ∇_x̃ log p̃_k = α_k ∇_x log p_{t_k}``. In x this is ``x + ε s + sqrt(2ε) z`` with ``ε = ½ η α_k²``:
  η is a step in the data's units² on every SDE (``ε/σ_k² = η/(2 σ̃_k²)``, the reference's at σ = σ̃_k);
- level-step, Gibbs with x̃ held: ``k ~ p(k | x̃)`` from the classifier's categorical
  (``noise_level="sample"``, exact Gibbs) or its mode (``"argmax"``, what the reference runs). The
  classifier sees x̃, so a level is told by the noise's scale as in the reference (in x a VP chain's
  levels would all look like N(0, I) near t_max, and a chain there would freeze: ε ∝ α² ≈ 0).

A run: start the chains (``init="integrator"``, the reference's: a rough pass of the integrator over the
caller's grid from the prior — or over that grid resampled to ``init_steps`` steps, as the reference
runs its init pass with N = 20 whatever the outputs' N — then ``x̃ += init_noise·z``; ``"prior"``: the
prior draw; levels from the classifier), ``burn_in_steps`` iterations at ``burn_in_eta``, then
``mcmc_steps`` at ``eta`` keeping per chain the iterate of the smallest level (``keep="min"``, the
reference's) or the last one; then
the integrator runs on a per-sample ``(N+1, B)`` grid from each kept level to the grid's end (the
caller's grid moved to start there, its λ-spacing kept), and ``tweedie_final`` adds one call for x̂₀
at the end. The instance *is* the chains: ``state`` (a ``DMCMCState``) holds them after a run, and the
next run of the same instance continues them (no init, no burn-in), as the reference's successive
output batches do; ``reset()`` drops them.

NFE (counted by the driver): init pass + burn-in + MCMC + integrator + Tweedie; classifier calls are
counted in ``run_info`` (not NFE). SDE; no strong order; evaluations per run vary.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..grids import check_levels, integration_grid, resample_grid
from ..tensors import bcast
from . import updates
from .base import Query, Sampler, Step, check_choice, check_number
from .driver import Driver

INITS = ("integrator", "prior")
KEEPS = ("min", "last")
NOISE_LEVELS = ("argmax", "sample")
PHASES = ("init", "burn_in", "mcmc", "integrator", "tweedie")


@dataclass
class DMCMCState:
    """The chains: positions ``x`` in the VE-equivalent variable ``x̃ = (x − μ)/α`` (the SDE's state is
    ``μ + α_k x̃``), level indices ``level`` (``(B,)``, 0 = noisiest), the iterate the last run
    integrated (``kept_x``, ``kept_level``), the noise source's generator states after it (``None`` if it
    had none) and the DLG ``rounds`` made so far."""

    x: torch.Tensor
    level: torch.Tensor
    kept_x: torch.Tensor
    kept_level: torch.Tensor
    generators: list[torch.Tensor] | None
    rounds: int

    def state_dict(self) -> dict:
        """Tensors only (``torch.load(weights_only=True)`` reads it back)."""
        out = {"x": self.x, "level": self.level, "kept_x": self.kept_x, "kept_level": self.kept_level,
               "rounds": torch.tensor(self.rounds)}
        if self.generators is not None:
            out["generators"] = torch.stack(self.generators)
        return out

    def load_state_dict(self, state: dict) -> None:
        self.x, self.level = state["x"], state["level"].long()
        self.kept_x, self.kept_level = state["kept_x"], state["kept_level"].long()
        self.rounds = int(state["rounds"])
        gens = state.get("generators")
        self.generators = None if gens is None else [g.clone() for g in gens.unbind(0)]  # set_state needs owners

    @classmethod
    def from_state_dict(cls, state: dict) -> "DMCMCState":
        obj = cls.__new__(cls)
        obj.load_state_dict(state)
        return obj


class DMCMC(Sampler):
    """Denoising MCMC (Kim & Ye 2022): Langevin–Gibbs chains on (x, level), then a sampler from each chain's level.

    ``noise_classifier``: ``x̃ -> logits (B, K)`` over ``levels`` (default: its ``levels`` attribute) with
    ``x̃ = (x − μ)/α``, e.g. ``ExactNoisePosterior`` or ``NoiseLevelClassifier``; ``integrator``: a registry
    name (its options in ``integrator_options``) or None (return the kept iterate, as the SDE's state at
    its level). Kim & Ye 2022; SDE; no strong order; evaluations per run: init pass + burn_in_steps +
    mcmc_steps + the integrator's + 1 (Tweedie).
    """

    name = "dmcmc"
    kind = "sde"
    order = None
    evals_per_step = None

    def __init__(self, *, noise_classifier=None, integrator: str | Sampler | None = "mrs",
                 integrator_options: dict | None = None, levels=None, eta: float = 0.5, mcmc_steps: int = 10,
                 noise_level: str = "argmax", keep: str = "min", tweedie_final: bool = True,
                 init: str = "integrator", init_steps: int | None = None, init_noise: float = 0.5,
                 burn_in_steps: int = 10, burn_in_eta: float | None = None,
                 state: DMCMCState | dict | None = None):
        from .registry import REGISTRY, get

        classifier = noise_classifier
        if classifier is None or not callable(classifier):
            raise ValueError("sampler 'dmcmc' needs noise_classifier=: a noise-level classifier x̃ -> logits (B, K) over "
                             "the levels, e.g. revsde.nets.noise_classifier.ExactNoisePosterior or "
                             f"NoiseLevelClassifier (got {classifier!r})")
        self.noise_classifier = self.classifier = classifier
        if levels is None and getattr(classifier, "levels", None) is None:
            raise ValueError("sampler 'dmcmc' needs levels= (the K level times) when the classifier has no "
                             "'levels' attribute")
        self.levels = levels  # None: the classifier's (options() then shows None, not K times)
        self._levels = check_levels(classifier.levels if levels is None else levels)
        valid = [n for n in REGISTRY if n != self.name]
        known = integrator is None or isinstance(integrator, Sampler) or integrator in valid
        if integrator == self.name or isinstance(integrator, DMCMC) or not known:
            raise ValueError(f"sampler 'dmcmc' supports integrator in {{{', '.join(map(repr, valid))}}} or None "
                             f"(got {integrator!r})")
        self.integrator, self.integrator_options = integrator, dict(integrator_options or {})
        self._integrator = None if integrator is None else get(integrator, **self.integrator_options)
        self.eta = check_number(self.name, "eta", eta, minimum=0, strict=True)
        self.burn_in_eta = None if burn_in_eta is None else check_number(self.name, "burn_in_eta", burn_in_eta,
                                                                           minimum=0, strict=True)
        self.mcmc_steps = check_number(self.name, "mcmc_steps", mcmc_steps, minimum=0, integer=True)
        self.burn_in_steps = check_number(self.name, "burn_in_steps", burn_in_steps, minimum=0, integer=True)
        self.init_noise = check_number(self.name, "init_noise", init_noise, minimum=0)
        self.init_steps = None if init_steps is None else check_number(self.name, "init_steps", init_steps,
                                                                          minimum=1, integer=True)
        self.noise_level = check_choice(self.name, "noise_level", noise_level, NOISE_LEVELS)
        self.keep = check_choice(self.name, "keep", keep, KEEPS)
        self.tweedie_final = check_choice(self.name, "tweedie_final", tweedie_final, (True, False))
        self.init = check_choice(self.name, "init", init, INITS)
        if init == "integrator" and integrator is None:
            raise ValueError("sampler 'dmcmc' with init='integrator' needs an integrator; use init='prior'")
        if init_steps is not None and init != "integrator":
            raise ValueError(f"sampler 'dmcmc': init_steps sets the init pass of init='integrator' "
                             f"(got init={init!r})")
        if isinstance(state, dict):
            state = DMCMCState.from_state_dict(state)
        if not (state is None or isinstance(state, DMCMCState)):
            raise ValueError(f"sampler 'dmcmc' needs state to be a DMCMCState, its state_dict or None (got {state!r})")
        self.state = state
        self.default_grid = "uniform_t" if self._integrator is None else self._integrator.default_grid
        self.run_info: dict = {}

    @property
    def batch_independent(self) -> bool:
        return self._integrator is None or self._integrator.batch_independent

    def options(self):
        return {k: v for k, v in super().options().items() if k != "state"}

    def query_times(self, grid):
        raise ValueError("sampler 'dmcmc' evaluates at levels its classifier picks: its evaluation times are "
                         "not known in advance")

    def reset(self) -> None:
        """Forget the chains: the next run starts fresh."""
        self.state = None

    def run(self, sde, grid, x, mu, noise):
        levels = check_levels(self._levels, sde).to(x.device)
        if bool((levels[-1] <= grid[-1]).any()):
            raise ValueError(f"sampler 'dmcmc' needs every level above the grid's end (smallest level "
                             f"{float(levels[-1]):.6g}, grid end {float(grid[-1].max()):.6g})")
        gens = getattr(noise, "generators", None)  # NoiseSource: the chains' randomness, if it can be saved
        ctx = SimpleNamespace(mu=mu, noise=noise, levels=levels, alpha=sde.alpha(levels), i=0,
                              counts=dict.fromkeys(PHASES, 0), calls=0)
        self.run_info = {"classifier_calls": 0, "score_evals": ctx.counts}
        state, rounds = self.state, 0
        if state is None:
            t_from = grid[0]
            if self.init == "integrator":  # a rough sample from the prior, then back up to a low level
                init_grid = grid if self.init_steps is None else resample_grid(sde, grid, self.init_steps)
                x = yield from self._relay(self._integrator.run(sde, init_grid, x, mu, noise), ctx, "init")
                t_from = grid[-1]
            x_tilde = updates.to_y(x, mu) / bcast(sde.alpha(t_from), x)
            if self.init == "integrator":
                x_tilde = x_tilde + self.init_noise * noise.fresh()
            level = self._classify(x_tilde, ctx)
            burn_in_eta = self.eta if self.burn_in_eta is None else self.burn_in_eta
            x_tilde, level, _, _ = yield from self._chains(x_tilde, level, self.burn_in_steps, burn_in_eta, ctx,
                                                           "burn_in")
            rounds = self.burn_in_steps
        else:
            x_tilde, level, rounds = self._resume(state, x, gens)
        x_tilde, level, kept, kept_level = yield from self._chains(x_tilde, level, self.mcmc_steps, self.eta, ctx,
                                                                   "mcmc")
        t_start = levels[kept_level]
        self.run_info["start_t"] = t_start
        out, t_out = self._to_x(kept, kept_level, ctx), t_start
        if self._integrator is not None:  # every chain from its own level: a per-sample grid
            sub = integration_grid(sde, grid, t_start)
            out = yield from self._relay(self._integrator.run(sde, sub, out, mu, noise), ctx, "integrator")
            t_out = grid[-1]
        if self.tweedie_final:
            pred = yield Query(out, t_out)
            ctx.counts["tweedie"] += 1
            out = pred.data
            yield Step(ctx.i, out, t_out, out)
        self.run_info["classifier_calls"] = ctx.calls
        self.state = DMCMCState(x_tilde, level, kept, kept_level,
                                None if gens is None else [g.get_state() for g in gens], rounds + self.mcmc_steps)
        return out

    @staticmethod
    def _to_x(x_tilde, level, ctx):
        """``x = μ + α_k x̃``: the chain's state as the SDE's state at its level."""
        return updates.to_x(bcast(ctx.alpha[level], x_tilde) * x_tilde, ctx.mu)

    def _chains(self, x_tilde, level, steps, eta, ctx, phase):
        """``steps`` DLG iterations on x̃; returns the chains and the iterate kept per chain."""
        kept, kept_level = x_tilde, level
        for _ in range(steps):
            # x-step: the reference's Langevin step on p̃_k, with s̃ = α_k s(μ + α_k x̃, t_k).
            x = self._to_x(x_tilde, level, ctx)
            pred = yield Query(x, ctx.levels[level])
            ctx.counts[phase] += 1
            score = bcast(ctx.alpha[level], x) * pred.score
            x_tilde = x_tilde + 0.5 * eta * score + eta**0.5 * ctx.noise.fresh()
            # level-step: Gibbs given the new x̃.
            level = self._classify(x_tilde, ctx)
            if self.keep == "min":
                lower = bcast((level > kept_level).to(torch.float64), x_tilde) > 0
                kept, kept_level = torch.where(lower, x_tilde, kept), torch.maximum(level, kept_level)
            else:
                kept, kept_level = x_tilde, level
            yield Step(ctx.i, self._to_x(x_tilde, level, ctx), ctx.levels[level], pred.data)
            ctx.i += 1
        return x_tilde, level, kept, kept_level

    def _classify(self, x, ctx) -> torch.Tensor:
        """Level indices ``(B,)`` given x̃: the classifier's mode, or a draw from its categorical."""
        with torch.no_grad():
            logits = self.classifier(x) if ctx.mu is None else self.classifier(x, mu=ctx.mu)
        ctx.calls += 1
        k = ctx.levels.numel()
        if tuple(logits.shape) != (x.shape[0], k):
            raise ValueError(f"sampler 'dmcmc': the classifier gave logits of shape {tuple(logits.shape)}; "
                             f"expected ({x.shape[0]}, {k}) for {k} levels")
        logits = logits.to(device=x.device, dtype=torch.float64)
        if self.noise_level == "argmax":
            return logits.argmax(1)
        # Inverse-CDF draw with one uniform per chain, Φ(z) of a normal from the chain's own generator.
        z = ctx.noise.fresh().reshape(x.shape[0], -1)[:, 0]
        z = z.real * 2**0.5 if z.is_complex() else z
        u = torch.special.ndtr(z.to(torch.float64))
        cdf = torch.exp(logits - logits.amax(1, keepdim=True)).cumsum(1)  # unnormalised: u is scaled instead
        return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=k - 1)

    def _relay(self, run, ctx, phase):
        """Drive a sub-sampler inside this run: its queries go up (counted in ``phase``), its steps renumbered."""
        def renumber(step):
            step.i = ctx.i
            ctx.i += 1

        inner = Driver(run, self._integrator.name, on_step=renumber, guard=False)  # the outer driver guards
        try:
            return (yield from inner.relay())
        finally:
            ctx.counts[phase] += inner.nfe

    def _resume(self, state, x, gens):
        if tuple(state.x.shape) != tuple(x.shape):
            raise ValueError(f"sampler 'dmcmc' holds chains of shape {tuple(state.x.shape)}; this run asks for "
                             f"{tuple(x.shape)} (call reset() to start afresh)")
        if state.generators is not None:
            if gens is None or len(gens) != len(state.generators):
                raise ValueError("sampler 'dmcmc' resumes generator states: give the run the same number of "
                                 "per-sample generators as the chains were drawn with")
            for g, s in zip(gens, state.generators):
                g.set_state(s)
        return state.x.to(device=x.device, dtype=x.dtype), state.level.to(x.device), state.rounds

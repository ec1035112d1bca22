"""One run of a sampler inside a diffusers denoising loop: ``RevSDEScheduler``'s state from the first
``step()`` after ``set_timesteps`` to the last.

The run holds the sampler generator's ``Driver`` (NFE count, NaN guard, the checks on what the sampler
yields), its noise source and the SDE's coefficients on its grid; ``answer`` takes one network output
per ``step()``. It also knows DiT's guidance loop, which steps a doubled batch and then overwrites
its second half with its first: the first half is then the run, and every later state repeats it.
"""
from __future__ import annotations

import torch

from ..model import Prediction
from ..noise import GaussianNoise, check_generators, generator_from_seed, make_noise
from ..samplers.base import Step
from ..samplers.driver import Driver
from ..sde.cached import GridCoefficients
from ..solve import state_dtype


class SchedulerRun:
    """``sampler`` started at ``sample`` on ``grid`` (decreasing ``(N+1,)`` times from the run's first
    step); ``noise`` is one of ``NOISES``, drawn from ``generator`` (one, or one per sample; ``None``:
    per-sample Philox streams from a seed drawn from torch's global generator, as ``revsde.sample``'s
    ``seed=``). The state is float32 (float64 if ``sample`` is)."""

    def __init__(self, sampler, sde, grid: torch.Tensor, sample: torch.Tensor, generator, noise: str):
        batch, device = sample.shape[0], sample.device
        dtype = state_dtype(sample.dtype)
        grid = grid[:, None].expand(-1, batch).to(device).contiguous()
        if generator is None:
            generator = generator_from_seed(None, batch, device)
        generator = check_generators(generator, batch)
        self.noise = make_noise(noise, tuple(sample.shape), generator, grid, dtype=dtype, device=device)
        self.sde = GridCoefficients(sde, grid)  # as revsde.sample: once per grid, on device
        self.batch_independent = sampler.batch_independent
        self.driver = Driver(sampler.run(self.sde, grid, sample.to(dtype), None, self.noise), sampler.name)
        self.mirrored = False
        #: the prev_sample the last step() returned
        self.returned: torch.Tensor | None = None
        self.driver.start()

    @property
    def query(self):
        """The evaluation the next ``step()`` answers (``None`` once the run has ended)."""
        return self.driver.query

    @property
    def done(self) -> bool:
        return self.driver.done

    def use_generator(self, generator, batch: int) -> None:
        """Draw the rest of a Gaussian run's noise from ``generator`` (a Brownian path is fixed at the start)."""
        if generator is not None and isinstance(self.noise, GaussianNoise):
            self.noise.generator = check_generators(generator, batch)

    def accepts(self, sample: torch.Tensor) -> bool:
        """Whether ``sample`` continues the run: the returned state, or DiT's mirrored edit of it (then the
        run watches and returns its first half from here on)."""
        if sample is self.returned or torch.equal(sample, self.returned):
            return True
        half, odd = divmod(sample.shape[0], 2)
        if odd or sample.shape != self.returned.shape or not self.batch_independent:
            return False
        if torch.equal(sample[:half], self.returned[:half]) and torch.equal(sample[half:], sample[:half]):
            self.mirrored = True
            self.driver.rows = half  # the second half is no longer the run: the NaN guard ignores it
            return True
        return False

    def answer(self, pred: Prediction, *, final: bool, last_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer the pending evaluation with ``pred``: ``(state to evaluate next or the result, x̂₀)``.
        ``final`` ends the run with x̂₀ itself (``final_sigmas_type="zero"``); a result is checked for
        NaN/Inf as step ``last_step``."""
        query = self.driver.query
        if final:
            self.driver.stop(pred.data)
        else:
            self.driver.answer(pred)
        x = self.driver.result if self.driver.done else self.driver.query.x
        denoised = pred.data
        if self.mirrored:
            x, denoised = _mirror(x), _mirror(denoised)
        if self.driver.done:
            self.driver.check(Step(last_step, x, query.t))
        return x, denoised


def _mirror(v: torch.Tensor) -> torch.Tensor:
    half = v.shape[0] // 2
    return torch.cat([v[:half], v[:half]])

"""``sample``: the entry point. It validates everything before any work, makes the start, grid and noise,
and answers every query of the sampler's run with one network call; the run itself (NFE count, the
NaN guard, the checks on what a sampler yields) is the ``Driver``'s, and progress and callbacks hang
on its steps. Samplers only hold update rules."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import grids as grids_mod
from . import samplers as samplers_mod
from .model import Prediction, ScoreModel
from .noise import NOISES, check_generators, generator_from_seed, make_noise
from .samplers.base import Step
from .samplers.driver import Driver, NonFiniteStateError  # noqa: F401  (revsde.solve.NonFiniteStateError)
from .sde.cached import GridCoefficients


@dataclass
class Solution:
    """The result of ``sample``: samples ``x``, network evaluations ``nfe`` (counted, not declared),
    the ``(N+1, B)`` time ``grid`` used, the ``sampler`` and the number of ``steps`` taken."""

    x: torch.Tensor
    nfe: int
    grid: torch.Tensor
    sampler: str
    steps: int
    info: dict = field(default_factory=dict)


def state_dtype(dtype, x_init=None, mu=None) -> torch.dtype:
    """The solver state's dtype: ``dtype``, else the start's or μ's, else float32; half precisions
    become float32 (complex32 complex64) whatever the network's dtype."""
    if dtype is None:
        dtype = x_init.dtype if x_init is not None else (mu.dtype if mu is not None else torch.float32)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    if not (dtype.is_floating_point or dtype.is_complex):
        raise ValueError(f"the state must be a float or complex tensor (got dtype {dtype})")
    return dtype


def _generators(seed, generator, batch, device):
    if generator is not None:
        return check_generators(generator, batch)
    return generator_from_seed(seed, batch, device)


def sample(model: ScoreModel, shape: Sequence[int] | None = None, *, sampler="euler_maruyama",
           steps: int | None = None, grid=None, mu: torch.Tensor | None = None, seed: int | None = 0,
           generator=None, x_init: torch.Tensor | None = None, noise="gaussian",
           callback: Callable[[Step], None] | None = None, cond: dict | None = None, progress: bool = False,
           dtype: torch.dtype | None = None, device=None, graphs="auto", **options) -> Solution:
    """Draw samples by integrating ``model``'s reverse SDE or PF-ODE from ``t_max`` to ``t_min``.

    ``sampler`` is a registry name (its options as keyword arguments) or a ``Sampler``; ``grid`` a
    name from ``revsde.grids`` (default: the sampler's) with ``steps`` intervals, or an explicit
    ``(N+1,)`` / ``(N+1, B)`` tensor, or a callable ``grid(sde, steps)`` such as ``grids.Shifted(3.0)``
    (the SDE's ``default_grid``, where it has one, before the sampler's: ``uniform_t`` on rectified
    flow, whose log-SNR is infinite at both ends). The start is ``x_init`` or a prior draw of ``shape``.
    Randomness: ``seed`` gives sample ``b`` its own counter-based Philox stream keyed ``seed + b``
    (``revsde.philox``: a sample never depends on its batch, and all samples draw in one vectorised call);
    ``generator`` (a ``torch.Generator``, a list with one per sample, or a ``PhiloxGenerator``) replaces it.
    ``noise`` is ``"gaussian"``, ``"brownian"`` (a fixed Brownian path per sample, the same at every step
    count) or a noise source. The state is float32, or float64 / complex when the input is.
    ``graphs``: replay the network from CUDA graphs (``ScoreModel.graphed()``): ``"auto"`` (default)
    on CUDA devices, ``True``, or ``False``. On CUDA the loop makes no host sync per step: the NaN
    guard reads its verdicts every 16 steps and at the end.
    """
    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a revsde.ScoreModel (got {type(model).__name__}); "
                         "wrap your network as ScoreModel(net, sde, prediction=...)")
    sde = model.sde
    smp = samplers_mod.get(sampler, **options)
    if (shape is None) == (x_init is None):
        raise ValueError("give exactly one of shape= (draw from the prior) or x_init= (start from it)")
    shape = tuple(x_init.shape) if x_init is not None else tuple(int(s) for s in shape)
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(f"shape must be (B, ...) with B >= 1 (got {shape})")
    if device is None:
        device = x_init.device if x_init is not None else (mu.device if mu is not None else torch.device("cpu"))
    dtype = state_dtype(dtype, x_init, mu)
    if mu is not None:
        try:
            ok = torch.broadcast_shapes(tuple(mu.shape), shape) == shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mu has shape {tuple(mu.shape)}, which does not broadcast to the state's shape {shape}")
        mu = mu.to(device=device, dtype=dtype).expand(shape)
    if graphs not in ("auto", True, False):
        raise ValueError(f"graphs must be 'auto', True or False (got {graphs!r})")
    if graphs is True or (graphs == "auto" and torch.device(device).type == "cuda"):
        model = model.graphed()
    if noise not in NOISES and not callable(noise):
        raise ValueError(f"noise must be one of {', '.join(NOISES)} or a noise source (got {noise!r})")
    grid_name = (sde.default_grid or smp.default_grid) if grid is None else grid
    if smp.adaptive and isinstance(grid_name, str) and steps is None:
        steps = 1  # only the end points matter
    t = grids_mod.resolve(grid_name, sde, steps, shape[0], device)

    gens = _generators(seed, generator, shape[0], device)
    if x_init is None:
        x = sde.prior_sample(shape, mu, generator=gens, dtype=dtype, device=device)
    else:
        x = x_init.to(device=device, dtype=dtype)
    if isinstance(noise, str):
        noise = make_noise(noise, shape, gens, t, dtype=dtype, device=device)

    return _drive(model, smp, sde, t, x, mu, noise, cond or {}, callback, progress)


def _drive(model, smp, sde, grid, x, mu, noise, cond, callback, progress) -> Solution:
    from tqdm.auto import tqdm

    total = None if smp.adaptive else grid.shape[0] - 1
    bar = tqdm(total=total, desc=smp.name, disable=not progress, leave=False)
    sde = GridCoefficients(sde, grid)  # each time function once per grid, on its device

    def on_step(step: Step):
        if callback is not None:
            callback(step)
        bar.update(1)
        if total is None:
            bar.set_postfix(t=f"{float(step.t.flatten()[0]):.4g}", nfe=step.nfe)

    def evaluate(query) -> Prediction:
        return Prediction(model.prediction, model.output(query.x, query.t, mu, **cond), query.x, query.t, sde, mu)

    driver = Driver(smp.run(sde, grid, x, mu, noise), smp.name, on_step=on_step)
    try:
        x = driver.drive(evaluate)
    finally:
        bar.close()
    driver.check_result()
    # A sampler may report what it counted itself (dmcmc: classifier calls, score evaluations per phase).
    info = {"options": smp.options(), **getattr(smp, "run_info", {})}
    return Solution(x=x, nfe=driver.nfe, grid=grid, sampler=smp.name, steps=driver.steps, info=info)

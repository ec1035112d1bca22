"""``sample``: the one driver loop. It validates everything before any work, owns the network calls
(counting each as one NFE), progress, callbacks and the NaN guard; samplers only hold update rules."""
from __future__ import annotations

import cmath
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import grids as grids_mod
from . import samplers as samplers_mod
from .model import Prediction, ScoreModel
from .noise import BrownianNoise, GaussianNoise, draw_entropy, generators_from_seed
from .samplers.base import Query, Step
from .sde.cached import GridCoefficients

NOISES = ("gaussian", "brownian")


class NonFiniteStateError(FloatingPointError):
    """The sampler's state became NaN or Inf."""


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


def _state_dtype(dtype, x_init, mu) -> torch.dtype:
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
        if isinstance(generator, torch.Generator):
            return generator
        generator = list(generator)
        if len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} for a batch of {batch}: give one per sample")
        return generator
    if seed is None:
        seed = int(torch.randint(2**31, ()))
    return generators_from_seed(seed, batch, device)


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
    Randomness: ``seed`` gives sample ``b`` its own generator ``seed + b`` (a sample never depends on
    its batch); ``generator`` (one, or a list with one per sample) replaces it. ``noise`` is
    ``"gaussian"``, ``"brownian"`` (a fixed Brownian path per sample, the same at every step count)
    or a noise source. The state is float32, or float64 / complex when the input is.
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
    state_dtype = _state_dtype(dtype, x_init, mu)
    if mu is not None:
        try:
            ok = torch.broadcast_shapes(tuple(mu.shape), shape) == shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mu has shape {tuple(mu.shape)}, which does not broadcast to the state's shape {shape}")
        mu = mu.to(device=device, dtype=state_dtype).expand(shape)
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
        x = sde.prior_sample(shape, mu, generator=gens, dtype=state_dtype, device=device)
    else:
        x = x_init.to(device=device, dtype=state_dtype)
    if noise == "gaussian":
        noise = GaussianNoise(shape, gens, dtype=state_dtype, device=device)
    elif noise == "brownian":
        entropy = draw_entropy(gens, shape[0])
        if isinstance(gens, torch.Generator):
            entropy = entropy[0]  # one path for the batch
        noise = BrownianNoise(shape, float(t.min()), float(t.max()), entropy, dtype=state_dtype, device=device)

    return _drive(model, smp, sde, t, x, mu, noise, cond or {}, callback, progress)


def check_finite(smp, step: Step, nfe: int) -> None:
    """The NaN guard: raise ``NonFiniteStateError`` naming the sampler, step, time and NFE.

    A finite sum proves every element finite (NaN and ±Inf reach it), at a fraction of the cost of
    ``isfinite(x).all()``; only a sum that is not finite (or overflows) takes the full check."""
    if not cmath.isfinite(step.x.sum().item()) and not bool(torch.isfinite(step.x).all()):
        _non_finite(smp, step.i, step.t, nfe)


def _non_finite(smp, i: int, t: torch.Tensor, nfe: int):
    lo, hi = float(t.min()), float(t.max())
    when = f"{lo:.6g}" if lo == hi else f"{lo:.6g}..{hi:.6g}"
    raise NonFiniteStateError(
        f"sampler {smp.name!r}: the state became NaN/Inf at step {i} (t = {when}, NFE {nfe}); "
        "try more steps, a data-prediction sampler, or check the network's output")


class FiniteGuard:
    """The NaN guard without a host sync per step on an accelerator.

    On CPU every step is checked at once (a check costs no sync there). On other devices each step's
    verdict stays on the device and they are read together every ``every`` steps and at ``flush()``,
    which reports the first failing step exactly as ``check_finite`` would.
    """

    def __init__(self, smp, device, every: int = 16):
        self.smp = smp
        self.every = 1 if torch.device(device).type == "cpu" else every
        self._pending: list[tuple[torch.Tensor, int, torch.Tensor, int]] = []

    def __call__(self, step: Step, nfe: int):
        if self.every == 1:
            check_finite(self.smp, step, nfe)
            return
        self._pending.append((torch.isfinite(step.x).all(), step.i, step.t, nfe))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self):
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ok = torch.stack([p[0] for p in pending])
        if not bool(ok.all()):  # one sync for the whole batch of steps
            _, i, t, nfe = pending[int((~ok).nonzero()[0])]
            _non_finite(self.smp, i, t, nfe)


def _drive(model, smp, sde, grid, x, mu, noise, cond, callback, progress) -> Solution:
    from tqdm.auto import tqdm

    total = None if smp.adaptive else grid.shape[0] - 1
    bar = tqdm(total=total, desc=smp.name, disable=not progress, leave=False)
    nfe, steps = 0, 0
    sde = GridCoefficients(sde, grid)  # each time function once per grid, on its device
    guard = FiniteGuard(smp, x.device)
    run = smp.run(sde, grid, x, mu, noise)
    try:
        request = next(run)
        while True:
            if isinstance(request, Query):
                pred = Prediction(model.prediction, model.output(request.x, request.t, mu, **cond), request.x,
                                  request.t, sde, mu)
                nfe += 1
                request = run.send(pred)
                continue
            if not isinstance(request, Step):
                raise TypeError(f"sampler {smp.name!r} yielded {type(request).__name__}; expected Query or Step")
            guard(request, nfe)
            steps += 1
            request.nfe = nfe
            if callback is not None:
                callback(request)
            bar.update(1)
            if total is None:
                bar.set_postfix(t=f"{float(request.t.flatten()[0]):.4g}", nfe=nfe)
            request = run.send(None)
    except StopIteration as stop:
        x = stop.value
    finally:
        run.close()
        bar.close()
    guard.flush()
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteStateError(f"sampler {smp.name!r} returned a NaN/Inf state (NFE {nfe})")
    # A sampler may report what it counted itself (dmcmc: classifier calls, score evaluations per phase).
    info = {"options": smp.options(), **getattr(smp, "run_info", {})}
    return Solution(x=x, nfe=nfe, grid=grid, sampler=smp.name, steps=steps, info=info)

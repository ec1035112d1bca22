"""Time grids fitted to a model: LD3 (Tong et al., "Learning to Discretize Denoising Diffusion ODEs",
ICLR 2025), with an L2 distance in place of LPIPS.

From ``n`` seeded prior draws, a teacher (``mrs`` order 3 at 8× the steps on the default grid, no
gradient) computes where the PF-ODE takes each draw; then the few-step sampler is run from the same
draws, differentiably through the model, and the grid's interior points are moved by Adam to bring
its outputs to the teacher's (mean squared error over the samples). The grid is parametrised so that
it stays strictly decreasing with its ends fixed: ``t_k = t_max − (t_max − t_min) · Σ_{j<k} softmax(θ)_j``,
``θ`` starting at the log of the start grid's increments (so iteration 0 is the start grid itself). The
grid with the lowest loss seen is returned (never worse than the start grid on the fitted draws). Only
ODE samplers with a fixed grid qualify: a stochastic sampler's output is not a function of its start,
and an adaptive one chooses its own times. Nothing here reads data: the grid is fitted to the model's
own samples.

Layout: the public entry points are ``revsde.grids.optimize`` and ``revsde.grids.fit_grid``, which call
``fit`` here with the grids module's ``resolve``. The fit drives samplers (through the ``Driver`` of
``samplers/driver.py``, not ``revsde.solve``), and a sampler (``dmcmc``) imports ``revsde.grids``; taking
``resolve`` as an argument instead of importing ``revsde.grids`` keeps the imports one way,
``grids → grid_fit → samplers.driver / samplers.registry``, with no circle (tests/project/test_layers.py).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from .model import Prediction, ScoreModel
from .samplers.driver import Driver, NonFiniteStateError
from .samplers.registry import get as get_sampler
from .sde.cached import GridCoefficients

#: the teacher by default: a third-order exponential integrator at ``TEACHER_FACTOR`` × the steps
TEACHER = ("mrs", {"order": 3})
TEACHER_FACTOR, TEACHER_MIN_STEPS = 8, 40


@dataclass
class GridFit:
    """What ``fit`` found: the ``grid`` (``(steps + 1,)`` float64, decreasing), the mean squared distance
    to the teacher at the start grid and at the returned one, per-iteration ``losses``, and the
    ``settings`` that reproduce it (sampler, options, n, seed, teacher, iterations, learning rate)."""

    grid: torch.Tensor
    loss_start: float
    loss: float
    losses: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return value


def _ode_sampler(sampler, options: dict):
    smp = get_sampler(sampler, **options)
    if smp.adaptive:
        raise ValueError(f"grids.optimize fits the times of a fixed-step sampler; {smp.name!r} is adaptive "
                         "(it chooses its own times): use mrs, unipc, ode_euler, ode_heun or ode_rk4")
    if smp.kind != "ode":
        raise ValueError(f"grids.optimize fits grids for ODE samplers (deterministic: the output is a function "
                         f"of the start, which the fit matches to the teacher); {smp!r} is stochastic (kind "
                         f"{smp.kind!r}): use mrs (stochastic=False), unipc, ode_euler, ode_heun or ode_rk4")
    return smp


def _no_noise(t0, t1):
    raise RuntimeError("an ODE sampler asked for noise")


def run_sampler(model: ScoreModel, smp, grid: torch.Tensor, x: torch.Tensor, mu=None, cond=None) -> torch.Tensor:
    """``smp`` from ``x`` over the ``(N+1,)`` ``grid``, as ``revsde.sample(grid=grid, x_init=x)`` computes it,
    with autograd kept (gradients reach ``grid`` and ``x``). ODE samplers only (no noise source)."""
    cond = cond or {}
    grid = grid[:, None].expand(-1, x.shape[0]).contiguous()
    sde = GridCoefficients(model.sde, grid)

    def evaluate(query) -> Prediction:
        return Prediction(model.prediction, model.output(query.x, query.t, mu, **cond), query.x, query.t, sde, mu)

    driver = Driver(smp.run(sde, grid, x, mu, _no_noise), smp.name)
    out = driver.drive(evaluate)
    driver.check_result()
    return out


def grid_from_logits(theta: torch.Tensor, t_max: float, t_min: float) -> torch.Tensor:
    """``(N+1,)`` strictly decreasing times from ``t_max`` to ``t_min`` whose increments are ``softmax(θ)``
    of the span (the ends exact)."""
    inner = t_max - (t_max - t_min) * torch.cumsum(torch.softmax(theta, 0), 0)[:-1]
    return torch.cat([theta.new_tensor([t_max]), inner, theta.new_tensor([t_min])])


def logits_from_grid(grid: torch.Tensor) -> torch.Tensor:
    """The ``θ`` of ``grid_from_logits`` that gives ``grid`` back."""
    return torch.log(grid[:-1] - grid[1:])


def _start(model, shape, n, seed, mu, dtype, device):
    shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"shape must be one sample's shape, a non-empty tuple of positive integers, e.g. (3, 32, 32) "
                         f"(the n samples make the batch) (got {shape!r})")
    full = (n, *shape)
    if mu is not None:
        try:
            mu = mu.to(device=device, dtype=dtype).expand(full)
        except RuntimeError:
            raise ValueError(f"mu has shape {tuple(mu.shape)}, which does not broadcast to the {n} samples' "
                             f"shape {full}") from None
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(full, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    x = model.sde.prior_std * z
    return (x if mu is None else x + mu), mu


class _Objective:
    """The mean squared distance of the few-step outputs from the teacher's, as a function of the grid,
    and its gradient in the grid's points."""

    def __init__(self, model, smp, x, mu, cond, target, device):
        self.model, self.smp, self.x, self.mu, self.cond, self.target = model, smp, x, mu, cond, target
        self.device = device
        self.rel_step = torch.finfo(x.dtype if x.dtype.is_floating_point else torch.float32).eps ** (1 / 3)

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        out = run_sampler(self.model, self.smp, grid.to(self.device), self.x, self.mu, self.cond)
        return (out - self.target).abs().pow(2).flatten(1).mean(1).mean()

    def gradient(self, loss: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """d loss / d grid by autograd; where that is not finite (a step from or to an end where λ is
        infinite, rectified flow's, through a sampler's ``where``), a central difference in that point."""
        (g,) = torch.autograd.grad(loss, [grid], retain_graph=True)
        g = g.clone()
        g[0] = g[-1] = 0  # the ends are fixed
        with torch.no_grad():
            for k in (~torch.isfinite(g)).nonzero().flatten().tolist():
                h = self.rel_step * float(torch.minimum(grid[k - 1] - grid[k], grid[k] - grid[k + 1]))
                up, down = grid.detach().clone(), grid.detach().clone()
                up[k] += h
                down[k] -= h
                g[k] = (self(up) - self(down)) / (2 * h)
        return g


def fit(model: ScoreModel, shape, *, sampler, steps: int, resolve: Callable, n: int = 64, seed: int = 0,
        mu: torch.Tensor | None = None, cond: dict | None = None, start="default", teacher=TEACHER,
        teacher_steps: int | None = None, iterations: int = 200, lr: float = 0.05, progress: bool = True,
        dtype: torch.dtype | None = None, device=None, **options) -> GridFit:
    """Fit a ``steps``-step grid for ``sampler`` (its ``options`` as keyword arguments) to ``model``.

    ``shape``: one sample's shape (the ``n`` seeded prior draws make the batch); ``mu`` / ``cond``: as in
    ``revsde.sample``, broadcast to the ``n`` samples. ``start``: the grid the fit starts from (a name, a
    tensor or a callable; ``"default"``: the SDE's default grid, else the sampler's). ``teacher``:
    ``(name, options)`` of the reference sampler, run at ``teacher_steps`` (default ``max(8 × steps, 40)``)
    on its default grid. ``iterations`` of Adam at learning rate ``lr`` on the increments' logits.
    ``resolve``: ``revsde.grids.resolve`` (see the module's docstring). Deterministic by ``seed`` on a
    given device and thread count.
    """
    from tqdm.auto import tqdm

    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a revsde.ScoreModel (got {type(model).__name__})")
    steps, n = _positive_int("steps", steps), _positive_int("n", n)
    iterations, seed = _positive_int("iterations", iterations, 0), _positive_int("seed", seed, 0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number (got {lr!r})")
    smp = _ode_sampler(sampler, options)
    if not (isinstance(teacher, tuple) and len(teacher) == 2 and isinstance(teacher[1], dict)):
        raise ValueError(f"teacher must be a (sampler name, options) pair, e.g. ('mrs', {{'order': 3}}) (got {teacher!r})")
    teacher_smp = _ode_sampler(teacher[0], teacher[1])
    teacher_steps = max(TEACHER_FACTOR * steps, TEACHER_MIN_STEPS) if teacher_steps is None else teacher_steps
    teacher_steps = _positive_int("teacher_steps", teacher_steps)
    sde = model.sde
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = dtype or (mu.dtype if mu is not None else torch.float32)

    start_name = (sde.default_grid or smp.default_grid) if isinstance(start, str) and start == "default" else start
    t0 = resolve(start_name, sde, steps, 1)[:, 0].cpu()
    if t0.shape[0] != steps + 1:
        raise ValueError(f"the start grid has {t0.shape[0] - 1} steps; steps={steps}")
    t_teacher = resolve(sde.default_grid or teacher_smp.default_grid, sde, teacher_steps, 1)[:, 0].to(device)
    x, mu = _start(model, shape, n, seed, mu, dtype, device)

    with torch.no_grad():
        target = run_sampler(model, teacher_smp, t_teacher, x, mu, cond)
    t_max, t_min = float(t0[0]), float(t0[-1])
    theta = logits_from_grid(t0).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([theta], lr=lr)
    losses, best = [], (math.inf, t0)

    objective = _Objective(model, smp, x, mu, cond, target, device)
    bar = tqdm(range(iterations + 1), desc=f"grid for {smp.name} ({steps} steps)", disable=not progress, leave=False)
    for k in bar:
        grid = grid_from_logits(theta, t_max, t_min)
        try:
            loss = objective(grid)
        except NonFiniteStateError as error:  # a step too far: keep the best grid so far
            warnings.warn(f"grids.optimize stopped at iteration {k}: {error}", stacklevel=3)
            break
        value = float(loss.detach())
        losses.append(value)
        if value < best[0] and bool((grid[1:] < grid[:-1]).all()):  # softmax increments may underflow
            best = (value, grid.detach().clone())
        bar.set_postfix(rms=f"{math.sqrt(value):.4g}")
        if k == iterations:
            break
        (theta.grad,) = torch.autograd.grad(grid, [theta], grad_outputs=objective.gradient(loss, grid))
        optimiser.step()
    bar.close()
    settings = {"sampler": smp.name, "options": smp.options(), "steps": steps, "n": n, "seed": seed,
                "start": start_name if isinstance(start_name, str) else "explicit",
                "teacher": [teacher_smp.name, teacher_smp.options()], "teacher_steps": teacher_steps,
                "iterations": iterations, "lr": lr}
    return GridFit(grid=best[1].to(torch.float64), loss_start=losses[0] if losses else math.nan, loss=best[0],
                   losses=losses, settings=settings)

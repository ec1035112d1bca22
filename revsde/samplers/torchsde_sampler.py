"""torchsde's SDE solvers on the reverse SDE, with every drift evaluation a counted query.

torchsde's solvers call the drift synchronously inside ``step``. To yield a ``Query`` instead, each
grid interval is solved by deterministic replay: the solver runs until it asks for a drift it has
not been given, that request becomes a ``Query``, and the interval is run again from its start with
the answers so far (identical requests are answered from the cache, so no evaluation is repeated;
Brownian draws are cached by call order, so a replay sees the same noise).
"""
from __future__ import annotations

import math

import torch

from ..tensors import bcast
from . import updates
from .base import Query, Sampler, Step, check_choice, check_number

#: method → (SDE type it is written for, strong order with additive noise)
METHODS = {
    "euler": ("ito", 1.0),
    "milstein": ("ito", 1.0),
    "srk": ("ito", 1.5),
    "midpoint": ("stratonovich", 1.0),
    "heun": ("stratonovich", 1.0),
    "euler_heun": ("stratonovich", 1.0),
}
# Not offered: reversible_heun (built for memory-free adjoints; its stability region is the imaginary
# axis, and on these dissipative reverse SDEs its error grew under refinement in our tests) and
# log_ode_midpoint (needs the full Lévy area, a (B, D, D) tensor).


class _NeedDrift(Exception):
    def __init__(self, u, y):
        self.u, self.y = u, y


class _Replay:
    """Answers for one interval's drift requests and Brownian draws, in call order."""

    def __init__(self):
        self.drifts: list = []  # (u, y, drift)
        self.draws: list = []
        self._draw = 0

    def restart(self):
        self._draw = 0

    def drift(self, u, y):
        for u_seen, y_seen, value in self.drifts:
            if u_seen == float(u) and torch.equal(y_seen, y):
                return value
        raise _NeedDrift(float(u), y.clone())

    def draw(self, make):
        if self._draw == len(self.draws):
            self.draws.append(make())
        value = self.draws[self._draw]
        self._draw += 1
        return value


class _IntervalBrownian:
    """torchsde's Brownian interface in the index time ``u`` of grid interval ``[i, i+1]``.

    ``t(u) = t_i − (u − i) Δ`` per sample; ``W̃(u) = (W(t_i) − W(t(u))) / sqrt(Δ)`` is a standard
    Brownian motion in u made from the noise source's path in t, so ``BrownianNoise`` gives the same
    path at every step count. Space-time Lévy area: ``U_u = (h ΔW − U_t) / Δ^{3/2}``; with
    ``GaussianNoise`` (no path) it is drawn from its law given ΔW: ``U = ½ δ ΔW + δ^{3/2} ξ/√12``.
    """

    levy_area_approximation = "space-time"

    def __init__(self, noise, shape, dtype, device, flatten, replay):
        self.noise, self.shape, self.dtype, self.device = noise, shape, dtype, device
        self._flatten, self._replay = flatten, replay

    def set_interval(self, i, t_cur, t_next):
        self.i, self.t_cur, self.delta = i, t_cur, t_cur - t_next

    def t(self, u):
        return self.t_cur - (float(u) - self.i) * self.delta

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_A:
            raise ValueError("sampler 'torchsde' does not provide the Lévy area A (method log_ode_midpoint)")
        return self._replay.draw(lambda: self._sample(float(ta), float(tb), return_U))

    def _sample(self, ua, ub, return_U):
        du = ub - ua
        t_a, t_b = self.t(ua), self.t(ub)
        if return_U and hasattr(self.noise, "increment"):
            dw_t, u_t = self.noise.increment(t_a, t_b, return_U=True)  # over [t_b, t_a], h = t_a − t_b
            h = bcast(t_a - t_b, dw_t)
            dw = dw_t / bcast(self.delta.sqrt(), dw_t)
            levy = (h * dw_t - u_t) / bcast(self.delta**1.5, dw_t)
            return self._flatten(dw), self._flatten(levy)
        dw = self.noise(t_a, t_b) * math.sqrt(du)
        if not return_U:
            return self._flatten(dw)
        levy = 0.5 * du * dw + du**1.5 / math.sqrt(12) * self.noise.fresh()
        return self._flatten(dw), self._flatten(levy)

    def size(self):
        return self.shape


class TorchSDE(Sampler):
    """Any torchsde method on the reverse SDE (Li et al. 2020; Kidger et al. 2021).

    Each grid interval is integrated in its index time by torchsde's solver (one step, or adaptive
    steps with ``adaptive=True``, which needs ``noise="brownian"``). The noise is additive (g depends on t only), so Itô and Stratonovich methods solve
    the same SDE. The state is flattened (complex states as real pairs, ``g/√2`` per part). Strong
    order with additive noise: srk (SRA1, 2 evaluations per step) 1.5; euler, milstein, midpoint,
    heun, euler_heun 1. SDE.
    """

    name = "torchsde"
    kind = "sde"
    evals_per_step = None
    default_grid = "uniform_t"

    def __init__(self, *, method: str = "euler", adaptive: bool = False, rtol: float = 1e-3, atol: float = 1e-3):
        self.method = check_choice(self.name, "method", method, tuple(METHODS))
        self.adaptive = check_choice(self.name, "adaptive", adaptive, (True, False))
        self.rtol = check_number(self.name, "rtol", rtol, minimum=0, strict=True)
        self.atol = check_number(self.name, "atol", atol, minimum=0, strict=True)

    @property
    def order(self):
        return METHODS[self.method][1]

    def query_times(self, grid):
        raise ValueError("sampler 'torchsde' evaluates where its method decides: the times are not known in advance")

    def run(self, sde, grid, x, mu, noise):
        from torchsde._core import base_sde, methods

        if self.adaptive and not hasattr(noise, "increment"):
            raise ValueError("sampler 'torchsde' with adaptive=True needs noise='brownian' (a fixed path)")
        shape, is_complex = x.shape, x.dtype.is_complex
        if is_complex:
            flat = lambda v: torch.view_as_real(v).reshape(shape[0], -1)
            unflat = lambda v: torch.view_as_complex(v.reshape(*shape, 2))
        else:
            flat, unflat = (lambda v: v.reshape(shape[0], -1)), (lambda v: v.reshape(shape))
        noise_scale = 1 / math.sqrt(2) if is_complex else 1.0
        y = flat(x).contiguous()
        replay = _Replay()
        bm = _IntervalBrownian(noise, tuple(y.shape), y.dtype, y.device, flat, replay)

        class ReverseSDE:
            # g is state-independent: "additive" lets srk use SRA1 (2 stages) and g_prod stay elementwise.
            noise_type = "additive"
            sde_type = METHODS[self.method][0]

            def f(_, u, y):
                return replay.drift(u, y)

            def g_prod(_, u, y, v):
                return bcast(torch.sqrt(sde.g2(bm.t(u)) * bm.delta) * noise_scale, v) * v

        solver = methods.select(self.method, METHODS[self.method][0])(
            sde=base_sde.ForwardSDE(ReverseSDE()), bm=bm, dt=1.0, adaptive=self.adaptive, rtol=self.rtol,
            atol=self.atol, dt_min=1e-4, options={})
        extra = None
        for i in range(grid.shape[0] - 1):
            if i == 0 and updates.singular_at_start(sde) and not bool(torch.isfinite(sde.f(grid[0])).all()):
                # The reverse SDE's coefficients are infinite at the start (rectified flow's t = 1): the first
                # step is the exact posterior step there (revsde.samplers.updates), then torchsde takes over.
                pred = yield Query(x, grid[0])
                mean, std = updates.posterior(sde, x, grid[0], grid[1], pred, mu)
                x = mean + std * noise(grid[0], grid[1])
                y = flat(x).contiguous()
                yield Step(0, x, grid[1], pred.data)
                continue
            bm.set_interval(i, grid[i], grid[i + 1])
            replay.__init__()
            u = torch.tensor([float(i), float(i + 1)], dtype=y.dtype, device=y.device)
            while True:
                replay.restart()
                try:
                    start = solver.init_extra_solver_state(u[0], y) if extra is None else extra
                    ys, new_extra = solver.integrate(y, u, start)
                    break
                except _NeedDrift as need:
                    # One network evaluation; the drift in u is Δ times the reverse drift in t.
                    t = bm.t(need.u)
                    pred = yield Query(unflat(need.y), t)
                    drift = -sde.reverse_sde_drift(pred.x, t, pred, mu)
                    replay.drifts.append((need.u, need.y, flat(drift * bcast(bm.delta, drift))))
            y, extra = ys[-1], new_extra
            yield Step(i, unflat(y), grid[i + 1])
        return unflat(y)

"""torchsde's SDE solvers on the reverse SDE, with every drift evaluation a counted query.

torchsde calls the drift synchronously from inside ``sdeint``; the solve runs in a worker thread
that hands each drift request to this generator and waits for the ``Prediction``.
"""
from __future__ import annotations

import math
import queue
import threading

import torch

from ..tensors import bcast
from .base import Query, Sampler, Step, check_choice, check_number

#: method → (SDE type it is written for, strong order with additive noise, needs space-time Lévy area)
METHODS = {
    "euler": ("ito", 1.0, False),
    "milstein": ("ito", 1.0, False),
    "srk": ("ito", 1.5, True),
    "midpoint": ("stratonovich", 1.0, False),
    "heun": ("stratonovich", 1.0, False),
    "euler_heun": ("stratonovich", 1.0, False),
    "reversible_heun": ("stratonovich", 1.0, False),
}


class _Abort(Exception):
    pass


class _IntervalBrownian:
    """torchsde's Brownian interface on the index time ``u`` of one grid interval ``[i, i+1]``.

    ``t(u) = t_i − (u − i) Δ`` per sample; ``W̃(u) = (W(t_i) − W(t(u))) / sqrt(Δ)`` is a standard
    Brownian motion in u built from the noise source's path in t, so a ``BrownianNoise`` gives the
    same path at every step count. Space-time Lévy area: ``U_u = (h ΔW − U_t) / Δ^{3/2}``; with
    ``GaussianNoise`` (no path) it is drawn from its conditional law given ΔW.
    """

    def __init__(self, noise, shape, dtype, device, flatten):
        self.noise, self._shape, self._dtype, self._device = noise, shape, dtype, device
        self._flatten = flatten
        self.levy_area_approximation = "space-time"

    def set_interval(self, i, t_cur, t_next):
        self.i, self.t_cur, self.delta = i, t_cur, t_cur - t_next

    def _t(self, u):
        return self.t_cur - (float(u) - self.i) * self.delta

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_A:
            raise ValueError("sampler 'torchsde' does not provide Lévy area A (method log_ode_midpoint)")
        du = float(tb) - float(ta)
        t_a, t_b = self._t(ta), self._t(tb)
        increment = getattr(self.noise, "increment", None)
        if return_U and increment is not None:
            dw_t, u_t = increment(t_a, t_b, return_U=True)  # over [t_b, t_a], with h = t_a − t_b
            h = bcast(t_a - t_b, dw_t)
            dw = dw_t / bcast(self.delta.sqrt(), dw_t)
            levy = (h * dw_t - u_t) / bcast(self.delta ** 1.5, dw_t)
            return self._flatten(dw), self._flatten(levy)
        dw = self.noise(t_a, t_b) * math.sqrt(du)
        if not return_U:
            return self._flatten(dw)
        levy = 0.5 * du * dw + du**1.5 / math.sqrt(12) * self.noise.fresh()
        return self._flatten(dw), self._flatten(levy)

    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device


class TorchSDE(Sampler):
    """Any torchsde method on the reverse SDE (Li et al. 2020; Kidger et al. 2021).

    Each grid interval is one ``sdeint`` call in its index time (one step, or adaptive steps with
    ``adaptive=True``, which needs ``noise="brownian"``); solver state (reversible Heun) carries over.
    The state is flattened (complex states as real pairs, noise ``g/√2`` per part). Strong order per
    method with this additive noise: euler, milstein, midpoint, heun, euler_heun, reversible_heun 1,
    srk 1.5; evaluations per step are the method's (srk 4 for diagonal noise here, midpoint 2, …).
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
        import torchsde

        if self.adaptive and not hasattr(noise, "increment"):
            raise ValueError("sampler 'torchsde' with adaptive=True needs noise='brownian' (a fixed path)")
        shape, is_complex = x.shape, x.dtype.is_complex
        flat = (lambda v: torch.view_as_real(v).reshape(shape[0], -1)) if is_complex else \
            (lambda v: v.reshape(shape[0], -1))
        unflat = (lambda v: torch.view_as_complex(v.reshape(*shape, 2))) if is_complex else \
            (lambda v: v.reshape(shape))
        y0 = flat(x).contiguous()
        bm = _IntervalBrownian(noise, tuple(y0.shape), y0.dtype, y0.device, flat)
        requests: queue.Queue = queue.Queue()
        replies: queue.Queue = queue.Queue()
        noise_scale = 1 / math.sqrt(2) if is_complex else 1.0

        class ReverseSDE:
            noise_type = "diagonal"
            sde_type = METHODS[self.method][0]
            last = None  # sdeint's shape check evaluates f at the start, where the method does too

            def f(me, u, y):
                if me.last is not None and me.last[0] == float(u) and torch.equal(me.last[1], y):
                    return me.last[2]
                t = bm._t(u)
                requests.put(("query", unflat(y), t))
                pred = replies.get()
                if pred is None:
                    raise _Abort
                drift = -sde.reverse_drift(pred.x, t, pred.score, mu)
                me.last = (float(u), y.clone(), flat(drift * bcast(bm.delta, drift)))
                return me.last[2]

            def g(_, u, y):
                t = bm._t(u)
                return (torch.sqrt(sde.g2(t) * bm.delta) * noise_scale).to(y.dtype)[:, None].expand_as(y)

        def solve(i, y, extra):
            try:
                u = torch.tensor([float(i), float(i + 1)], dtype=y.dtype, device=y.device)
                ys, extra = torchsde.sdeint(ReverseSDE(), y, u, bm=bm, method=self.method, dt=1.0,
                                           adaptive=self.adaptive, rtol=self.rtol, atol=self.atol,
                                           dt_min=1e-4, extra=True, extra_solver_state=extra,
                                           options={"grad_free": True} if self.method == "milstein" else None)
                requests.put(("done", ys[-1], extra))
            except _Abort:
                pass
            except BaseException as error:  # surfaced in the generator's thread
                requests.put(("error", error, None))

        y, extra = y0, None
        n = grid.shape[0] - 1
        for i in range(n):
            bm.set_interval(i, grid[i], grid[i + 1])
            worker = threading.Thread(target=solve, args=(i, y, extra), daemon=True)
            worker.start()
            finished = False
            try:
                while True:
                    kind, value, more = requests.get()
                    if kind == "query":
                        replies.put((yield Query(value, more)))
                    elif kind == "error":
                        raise value
                    else:
                        y, extra, finished = value, more, True
                        break
            finally:
                if not finished:  # the driver stopped early or the solve failed: release the worker
                    replies.put(None)
                worker.join()
            yield Step(i, unflat(y), grid[i + 1])
        return unflat(y)

"""``Driver``: the one runner of the sampler protocol (DESIGN §4, §8).

A sampler's ``run`` is a generator that yields ``Query(x, t)`` for each network evaluation and ``Step``
after each step. Whoever answers the queries, a ``Driver`` does the rest: it checks what the sampler
yields, counts one NFE per answered query and the steps, guards the state against NaN/Inf, sets each
step's NFE, calls the caller's ``on_step`` and closes the generator. Its callers only evaluate:

- ``revsde.sample`` answers every query with one network call (``drive``);
- ``kernels.run_batched`` keeps a driver per generator and answers all pending queries at once
  (``start`` / ``answer``);
- ``RevSDEScheduler`` answers one query per diffusers ``step()`` (``start`` / ``answer`` / ``stop``);
- Denoising MCMC runs its integrator inside its own run (``relay``): the queries go up to the outer
  driver, which answers and guards them.

The NaN guard costs one reduction per step (the state's sum: a finite sum proves every element
finite, and NaN and ±Inf reach it); only a sum that is not finite (or overflowed) takes the exact
per-sample check, which names the samples. On CPU a step is checked at once; on other devices the
verdicts stay on the device and are read together every ``every`` steps and when the run ends.
"""
from __future__ import annotations

import cmath
from typing import Callable

import torch

from .base import Query, Step


class NonFiniteStateError(FloatingPointError):
    """The sampler's state became NaN or Inf; ``step`` and ``samples`` say where, when the guard knows."""

    def __init__(self, message: str, *, step: int | None = None, samples: list[int] | None = None):
        super().__init__(message)
        self.step, self.samples = step, samples


def non_finite_samples(x: torch.Tensor) -> list[int]:
    """The exact per-sample check: the samples (rows of a ``(B, …)`` state) holding a NaN or an Inf."""
    return (~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)).nonzero().flatten().tolist()


def non_finite(x: torch.Tensor) -> list[int]:
    """``non_finite_samples`` at the cost of one sum read on the host when the state is finite."""
    return [] if cmath.isfinite(x.sum().item()) else non_finite_samples(x)


def _samples(bad: list[int], batch: int) -> str:
    shown = ", ".join(map(str, bad[:8])) + (", …" if len(bad) > 8 else "")
    return f"sample{'s' if len(bad) > 1 else ''} {shown} of {batch}"


def _state_error(name: str, i: int, t, nfe: int, bad: list[int], batch: int) -> NonFiniteStateError:
    t = torch.as_tensor(t)
    lo, hi = float(t.min()), float(t.max())
    when = f"{lo:.6g}" if lo == hi else f"{lo:.6g}..{hi:.6g}"
    return NonFiniteStateError(
        f"sampler {name!r}: the state became NaN/Inf at step {i} (t = {when}, NFE {nfe}) in {_samples(bad, batch)}; "
        "try more steps, a data-prediction sampler, or check the network's output", step=i, samples=bad)


class FiniteGuard:
    """The NaN guard of one run named ``name``: call it with each ``Step`` and the NFE so far.

    On CPU each step is checked at once (a read costs no sync there); on other devices each step's
    verdict (one sum) stays on the device with its state, and they are read together every ``every``
    steps and at ``flush()``, which reports the first failing step as the check at once would.
    """

    def __init__(self, name: str, device, every: int = 16):
        self.name = name
        self.every = 1 if torch.device(device).type == "cpu" else every
        self._pending: list[tuple] = []

    def __call__(self, step: Step, nfe: int) -> None:
        if self.every == 1:
            self._report(step.i, step.t, step.x, nfe, non_finite(step.x))
            return
        self._pending.append((torch.isfinite(step.x.sum()), step.i, step.t, step.x, nfe))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Read the waiting verdicts (one host sync) and raise for the first step that went non-finite."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ok = torch.stack([p[0] for p in pending])
        if not bool(ok.all()):
            for k in (~ok).nonzero().flatten().tolist():  # a sum may overflow: the exact check decides
                _, i, t, x, nfe = pending[k]
                self._report(i, t, x, nfe, non_finite_samples(x))

    def _report(self, i: int, t, x: torch.Tensor, nfe: int, bad: list[int]) -> None:
        if bad:
            raise _state_error(self.name, i, t, nfe, bad, x.shape[0])


class Driver:
    """Runs one sampler generator ``run``; the caller answers its queries with predictions.

    ``name`` names the sampler in the NaN guard's messages (``"sampler 'mrs': …"``), ``label`` the
    yielder in a type error (default ``"sampler 'mrs'"``); ``on_step(step)`` sees every ``Step`` after the
    guard, with ``step.nfe`` set; ``guard=False`` leaves the guard to an outer driver (``relay``).
    ``rows``, when set, makes the guard watch only the first ``rows`` samples.

    State: ``query`` (the pending ``Query``, ``None`` once the run has ended), ``nfe`` (queries answered),
    ``steps``, ``done`` and ``result`` (what the run returned).
    """

    def __init__(self, run, name: str, *, label: str | None = None, on_step: Callable[[Step], None] | None = None,
                 guard: bool = True, every: int = 16):
        self.run, self.name = run, name
        self.label = f"sampler {name!r}" if label is None else label
        self.on_step, self._guarded, self._every = on_step, guard, every
        self.guard: FiniteGuard | None = None  # made at the first step, on its state's device
        self.rows: int | None = None
        self.query: Query | None = None
        self.nfe = self.steps = 0
        self.done, self.result = False, None

    # --- one query at a time --------------------------------------------------------------------------
    def start(self) -> Query | None:
        """Run the sampler to its first query; ``None`` if it ended without one (then see ``result``)."""
        return self._to_query(None)

    def answer(self, pred) -> Query | None:
        """Answer the pending query with ``pred`` (one NFE) and run to the next query; ``None`` at the end."""
        self.nfe += 1
        return self._to_query(pred)

    def stop(self, result) -> None:
        """End the run with ``result`` computed from the pending query's answer (one NFE) instead of sending
        it: diffusers' ``final_sigmas_type="zero"`` returns the last evaluation's x̂₀."""
        self.nfe += 1
        self.run.close()
        self._end(result)

    def close(self) -> None:
        self.run.close()

    # --- whole runs -------------------------------------------------------------------------------------
    def drive(self, evaluate: Callable[[Query], object]):
        """Run to the end, answering each query with ``evaluate(query)``; returns the run's result."""
        try:
            query = self.start()
            while query is not None:
                query = self.answer(evaluate(query))
        finally:
            self.close()
        return self.result

    def relay(self):
        """This run inside another sampler's run (``result = yield from driver.relay()``): each query goes up
        to the outer driver and its answer comes back down (counted here as NFE); each step goes up after
        ``on_step``, for the outer driver to guard and count."""
        try:
            request = self._next(None)
            while request is not None:
                if isinstance(request, Query):
                    pred = yield request
                    self.nfe += 1
                    request = self._next(pred)
                else:
                    yield request
                    request = self._next(None)
        finally:
            self.close()
        return self.result

    # --- checks -----------------------------------------------------------------------------------------
    def check(self, step: Step) -> None:
        """The NaN guard on a state the run did not yield as a step (a scheduler's final x̂₀), at once."""
        bad = non_finite(step.x)
        if bad:
            raise _state_error(self.name, step.i, step.t, self.nfe, bad, step.x.shape[0])

    def check_result(self) -> None:
        """Raise if the run's result is NaN/Inf (a sampler may return something other than its last step)."""
        bad = non_finite(self.result)
        if bad:
            raise NonFiniteStateError(f"sampler {self.name!r} returned a NaN/Inf state (NFE {self.nfe}) in "
                                      f"{_samples(bad, self.result.shape[0])}", samples=bad)

    # --- the protocol -----------------------------------------------------------------------------------
    def _to_query(self, message) -> Query | None:
        request = self._next(message)
        while isinstance(request, Step):
            request = self._next(None)
        return request

    def _next(self, message) -> Query | Step | None:
        """Send ``message``; the checked request that comes back (a step already handled), or ``None`` at the end."""
        try:
            request = self.run.send(message)
        except StopIteration as stop:
            self._end(stop.value)
            return None
        if isinstance(request, Step):
            self._step(request)
        elif isinstance(request, Query):
            self.query = request
        else:
            raise TypeError(f"{self.label} yielded {type(request).__name__}; expected Query or Step")
        return request

    def _step(self, step: Step) -> None:
        if self._guarded:
            if self.guard is None:
                self.guard = FiniteGuard(self.name, step.x.device, self._every)
            watched = step if self.rows is None else Step(step.i, step.x[:self.rows], step.t[:self.rows])
            self.guard(watched, self.nfe)
        self.steps += 1
        step.nfe = self.nfe
        if self.on_step is not None:
            self.on_step(step)

    def _end(self, result) -> None:
        self.done, self.result, self.query = True, result, None
        if self.guard is not None:
            self.guard.flush()

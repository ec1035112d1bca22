"""The sampler protocol (DESIGN §4): a sampler's ``run`` is a generator.

Each network evaluation is written ``pred = yield Query(x, t)``; the driver answers with a
``Prediction``. After each step the sampler yields ``Step(i, x, t)`` so the driver can report
progress, call callbacks and guard against NaN; the driver answers ``None``. The generator returns
the final sample. The driver is ``samplers.driver.Driver``, whoever evaluates the network; the
``noise`` a run is given keeps the contract ``revsde.noise.NoiseSource``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar, Generator

import torch

from ..model import Prediction


class SamplingError(RuntimeError):
    """A sampler could not finish (for example an adaptive solver that ran out of steps)."""


@dataclass
class Query:
    """A request for one network evaluation at ``x`` and per-sample times ``t`` (shape ``(B,)``)."""

    x: torch.Tensor
    t: torch.Tensor


class Step:
    """The state after step ``i`` (0-based) at times ``t``; ``denoised`` is the latest x̂₀ if known.

    A sampler may pass the step's ``Prediction`` as ``denoised``: its x̂₀ is then computed only if someone
    reads it (a callback, a scheduler's ``pred_original_sample``), not at every step of every run.
    """

    __slots__ = ("i", "x", "t", "_denoised", "nfe")

    def __init__(self, i: int, x: torch.Tensor, t: torch.Tensor,
                 denoised: torch.Tensor | Prediction | None = None, nfe: int = 0):
        self.i, self.x, self.t, self._denoised, self.nfe = i, x, t, denoised, nfe

    @property
    def denoised(self) -> torch.Tensor | None:
        if isinstance(self._denoised, Prediction):
            self._denoised = self._denoised.data
        return self._denoised

    @denoised.setter
    def denoised(self, value) -> None:
        self._denoised = value

    def __repr__(self) -> str:
        return f"Step(i={self.i}, t={self.t!r}, nfe={self.nfe})"


Run = Generator[Query | Step, Prediction | None, torch.Tensor]


class Sampler:
    """Base class: subclasses set the class attributes and write ``run`` with the paper's update rule.

    ``kind`` is ``"ode"`` (deterministic, ``order`` = global order in the step size) or ``"sde"``
    (``order`` = strong order with additive noise; ``None`` where no strong order exists, as with
    Langevin correctors whose noise is not part of the Brownian path).
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    order: ClassVar[float | None]
    evals_per_step: ClassVar[int | None]
    adaptive: ClassVar[bool] = False
    #: whether sample b depends only on its own generator (not on the rest of the batch)
    batch_independent: ClassVar[bool] = True
    default_grid: ClassVar[str] = "uniform_t"

    def run(self, sde, grid: torch.Tensor, x: torch.Tensor, mu: torch.Tensor | None, noise) -> Run:
        raise NotImplementedError

    def query_times(self, grid: torch.Tensor) -> torch.Tensor:
        """Evaluation times known in advance (one row per network call), for step-by-step drivers."""
        if self.adaptive:
            raise ValueError(f"sampler {self.name!r} is adaptive: its evaluation times are not known in advance")
        return grid[:-1].repeat_interleave(self.evals_per_step, dim=0)

    def options(self) -> dict:
        """The sampler's options and their current values."""
        return {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters if k != "self"}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def check_choice(sampler: str, option: str, value, valid) -> object:
    if value not in valid:
        shown = ", ".join(repr(v) for v in valid)
        raise ValueError(f"sampler {sampler!r} supports {option} in {{{shown}}} (got {value!r})")
    return value


def check_number(sampler: str, option: str, value, *, minimum=None, integer=False, strict=False):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"sampler {sampler!r} needs {option} to be {kind}{bound} (got {value!r})")
    return value

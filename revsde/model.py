"""A network and its parameterisation: ``ScoreModel`` calls the net, ``Prediction`` converts its output.

With ``y = x − μ``, ``y = α y_0 + σ ε`` for every SDE, so
  noise ``ε``, data ``x_0 = μ + (y − σ ε)/α``, score ``−ε/σ``, and velocity
  ``v = (α c ε − σ y_0 / c) / r`` with ``c = sde.velocity_scale`` and ``r = sqrt(α² + σ²/c²)``.
For VP (c = 1, r = 1) this is Salimans & Ho's ``v = α ε − σ x_0``; for MR (c = λ, r = 1) it is the MR
Sampler's ``v = α λ ε − (σ/λ)(x_0 − μ)``. The flow is the path's time derivative
``u = α′ y_0 + σ′ ε`` (``ε − x_0`` for rectified flow, flow matching's target); with
``y = α y_0 + σ ε`` it gives ``y_0 = (σ′ y − σ u)/D`` and ``ε = (α u − α′ y)/D``, ``D = α σ′ − σ α′``.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from .tensors import as_time, bcast, real_dtype

PREDICTIONS = ("noise", "data", "score", "velocity", "flow")


def check_prediction(kind: str) -> str:
    if kind not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)} (got {kind!r})")
    return kind


class Prediction:
    """One network output at ``(x, t)``, convertible exactly to noise / data / score / velocity / flow."""

    def __init__(self, kind: str, value: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sde,
                 mu: torch.Tensor | None = None):
        self.kind = check_prediction(kind)
        self.x, self.t, self.sde, self.mu = x, t, sde, mu
        self._cache = {kind: value}

    @property
    def _alpha(self) -> torch.Tensor:
        """``α_t`` broadcast against x (computed on first use: a flow output's conversions need none)."""
        if "_a" not in self.__dict__:
            self._a = bcast(self.sde.alpha(self.t), self.x)
        return self._a

    @property
    def _sigma(self) -> torch.Tensor:
        if "_s" not in self.__dict__:
            self._s = bcast(self.sde.sigma(self.t), self.x)
        return self._s

    @property
    def y(self) -> torch.Tensor:
        return self.x if self.mu is None else self.x - self.mu

    def _velocity_frame(self):
        c = self.sde.velocity_scale
        r = torch.sqrt(self._alpha**2 + (self._sigma / c) ** 2)
        return c, r

    @property
    def noise(self) -> torch.Tensor:
        if "noise" not in self._cache:
            a, s = self._alpha, self._sigma
            if self.kind == "data":
                y0 = self._cache["data"] if self.mu is None else self._cache["data"] - self.mu
                eps = (self.y - a * y0) / s
            elif self.kind == "score":
                eps = -s * self._cache["score"]
            elif self.kind == "flow":
                eps = self.sde.noise_from_flow(self.y, self._cache["flow"], self.t)
            else:  # velocity: solve y = α y0 + σ ε, r v = α c ε − (σ/c) y0 for ε
                c, r = self._velocity_frame()
                eps = (a * r * self._cache["velocity"] + (s / c) * self.y) / (c * r**2)
            self._cache["noise"] = eps
        return self._cache["noise"]

    @property
    def data(self) -> torch.Tensor:
        if "data" not in self._cache:
            a, s = self._alpha, self._sigma
            if self.kind == "velocity":
                c, r = self._velocity_frame()
                y0 = (a * c * self.y - s * r * self._cache["velocity"]) / (c * r**2)
            elif self.kind == "flow":  # finite where α = 0 (rectified flow at t = 1), unlike (y − σ ε)/α
                y0 = self.sde.data_from_flow(self.y, self._cache["flow"], self.t)
            else:
                y0 = (self.y - s * self.noise) / a
            self._cache["data"] = y0 if self.mu is None else y0 + self.mu
        return self._cache["data"]

    @property
    def score(self) -> torch.Tensor:
        if "score" not in self._cache:
            self._cache["score"] = -self.noise / self._sigma
        return self._cache["score"]

    @property
    def velocity(self) -> torch.Tensor:
        if "velocity" not in self._cache:
            c, r = self._velocity_frame()
            y0 = self.data if self.mu is None else self.data - self.mu
            self._cache["velocity"] = (self._alpha * c * self.noise - self._sigma * y0 / c) / r
        return self._cache["velocity"]

    @property
    def flow(self) -> torch.Tensor:
        if "flow" not in self._cache:
            a_dot = bcast(self.sde.alpha_dot(self.t), self.x)
            s_dot = bcast(self.sde.sigma_dot(self.t), self.x)
            y0 = self.data if self.mu is None else self.data - self.mu
            self._cache["flow"] = a_dot * y0 + s_dot * self.noise
        return self._cache["flow"]

    def __getitem__(self, kind: str) -> torch.Tensor:
        return getattr(self, check_prediction(kind))


class ScoreModel:
    """A network with its SDE and parameterisation.

    The network is called as ``net(x, time_fn(t), **cond)`` (``mu=mu`` added to ``cond`` when a μ is
    given); ``time_fn`` defaults to ``sde.model_time``. ``dtype`` casts the network's inputs (e.g.
    float16: ``x``, the time, and every ``cond`` tensor of the state's dtype such as μ) while the solver
    state keeps its own dtype.

    Classifier-free guidance: with ``guidance_scale=w`` the network sees the batch twice in one call,
    conditional then unconditional (``uncond`` gives the unconditional values of ``cond`` keys, e.g.
    ``{"class_labels": null_labels}``; keys it does not name are shared), and the output is
    ``u + w (c − u)`` in the network's own parameterisation (linear in it, so the same for every
    ``prediction``). ``w = 1`` is the conditional model.
    """

    def __init__(self, net: Callable, sde, prediction: str = "noise", *, time_fn: Callable | None = None,
                 dtype: torch.dtype | None = None, guidance_scale: float | None = None,
                 uncond: dict | None = None):
        self.net, self.sde = net, sde
        self.prediction = check_prediction(prediction)
        self.time_fn = time_fn if time_fn is not None else sde.model_time
        self.dtype = dtype
        if guidance_scale is not None and (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float))):
            raise ValueError(f"guidance_scale must be a number (got {guidance_scale!r})")
        if (guidance_scale is None) != (uncond is None):
            raise ValueError("classifier-free guidance needs both guidance_scale and uncond (the unconditional "
                             "values of the cond inputs, e.g. uncond={'class_labels': null_labels})")
        self.guidance_scale, self.uncond = guidance_scale, uncond

    def graphed(self) -> "ScoreModel":
        """This model with its network replayed from CUDA graphs (``revsde.kernels.GraphedModel``):
        built once and kept, so later runs reuse the graphs already captured."""
        from .graphs import GraphedModel

        if isinstance(self.net, GraphedModel):
            return self
        if self.__dict__.get("_graphed") is None:
            clone = copy.copy(self)
            clone.net = GraphedModel(self.net)
            self._graphed = clone
        return self._graphed

    def __call__(self, x: torch.Tensor, t, mu: torch.Tensor | None = None, **cond) -> Prediction:
        t = as_time(t, like=x)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return Prediction(self.prediction, self.output(x, t, mu, **cond), x, t, self.sde, mu)

    def output(self, x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor | None = None, **cond) -> torch.Tensor:
        """The network's raw output at ``x`` and per-sample times ``t`` (``(B,)``), in ``x``'s dtype."""
        if mu is not None:
            cond = {**cond, "mu": mu}
        x_in = x if self.dtype is None else x.to(self.dtype)
        if self.dtype is not None:  # μ and other state-dtype inputs are network inputs as much as x is
            cond = {k: v.to(self.dtype) if torch.is_tensor(v) and v.dtype == x.dtype else v
                    for k, v in cond.items()}
        time_in = self.time_fn(t)
        if torch.is_tensor(time_in) and time_in.is_floating_point():
            time_in = time_in.to(real_dtype(x_in.dtype))
        if self.guidance_scale is None:
            return self.net(x_in, time_in, **cond).to(x.dtype)
        both = self.net(torch.cat([x_in, x_in]), _twice(time_in, x.shape[0]), **self._both_branches(cond, x))
        c, u = both.to(x.dtype).chunk(2)
        return u + self.guidance_scale * (c - u)

    def _both_branches(self, cond: dict, x: torch.Tensor) -> dict:
        """Each cond input for the doubled batch: its value, then its unconditional value."""
        missing = sorted(set(self.uncond) - set(cond))
        if missing:
            raise ValueError(f"uncond names {missing}, which this call's cond does not give "
                             f"(cond keys: {sorted(cond)})")
        batch = x.shape[0]
        merged = {}
        for key, value in cond.items():
            other = self.uncond.get(key, value)
            if not (torch.is_tensor(value) and torch.is_tensor(other)):
                if key in self.uncond:
                    raise ValueError(f"cond {key!r} and its uncond value must be tensors to batch both branches")
                merged[key] = value  # shared non-tensor input
                continue
            merged[key] = torch.cat([_per_row(value, batch), _per_row(other, batch).to(value.dtype)])
        return merged


def _per_row(v: torch.Tensor, batch: int) -> torch.Tensor:
    """``v`` with a leading batch dimension of ``batch`` (a 0-d or size-1 leading dim is expanded)."""
    if v.ndim == 0:
        return v.expand(batch)
    return v if v.shape[0] == batch else v.expand(batch, *v.shape[1:])


def _twice(time_in, batch: int):
    if torch.is_tensor(time_in) and time_in.ndim > 0:
        return torch.cat([time_in, time_in])
    return time_in

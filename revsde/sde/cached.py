"""``GridCoefficients``: an SDE whose time functions are computed once for a whole grid.

A sampler asks for ``α``, ``σ``, ``λ``, … at the grid's rows several times per step; the driver
hands it this view instead of the SDE, so each function is evaluated once, vectorised over the
``(N+1, B)`` grid, on the grid's device (no host round trips), and later calls at a grid row
are a lookup. Any other time (a Runge–Kutta midpoint) is computed by the SDE as usual, and every
other attribute is the SDE's own.
"""
from __future__ import annotations

import inspect
import types

import torch

#: the time functions served from the cache
CACHED = ("log_alpha", "alpha", "sigma", "log_snr", "f", "g2", "model_time", "alpha_dot", "sigma_dot")


def _key(t: torch.Tensor):
    # While the grid lives, no other tensor can start at one of its rows' addresses unless it views
    # the grid itself; the shape tells a row from other views of it.
    return t.data_ptr(), t.shape


class GridCoefficients:
    """``sde`` with ``CACHED`` functions precomputed on ``grid`` (rows recognised by their storage:
    ``grid[i]`` is served from the cache, an equal tensor elsewhere is computed)."""

    def __init__(self, sde, grid: torch.Tensor):
        self.sde, self.grid = sde, grid
        self._rows = {_key(grid[i]): i for i in range(grid.shape[0])}
        self._values: dict[str, torch.Tensor] = {}

    def __getattr__(self, name):
        # The SDE's own methods run with this view as ``self``, so the time functions they call
        # (``reverse_drift`` calls ``f`` and ``g2``; ``transition`` calls ``log_alpha``) hit the cache too.
        raw = inspect.getattr_static(type(self.sde), name, None)
        if isinstance(raw, types.FunctionType):
            return raw.__get__(self, type(self))
        return getattr(self.sde, name)

    def _lookup(self, name: str, t):
        if torch.is_tensor(t):
            i = self._rows.get(_key(t))
            if i is not None:
                values = self._values.get(name)
                if values is None:
                    values = self._values[name] = getattr(self.sde, name)(self.grid)
                return values[i]
        return getattr(self.sde, name)(t)

    def __repr__(self) -> str:
        return f"GridCoefficients({self.sde!r}, {self.grid.shape[0] - 1} steps)"


def _cached_method(name: str):
    def method(self, t):
        return self._lookup(name, t)

    method.__name__ = name
    method.__doc__ = f"``{name}(t)``, from the cache at a grid row."
    return method


for _name in CACHED:
    setattr(GridCoefficients, _name, _cached_method(_name))

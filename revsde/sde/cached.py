"""``GridCoefficients``: an SDE whose time functions are computed once for a whole grid.

A sampler asks for ``α``, ``σ``, ``λ``, … at the grid's rows several times per step; the driver
hands it this view instead of the SDE, so each function is evaluated once, vectorised over the
``(N+1, B)`` grid, on the grid's device (no host round trips), and later calls at a grid row
are a lookup; a call on consecutive rows (the whole grid, ``grid[:-1]``, ``grid[1:]``) returns those rows
of the table (a sampler's per-step coefficients, planned up front, equal to the values at each row). Any other time (a Runge–Kutta midpoint) is computed by the SDE as usual, and every
other attribute is the SDE's own.

The network's time input is served the same way: ``ScoreModel`` calls the SDE's own ``model_time``
(not the view's), so every ``LinearSDE`` subclass's ``model_time`` is wrapped by ``served_from_grid``,
which answers a row of a live view of that SDE from the view's table.
"""
from __future__ import annotations

import functools
import inspect
import types
import weakref

import torch

#: the time functions served from the cache
CACHED = ("log_alpha", "alpha", "sigma", "log_snr", "f", "g2", "model_time", "alpha_dot", "sigma_dot")

#: the live views of each SDE (weak both ways: a view ends with its run, an SDE with its last user)
_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _key(t: torch.Tensor):
    # While the grid lives, no other tensor can start at one of its rows' addresses unless it views
    # the grid itself; the shape tells a row from other views of it.
    return t.data_ptr(), t.shape


class GridCoefficients:
    """``sde`` with ``CACHED`` functions precomputed on ``grid`` (rows recognised by their storage:
    ``grid[i]`` is served from the cache, an equal tensor elsewhere is computed; a block of consecutive
    rows gets those rows of the table)."""

    def __init__(self, sde, grid: torch.Tensor):
        if isinstance(sde, GridCoefficients):  # a view on other times of the same SDE
            sde = sde.sde
        self.sde, self.grid = sde, grid
        self._rows = {_key(grid[i]): i for i in range(grid.shape[0])}
        self._starts = {grid[i].data_ptr(): i for i in range(grid.shape[0])}
        self._values: dict[str, torch.Tensor] = {}
        self._row_values: dict[str, tuple[torch.Tensor, ...]] = {}
        try:
            views = _VIEWS.setdefault(sde, [])
        except TypeError:  # an SDE that takes no weak reference: its model_time is computed each time
            return
        views[:] = [ref for ref in views if ref() is not None]
        views.append(weakref.ref(self))

    def __getattr__(self, name):
        # The SDE's own methods run with this view as ``self``, so the time functions they call
        # (``reverse_drift`` calls ``f`` and ``g2``; ``transition`` calls ``log_alpha``) hit the cache too.
        raw = _function(type(self.sde), name)
        if raw is not None:
            return types.MethodType(raw, self)
        return getattr(self.sde, name)

    def serves(self, t) -> bool:
        """Whether ``t`` is one of the grid's rows."""
        return torch.is_tensor(t) and _key(t) in self._rows

    def _table(self, name: str) -> torch.Tensor:
        values = self._values.get(name)
        if values is None:
            values = self._values[name] = getattr(self.sde, name)(self.grid)
            self._row_values[name] = values.unbind(0)  # each row's view made once
        return values

    def _lookup(self, name: str, t):
        if torch.is_tensor(t):
            i = self._rows.get(_key(t))
            if i is not None:
                rows = self._row_values.get(name)
                if rows is None:
                    self._table(name)
                    rows = self._row_values[name]
                return rows[i]
            rows = self._block(t)
            if rows is not None:
                return self._table(name)[rows]
        return getattr(self.sde, name)(t)

    def _block(self, t: torch.Tensor) -> slice | None:
        """The rows ``t`` is, when it is a block of consecutive rows of the grid (``grid``, ``grid[:-1]``,
        ``grid[1:]``: a plan's tables), else None."""
        i = self._starts.get(t.data_ptr())
        grid = self.grid
        if (i is None or t.ndim != grid.ndim or t.shape[1:] != grid.shape[1:] or t.stride() != grid.stride()
                or i + t.shape[0] > grid.shape[0]):
            return None
        return slice(i, i + t.shape[0])

    def __repr__(self) -> str:
        return f"GridCoefficients({self.sde!r}, {self.grid.shape[0] - 1} steps)"


@functools.lru_cache(maxsize=None)
def _function(cls, name: str):
    """``cls``'s plain function ``name`` (None for anything else), looked up once per class and name."""
    raw = inspect.getattr_static(cls, name, None)
    return raw if isinstance(raw, types.FunctionType) else None


def _cached_method(name: str):
    def method(self, t):
        return self._lookup(name, t)

    method.__name__ = name
    method.__doc__ = f"``{name}(t)``, from the cache at a grid row."
    return method


for _name in CACHED:
    setattr(GridCoefficients, _name, _cached_method(_name))


def served_from_grid(model_time):
    """``model_time`` answering a row of a live ``GridCoefficients`` view of the same SDE from the view's
    table (``ScoreModel`` calls the SDE's own method with the query's time, a grid row in every fixed-step
    run), and computing any other time as before."""

    @functools.wraps(model_time)
    def served(self, t):
        views = _VIEWS.get(self) if torch.is_tensor(t) else None
        if views:
            for ref in reversed(views):  # the newest run first
                view = ref()
                if view is not None and view.serves(t):
                    return view.model_time(t)
        return model_time(self, t)

    served.served_from_grid = True
    return served

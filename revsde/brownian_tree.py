"""``BrownianTree``: one Brownian path per sample, all samples queried in one vectorised descent.

A virtual Brownian tree (Gaines & Lyons 1997; Li et al. 2020) over ``[t0, t1]`` cut in ``2^depth`` cells: the
root draws the whole interval's increment W and space-time Lévy area H, and every split draws its halves'
(W, H) from their exact law given the parent's (Foster 2020; torchsde's ``BrownianInterval`` uses the same
formulas), from two normals of the sample's Philox key at the split's node (``revsde.philox``, purpose
``"brownian"``). A point query descends the tree to the cell of its time, carrying ``W(a)`` and
``I(a) = ∫_{t0}^{a} W dr`` at the cell's start, so each sample goes its own way with one Philox call per level
for the whole batch. A sample's path is a function of its key only: the same at every step count and in
every batch. Query times are snapped to the cells' corners (``tol`` sets the depth).
"""
from __future__ import annotations

import math

import torch

from .philox import PhiloxGenerator, block_normals
from .tensors import as_time

MAX_DEPTH = 52
#: normals drawn at once in a descent (levels in chunks under it)
CHUNK_NORMALS = 1 << 16


class BrownianTree:
    """Increments of a fixed Brownian path per sample on ``[t0, t1]``, keyed by ``generator``'s keys.

    Called as ``noise(t0, t1)`` it returns ``(W(t_hi) − W(t_lo)) / sqrt(t_hi − t_lo)`` per sample (times
    ``(B,)`` or numbers); ``increment(t0, t1, return_U)`` gives the unnormalised increment and the space-time
    Lévy area ``U = ∫ (W(r) − W(t_lo)) dr``; ``fresh()`` is the generator's next Gaussian draw (no part of
    the path). Complex states get circular complex increments, E|ΔW|² = Δt.
    """

    def __init__(self, shape: tuple, t0: float, t1: float, generator: PhiloxGenerator, *, dtype=torch.float32,
                 device=None, tol: float = 1e-7):
        self.shape, self.dtype, self.device, self.generator = tuple(shape), dtype, device, generator
        if len(generator) != self.shape[0]:
            raise ValueError(f"a Philox generator of {len(generator)} samples for a batch of {self.shape[0]}")
        self.t0, self.t1 = float(min(t0, t1)), float(max(t0, t1))
        span = self.t1 - self.t0
        if not span > 0:
            raise ValueError(f"a Brownian path needs t0 < t1 (got {t0}, {t1})")
        self.depth = min(MAX_DEPTH, max(1, math.ceil(math.log2(span / tol))))
        self.cell = span / 2**self.depth
        self._count = math.prod(self.shape[1:]) * (2 if dtype.is_complex else 1)
        self._points: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []  # the last queries

    def _normals(self, nodes: torch.Tensor):
        """The two normals (X1, X2) of each node of ``nodes`` (``(B, L)`` heap indices), level by level, in
        chunks of levels that keep the draw under ``CHUNK_NORMALS`` numbers."""
        g = self.generator
        step = max(1, CHUNK_NORMALS // (2 * len(g) * self._count))
        for start in range(0, nodes.shape[1], step):
            z = block_normals(g.keys, nodes[:, start:start + step], self._count, purpose="brownian",
                              schedule=g.schedule)
            yield from zip(z[0].unbind(1), z[1].unbind(1))

    def _point(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``W`` and ``I = ∫_{t0} W dr`` at the cell corners ``t0 + k · cell`` (``k``: ``(B,)``, 0 to 2^depth)."""
        for seen, values in self._points:
            if torch.equal(seen, k):
                return values
        last = 2**self.depth
        cell_index = k.clamp(max=last - 1)
        # node 0 draws the root's W and H; level l splits the node 2^l + (the cell's first l bits)
        levels = torch.arange(self.depth, dtype=torch.int64, device=k.device)
        first_bits = cell_index[:, None] >> (self.depth - levels)
        splits = torch.bitwise_left_shift(torch.ones_like(levels), levels) + first_bits
        draws = self._normals(torch.cat([torch.zeros_like(cell_index)[:, None], splits], 1))
        dt = self.t1 - self.t0
        x1, x2 = next(draws)
        w, area = math.sqrt(dt) * x1, math.sqrt(dt / 12) * x2  # the cell's increment W and space-time area H
        w_a, i_a = torch.zeros_like(w), torch.zeros_like(w)  # W and its integral at the cell's start a
        for level, (x1, x2) in enumerate(draws):
            right = ((cell_index >> (self.depth - 1 - level)) & 1).bool()[:, None]
            # the halves' (W, H) given the cell's: the exact Gaussian bridge of (W, H) at the midpoint
            w_left = 0.5 * w + 1.5 * area + (math.sqrt(dt) / 4) * x1
            area_mean = 0.25 * area - (math.sqrt(dt) / 8) * x1
            area_split = (math.sqrt(dt / 3) / 4) * x2
            u_left = (dt / 2) * (area_mean + area_split + 0.5 * w_left)  # ∫ (W − W(a)) over the left half
            i_a = torch.where(right, i_a + (dt / 2) * w_a + u_left, i_a)
            w_a = torch.where(right, w_a + w_left, w_a)
            w = torch.where(right, w - w_left, w_left)
            area = torch.where(right, area_mean - area_split, area_mean + area_split)
            dt = dt / 2
        end = (k == last)[:, None]  # t1 itself: the end of the last cell
        values = (torch.where(end, w_a + w, w_a),
                  torch.where(end, i_a + dt * w_a + dt * (area + 0.5 * w), i_a))
        self._points = [*self._points[-2:], (k.clone(), values)]  # a step shares a point with the one before
        return values

    def _sample(self, t0, t1, return_U: bool):
        a, b = as_time(t0).flatten().cpu(), as_time(t1).flatten().cpu()
        batch = self.shape[0]
        lo = torch.minimum(a, b).clamp(self.t0, self.t1).expand(batch)
        hi = torch.maximum(a, b).clamp(self.t0, self.t1).expand(batch)
        cells = 2**self.depth
        k_lo = torch.round((lo - self.t0) / (self.t1 - self.t0) * cells).to(torch.int64)
        k_hi = torch.round((hi - self.t0) / (self.t1 - self.t0) * cells).to(torch.int64)
        device = self.generator.device
        (w_lo, i_lo), (w_hi, i_hi) = self._point(k_lo.to(device)), self._point(k_hi.to(device))
        w = w_hi - w_lo
        if not return_U:
            return w, None, lo, hi
        span = ((k_hi - k_lo).to(torch.float64) * self.cell).to(device)[:, None]  # between the snapped times
        return w, i_hi - i_lo - span * w_lo, lo, hi

    def __call__(self, t0, t1) -> torch.Tensor:
        # divided by the asked length, as the sampler multiplies by it: its steps add up to the path exactly
        w, _, lo, hi = self._sample(t0, t1, return_U=False)
        return self._finish(w * (hi - lo).clamp(min=1e-300).rsqrt().to(w.device)[:, None])

    def increment(self, t0, t1, return_U: bool = False):
        """Unnormalised ``W(t_hi) − W(t_lo)`` and, with ``return_U``, ``U = ∫ (W(r) − W(t_lo)) dr`` over
        ``[t_lo, t_hi]`` (torchsde's convention)."""
        w, u, _, _ = self._sample(t0, t1, return_U)
        return (self._finish(w), self._finish(u)) if return_U else self._finish(w)

    def _finish(self, v: torch.Tensor) -> torch.Tensor:
        if self.dtype.is_complex:
            v = torch.view_as_complex(v.reshape(-1, self._count // 2, 2) / 2**0.5)
        return v.reshape(self.shape).to(dtype=self.dtype, device=self.device)

    def fresh(self) -> torch.Tensor:
        return self.generator.normal(self.shape, dtype=self.dtype, device=self.device)

    @property
    def generators(self) -> list[PhiloxGenerator]:
        """The generator of ``fresh()`` (the path itself is fixed by its keys)."""
        return [self.generator]

    def entropy(self) -> list[int]:
        return self.generator.keys.tolist()

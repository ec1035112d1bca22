"""Noise sources for samplers: ``noise(t0, t1)`` returns a standard normal of the state's shape.

No sampler calls ``torch.randn`` itself. ``NoiseSource`` is the contract a sampler relies on.
``GaussianNoise`` draws fresh normals from a ``PhiloxGenerator`` (``revsde.philox``: one counter-based stream
per sample, all drawn in one vectorised call; what ``seed=`` gives), from per-sample torch generators,
or from one batch generator; with either of the first two a sample never depends on its batch.
``BrownianTree`` (Philox keys) and ``BrownianNoise`` (``torchsde.BrownianInterval`` in tree mode, from torch
generators) return normalised increments ``(W(t_hi) − W(t_lo)) / sqrt(t_hi − t_lo)`` of a fixed Brownian
path, so the path is the same at every step count. ``fresh()`` gives normals that are not part of the path
(Langevin correctors). Complex states get circular complex normals, E|z|² = 1. ``make_noise`` builds either
by name (``NOISES``).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from .brownian_tree import BrownianTree
from .philox import PhiloxGenerator
from .tensors import as_time

Generators = PhiloxGenerator | torch.Generator | Sequence[torch.Generator] | None
#: the noise sources ``revsde.sample`` and ``RevSDEScheduler`` build by name
NOISES = ("gaussian", "brownian")


@runtime_checkable
class NoiseSource(Protocol):
    """What samplers ask of the noise source their ``run`` is given (DESIGN §4).

    - ``noise(t0, t1)``: a standard normal of the state's shape for the step from ``t0`` to ``t1``
      (``(B,)`` times or numbers); a Brownian source returns its path's increment over the step divided
      by ``sqrt(|t1 − t0|)``, so the same path serves every step count.
    - ``fresh()``: a standard normal that is no part of any path (Langevin correctors, Denoising MCMC's
      chains and level draws).
    - ``generators``: the generators whose states hold all the randomness the source has still to draw
      (a Brownian path is fixed by its seeds; its ``fresh()`` normals come from these): ``torch.Generator``
      objects, or a ``PhiloxGenerator`` (whose ``get_state`` / ``set_state`` save its draw index and keys
      the same way), or ``None`` if it has none to save. Denoising MCMC saves their states with its chains
      and restores them to resume; a source without this attribute is read as having none.

    A Brownian source may also offer ``increment(t0, t1, return_U=False)``: the unnormalised increment
    and, with ``return_U``, its space-time Lévy area, which the ``torchsde`` sampler's higher-order
    methods use where it exists (``BrownianTree``, ``BrownianNoise``).
    """

    def __call__(self, t0, t1) -> torch.Tensor: ...

    def fresh(self) -> torch.Tensor: ...

    @property
    def generators(self) -> list[torch.Generator | PhiloxGenerator] | None: ...


def generator_from_seed(seed: int | None, batch: int, device=None) -> PhiloxGenerator:
    """What ``seed=`` means: sample ``b`` draws from the Philox stream keyed ``seed + b`` (``None``: a seed
    from torch's global generator), all samples in one vectorised draw."""
    if seed is None:
        seed = int(torch.randint(2**31, ()))
    return PhiloxGenerator.from_seed(seed, batch, device)


def generators_from_seed(seed: int, batch: int, device=None) -> list[torch.Generator]:
    """EDM's scheme with torch generators: sample ``b`` draws from its own ``torch.Generator`` seeded
    ``seed + b`` (``generator=`` these to reproduce what ``seed=`` drew before the Philox streams)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return [torch.Generator(device=device).manual_seed(int(seed) + b) for b in range(batch)]


def randn(shape: tuple, generator: Generators = None, dtype=None, device=None) -> torch.Tensor:
    """Standard normals; with a list of generators, row ``b`` comes from generator ``b`` alone, and with a
    ``PhiloxGenerator`` from stream ``b`` (its next draw).

    A generator on another device than ``device`` (a CPU generator for a CUDA state) draws on its own
    device and the result is moved, so the numbers do not depend on where the state lives.
    """
    def draw(shape_, g):
        if g is None:
            return torch.randn(shape_, dtype=dtype, device=device)
        out = torch.randn(shape_, generator=g, dtype=dtype, device=g.device)
        return out if device is None else out.to(device)

    if isinstance(generator, PhiloxGenerator):
        return generator.normal(shape, dtype=dtype, device=device)
    if generator is None or isinstance(generator, torch.Generator):
        return draw(shape, generator)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}: give one per sample")
    return torch.stack([draw(shape[1:], g) for g in generator])


def check_generators(generator: Generators, batch: int) -> Generators:
    """``generator`` as given, a sequence of them as a list, refused unless it has one per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, PhiloxGenerator):
        if len(generator) != batch:
            raise ValueError(f"the Philox generator has {len(generator)} streams for a batch of {batch}")
        return generator
    generator = list(generator)
    if len(generator) != batch:
        raise ValueError(f"generator is a list of {len(generator)} for a batch of {batch}: give one per sample")
    return generator


def draw_entropy(generator: Generators, batch: int) -> list[int]:
    """Integer seeds drawn from the generators (one per sample, or ``batch`` from a single one); a Philox
    generator's are its keys."""
    if isinstance(generator, PhiloxGenerator):
        return generator.keys.tolist()
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randint(2**62, (batch,), generator=generator, device="cpu" if generator is None
                             else generator.device).tolist()
    return [int(torch.randint(2**62, (1,), generator=g, device=g.device)) for g in generator]


class GaussianNoise:
    """Fresh ``N(0, I)`` at every call, drawn from a Philox generator or per-sample torch generators (a
    sample never depends on its batch), or from one batch generator."""

    def __init__(self, shape: tuple, generator: Generators = None, dtype=torch.float32, device=None):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device

    def __call__(self, t0=None, t1=None) -> torch.Tensor:
        return randn(self.shape, self.generator, dtype=self.dtype, device=self.device)

    fresh = __call__

    @property
    def generators(self) -> list[torch.Generator | PhiloxGenerator] | None:
        gen = self.generator
        return None if gen is None else [gen] if isinstance(gen, (torch.Generator, PhiloxGenerator)) else list(gen)

    def entropy(self) -> list[int]:
        return draw_entropy(self.generator, self.shape[0])


class BrownianNoise:
    """Increments of one fixed Brownian path on ``[t0, t1]``.

    ``entropy`` is an int (one path of the whole batch: fast, but tied to the batch) or a list of
    ints, one path per sample (a sample never depends on its batch). ``tol`` is the tree's time
    resolution: queries closer than it are snapped.
    """

    def __init__(self, shape: tuple, t0: float, t1: float, entropy: int | Sequence[int] = 0, *,
                 dtype=torch.float32, device=None, tol: float = 1e-7):
        import torchsde

        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        self.t0, self.t1 = float(min(t0, t1)), float(max(t0, t1))
        self._complex = dtype.is_complex
        path_dtype = torch.float64
        per_sample = not isinstance(entropy, int)
        event = list(self.shape[1:] if per_sample else self.shape)
        if self._complex:
            event = event + [2]

        def interval(seed):
            return torchsde.BrownianInterval(self.t0, self.t1, size=tuple(event), dtype=path_dtype,
                                             device=device, entropy=int(seed), tol=tol, halfway_tree=True,
                                             levy_area_approximation="space-time")

        self._paths = [interval(s) for s in entropy] if per_sample else [interval(entropy)]
        self._per_sample = per_sample
        seeds = list(entropy) if per_sample else [entropy]
        self._fresh_gens = [torch.Generator().manual_seed((int(s) * 7919 + 17) % 2**63) for s in seeds]
        self.entropies = seeds

    def _sample(self, t0, t1, return_U: bool):
        """Per-sample ``W(hi) − W(lo)`` (and ``U``) on the path(s), the interval clipped to [t0, t1]."""
        a, b = as_time(t0).flatten().cpu(), as_time(t1).flatten().cpu()
        batch = self.shape[0]
        lo = torch.minimum(a, b).clamp(min=self.t0).expand(batch)
        hi = torch.maximum(a, b).clamp(max=self.t1).expand(batch)

        def query(path, l, h):
            out = path(float(l), float(h), return_U=return_U)
            return out if return_U else (out, None)

        if not self._per_sample and bool((lo == lo[0]).all() and (hi == hi[0]).all()):
            w, u = query(self._paths[0], lo[0], hi[0])
            return w, u, lo, hi
        # per-sample paths, or one batch path queried on each sample's own interval (keep its row)
        paths = self._paths if self._per_sample else self._paths * batch
        rows = [query(p, l, h) for p, l, h in zip(paths, lo, hi)]
        pick = (lambda v, i: v) if self._per_sample else (lambda v, i: v[i])
        w = torch.stack([pick(r[0], i) for i, r in enumerate(rows)])
        u = torch.stack([pick(r[1], i) for i, r in enumerate(rows)]) if return_U else None
        return w, u, lo, hi

    def __call__(self, t0, t1) -> torch.Tensor:
        w, _, lo, hi = self._sample(t0, t1, return_U=False)
        scale = (hi - lo).rsqrt().to(w.dtype).reshape(-1, *([1] * (w.ndim - 1)))
        return self._finish(w * scale, None, return_U=False)

    def increment(self, t0, t1, return_U: bool = False):
        """Unnormalised ``W(t_hi) − W(t_lo)`` and, with ``return_U``, the space-time Lévy area
        ``U = ∫ (W(r) − W(t_lo)) dr`` over ``[t_lo, t_hi]`` (torchsde's convention)."""
        w, u, _, _ = self._sample(t0, t1, return_U)
        return self._finish(w, u, return_U)

    def _finish(self, w, u, return_U):
        if self._complex:
            w = torch.view_as_complex(w.contiguous()) / 2**0.5
            u = None if u is None else torch.view_as_complex(u.contiguous()) / 2**0.5
        w = w.to(dtype=self.dtype, device=self.device)
        if not return_U:
            return w
        return w, u.to(dtype=self.dtype, device=self.device)

    def fresh(self) -> torch.Tensor:
        gens = self._fresh_gens if self._per_sample else self._fresh_gens[0]
        z = randn(self.shape, gens, dtype=self.dtype)
        return z.to(self.device)

    @property
    def generators(self) -> list[torch.Generator]:
        """The generators of ``fresh()`` (the path itself is fixed by the entropy)."""
        return list(self._fresh_gens)

    def entropy(self) -> list[int]:
        return list(self.entropies) if self._per_sample else [self.entropies[0] + b for b in range(self.shape[0])]


def make_noise(kind: str, shape: tuple, generator: Generators, grid: torch.Tensor, dtype=torch.float32,
               device=None) -> GaussianNoise | BrownianTree | BrownianNoise:
    """The noise source ``kind`` (one of ``NOISES``) of a run over the times of ``grid``: fresh normals from
    ``generator``, or a Brownian path over the grid's span per sample: a ``BrownianTree`` on a Philox
    generator's keys, else a torchsde path seeded from each sample's generator, or one path for the batch
    when ``generator`` is a single generator."""
    if kind == "gaussian":
        return GaussianNoise(shape, generator, dtype=dtype, device=device)
    if isinstance(generator, PhiloxGenerator):
        return BrownianTree(shape, float(grid.min()), float(grid.max()), generator, dtype=dtype, device=device)
    entropy = draw_entropy(generator, shape[0])
    if isinstance(generator, torch.Generator):
        entropy = entropy[0]  # one path for the batch
    return BrownianNoise(shape, float(grid.min()), float(grid.max()), entropy, dtype=dtype, device=device)

"""``run_batched``: several sampler generators in lock step, one network call per round (DESIGN §5).

Each round collects the pending ``Query`` of every live generator, concatenates their states and
times along the batch, evaluates the network once, and sends each generator its slice of the
prediction. Generators may differ in sampler, grid, step count and batch size; one that finishes
early drops out and the others go on. This is how Denoising MCMC chains, concurrent requests and
guidance branches share the network.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch

from ..model import Prediction, ScoreModel
from ..samplers.driver import Driver


def _per_run(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} is a list of {len(value)} for {n} generators: give one per generator")
        return list(value)
    return [value] * n


def _cat_cond(conds: list[dict], sizes: list[int]) -> dict:
    """One cond dict for the concatenated batch: batched tensors concatenated, the rest shared."""
    keys = set(conds[0])
    if any(set(c) != keys for c in conds):
        raise ValueError("every generator must give the same cond keys to share a network call")
    merged = {}
    for key in keys:
        values = [c[key] for c in conds]
        if all(torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == b for v, b in zip(values, sizes)):
            merged[key] = torch.cat(values)
        elif all(v is values[0] for v in values):
            merged[key] = values[0]
        else:
            raise ValueError(f"cond {key!r} must be a tensor with each generator's batch as its first "
                             "dimension, or the same object for all")
    return merged


def run_batched(model: ScoreModel, generators: Sequence, *, mu=None, cond=None,
                callback=None) -> list[torch.Tensor]:
    """Drive ``generators`` (each ``sampler.run(sde, grid, x, mu, noise)``) to their ends, answering
    all pending queries of a round with one call of ``model``; returns their results in order.

    ``mu``: the μ of every generator (one tensor or ``None`` for all, or a list); ``cond``: extra
    network inputs (one dict for all, or a list of dicts), tensors with each generator's batch.
    ``callback(k, step)`` sees every ``Step`` of generator ``k``. The returned list also carries
    ``nfe`` (network calls made: one per round) and ``steps`` (per generator).
    """
    runs = list(generators)
    n = len(runs)
    if n == 0:
        raise ValueError("run_batched needs at least one generator")
    mus = _per_run(mu, n, "mu")
    conds = [dict(c or {}) for c in _per_run(cond, n, "cond")]
    drivers = [Driver(run, f"generator {k}", label=f"generator {k}",
                      on_step=None if callback is None else partial(callback, k)) for k, run in enumerate(runs)]
    calls = 0
    try:
        for driver in drivers:
            driver.start()
        while live := [k for k, driver in enumerate(drivers) if driver.query is not None]:
            queries = [drivers[k].query for k in live]
            shapes = {tuple(q.x.shape[1:]) for q in queries}
            if len(shapes) > 1 or len({q.x.dtype for q in queries}) > 1:
                raise ValueError(f"generators must share the state's shape (but the batch) and dtype to share a "
                                 f"network call (got shapes {sorted(shapes)})")
            sizes = [q.x.shape[0] for q in queries]
            x = torch.cat([q.x for q in queries])
            t = torch.cat([q.t for q in queries])
            live_mu = [mus[k] for k in live]
            if all(m is None for m in live_mu):
                mu_cat = None
            elif any(m is None for m in live_mu):
                raise ValueError("either every generator has a mu or none has")
            else:
                mu_cat = torch.cat([m.expand_as(q.x) for m, q in zip(live_mu, queries)])
            out = model.output(x, t, mu_cat, **_cat_cond([conds[k] for k in live], sizes))
            calls += 1  # every live generator answers in every round: its driver's NFE is this count too
            for k, q, part in zip(live, queries, out.split(sizes)):
                drivers[k].answer(Prediction(model.prediction, part, q.x, q.t, model.sde, mus[k]))
    finally:
        for driver in drivers:
            driver.close()
    return BatchedResults([driver.result for driver in drivers], calls, [driver.steps for driver in drivers])


class BatchedResults(list):
    """The generators' results in order; ``nfe`` network calls (one per round), ``steps`` per generator."""

    def __init__(self, results, nfe: int, steps: list[int]):
        super().__init__(results)
        self.nfe, self.steps = nfe, steps

"""Batch-invariant noise at the cost of one draw (issue 26): ``revsde.sample`` of the exact ring mixture under
VP, shape ``(n, 2)``, euler_maruyama, 50 steps, with ``seed=`` (one Philox stream per sample, all drawn in one
vectorised call) against ``generator=`` one ``torch.Generator`` shared by the batch, at n = 64, 1000 and 8000
(target: at most 1.2x). ``revsde bench speed`` prints the same table.

    python -m pytest benchmarks/test_noise.py --benchmark-columns=median,rounds

Each test stores ``ratio_vs_shared_generator`` in ``extra_info`` (``--benchmark-json``).
"""
from __future__ import annotations

import pytest
import torch

import revsde
from revsde.apps.bench.speed import _interleaved_medians
from revsde.nets.gmm import GaussianMixture, exact_model

STEPS = 50
MODEL = exact_model(GaussianMixture.ring(), revsde.sde.VPSDE())


def run(n: int, **randomness):
    return lambda: revsde.sample(MODEL, (n, 2), sampler="euler_maruyama", steps=STEPS, graphs=False, **randomness)


@pytest.mark.parametrize("n", [64, 1000, 8000])
def test_seed_noise_against_one_shared_generator(benchmark, n):
    """The benchmark times ``seed=`` (wall time); the ratio is of the two timed in turn in CPU time, which other
    processes' load on a shared machine leaves alone."""
    shared, philox = _interleaved_medians([run(n, generator=torch.Generator().manual_seed(0)), run(n, seed=0)], 9)
    benchmark(run(n, seed=0))
    benchmark.extra_info["ratio_vs_shared_generator"] = round(philox / shared, 3)

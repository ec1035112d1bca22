"""CUDA graphs: a small UNet sampled eagerly and replayed from graphs (skipped without CUDA)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_graphed_vs_eager(benchmark, batch):
    from revsde.apps.bench.speed import graph_speed

    row = benchmark.pedantic(lambda: graph_speed(batches=(batch,))[0], rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    benchmark.extra_info["speedup_over_eager"] = round(row["eager_ms"] / row["graphed_ms"], 3)
    benchmark.extra_info["graphed_over_network_limit"] = round(row["graphed_ms"] / row["net_ms"], 3)

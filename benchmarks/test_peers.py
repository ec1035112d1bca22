"""Per-NFE loop overhead against peers in the same process (issue 24): each revsde sampler beside its equivalents
in diffusers, k-diffusion (the ``bench`` extra: ``pip install 'revsde[bench]'``; skipped without it) and a
transcription of score_sde's PC loop, with a free network (a DDPM noise prediction made once), 50 steps, batch
1 and 64, CPU, one thread (``conftest.py``).

    python -m pytest benchmarks/test_peers.py --benchmark-columns=median,rounds --benchmark-json=peers.json

pytest-benchmark times the revsde loop; each test stores, in ``extra_info``, its ratio per NFE to the peer
(``ratio_per_nfe``: the two run alternately, medians of ``ROUNDS`` pairs) and both sides' µs per NFE. Nothing
here asserts a time: the targets (≤ 1.0x) are read from the ratios.
"""
from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from revsde.apps.bench.peers import PEERS, paired_seconds, peer_loops  # noqa: E402

STEPS = 50
ROUNDS = 9
IDS = [f"{name}-vs-{library}-{peer}" for _, name, _, library, peer in PEERS]


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("spec", PEERS, ids=IDS)
def test_loop_overhead_against_peer(benchmark, spec, batch):
    loops = peer_loops(spec, STEPS, batch)
    if isinstance(loops, str):
        pytest.skip(loops)
    (run, nfe), (peer_run, peer_nfe) = loops
    benchmark(run)
    peer_s, revsde_s = paired_seconds(peer_run, run, ROUNDS)
    benchmark.extra_info.update(
        peer=f"{spec[3]} {spec[4]}", revsde_nfe=nfe, peer_nfe=peer_nfe,
        revsde_us_per_nfe=round(revsde_s / nfe * 1e6, 2), peer_us_per_nfe=round(peer_s / peer_nfe * 1e6, 2),
        ratio_per_nfe=round((revsde_s / nfe) / (peer_s / peer_nfe), 3))

"""Peak memory of ``revsde restore`` against image size (issue 24), each run a fresh process whose peak
resident set size the kernel reports: the default ``--max-memory`` (the largest tiles that fit) beside
``--max-memory none`` (the whole image in one network call), the built-in denoiser, ``mrs`` at 1 NFE.

    python -m pytest benchmarks/test_restore_memory.py --benchmark-columns=median,rounds

Each test stores ``peak_rss_mib`` and ``rss_bytes_per_pixel`` in ``extra_info`` (nothing asserted);
``scripts/measure_restore_memory.py`` makes the table of docs/benchmarks.md, up to 3000².
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from measure_restore_memory import photo  # noqa: E402
from measure_enhance_memory import peak_rss_mib  # noqa: E402


@pytest.mark.parametrize("budget", ["768M", "none"])
@pytest.mark.parametrize("size", [512, 1024])
def test_restore_peak_memory(benchmark, tmp_path, size, budget):
    from PIL import Image

    src = tmp_path / f"photo_{size}.png"
    Image.fromarray(photo(size)).save(src)
    command = [sys.executable, "-m", "revsde", "restore", str(src), "-o", str(tmp_path / "out"), "--sampler", "mrs",
               "--nfe", "1", "--max-memory", budget, "--threads", "1", "--no-progress"]
    peaks = []
    benchmark.pedantic(lambda: peaks.append(peak_rss_mib(command)[0]), rounds=1, iterations=1)
    benchmark.extra_info.update(size=size, max_memory=budget, peak_rss_mib=round(peaks[-1], 1),
                                rss_bytes_per_pixel=round(peaks[-1] * 2**20 / size**2))

"""``revsde bench speed``: the overhead table is measured, complete and written (no timing asserted)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

from revsde.apps.bench.speed import SpeedResult, sampler_overhead  # noqa: E402
from revsde.cli import main  # noqa: E402


def test_overhead_rows_have_ratios_to_the_peer():
    rows = sampler_overhead(steps=4, repeats=2, samplers=[("heun", "ode_heun", {})])
    assert [r["path"] for r in rows] == ["DPMSolverMultistepScheduler.step", "DPMSolverMultistepScheduler.step",
                                         "revsde.sample", "RevSDEScheduler.step"]
    assert rows[0]["ratio"] == 1.0
    heun = rows[2]
    assert heun["evals_per_step"] == 2 and heun["ms_per_step"] > 0
    assert heun["ratio_per_nfe"] == pytest.approx(heun["ratio"] / 2)
    text = SpeedResult(rows, 4, (1, 3, 32, 32), "cpu").markdown()
    assert "| heun | revsde.sample | 2 |" in text


def test_cli_writes_the_speed_tables(tmp_path, capsys):
    assert main(["bench", "speed", "-o", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "ratio per NFE" in printed and f"wrote {tmp_path / 'bench_speed.json'}" in printed
    data = json.loads((tmp_path / "bench_speed.json").read_text())
    labels = {r["label"] for r in data["overhead"]}
    assert {"mrs (order 2)", "pc (langevin)", "diffusers SDE-DPM-Solver++ 2M"} <= labels
    assert data["graphs"] == [] or all(g["captures"] >= 1 for g in data["graphs"])
    startup = {r["command"]: r for r in data["startup"]}
    assert set(startup) == {"import torch", "revsde --version", "revsde --help",
                            "revsde sample --n 100 --steps 5 --no-plot"}
    assert all(r["seconds"] > 0 for r in startup.values()) and startup["import torch"]["ratio"] == 1.0
    assert "Start-up" in (tmp_path / "bench_speed.md").read_text()
    noise = data["noise"]  # issue 26: seed= (Philox streams) against one shared generator
    assert [r["n"] for r in noise] == [64, 1000, 8000]
    assert all(r["ratio"] == pytest.approx(r["philox_ms"] / r["shared_ms"]) for r in noise)
    assert "Batch-invariant noise" in (tmp_path / "bench_speed.md").read_text()

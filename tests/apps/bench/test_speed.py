"""``revsde bench speed``: the overhead table is measured, complete and written (no timing asserted)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from revsde.apps.bench import peers  # noqa: E402
from revsde.apps.bench.speed import SpeedResult, sampler_overhead  # noqa: E402
from revsde.cli import main  # noqa: E402

HEUN = ("ode_heun", "ode_heun", {}, "diffusers", "HeunDiscreteScheduler")
K_HEUN = ("ode_heun", "ode_heun", {}, "k-diffusion", "sample_heun")
PC = ("pc (langevin)", "pc", {}, "score_sde", "pc_sampler")


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


def test_peer_rows_are_per_nfe_ratios_and_k_diffusion_rows_are_skipped_without_it(monkeypatch):
    monkeypatch.setattr(peers, "k_diffusion", lambda: (None, "k-diffusion is not installed (pip install 'revsde[bench]')"))
    rows = peers.peer_overhead(steps=25, batches=(2,), rounds=1, peers=[HEUN, K_HEUN, PC])
    heun, k_heun, pc = rows
    assert (heun["revsde_nfe"], heun["peer_nfe"]) == (50, 49)  # diffusers' Heun: its last step is Euler's
    assert heun["ratio"] == pytest.approx(heun["revsde_us"] / heun["peer_us"]) and heun["batch"] == 2
    assert k_heun["skipped"].startswith("k-diffusion is not installed") and "ratio" not in k_heun
    assert (pc["revsde_nfe"], pc["peer_nfe"]) == (50, 50)
    text = SpeedResult([], 25, (1, 3, 32, 32), "cpu", peers=rows).markdown()
    assert "| ode_heun | diffusers HeunDiscreteScheduler | 2 |" in text
    assert "| ode_heun | k-diffusion sample_heun | 2 | | | skipped: k-diffusion is not installed" in text


def test_k_diffusion_rows_are_measured_where_it_is_installed():
    kd, why = peers.k_diffusion()
    if kd is None:
        pytest.skip(why)
    rows = peers.peer_overhead(steps=3, batches=(1,), rounds=1, peers=[
        ("mrs (order 2)", "mrs", {}, "k-diffusion", "sample_dpmpp_2m"), K_HEUN])
    assert [(r["revsde_nfe"], r["peer_nfe"]) for r in rows] == [(3, 3), (6, 5)]
    assert all(r["ratio"] > 0 for r in rows)


def test_score_sde_pc_transcription_runs():
    """A smoke test: score_sde's loop as transcribed returns a finite state of the start's shape (its
    table β_k = β_min/N … β_max/N needs N > 20)."""
    start, output = torch.randn(2, 3, 4, 4), 0.1 * torch.randn(2, 3, 4, 4)
    x = peers._score_sde_pc(25, start, output)()
    assert x.shape == start.shape and bool(torch.isfinite(x).all())


def test_cli_writes_the_speed_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(peers, "PEER_ROUNDS", 1)  # one alternating pair per row: the table, not its precision
    assert main(["bench", "speed", "-o", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "ratio per NFE" in printed and f"wrote {tmp_path / 'bench_speed.json'}" in printed
    data = json.loads((tmp_path / "bench_speed.json").read_text())
    labels = {r["label"] for r in data["overhead"]}
    pairs = {(r["label"], r["library"], r["batch"]) for r in data["peers"]}
    assert {("mrs (order 2)", "diffusers", 64), ("pc (langevin)", "score_sde", 1), ("ode_heun", "k-diffusion", 64)} <= pairs
    assert "Loop overhead against diffusers, k-diffusion and score_sde" in printed
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

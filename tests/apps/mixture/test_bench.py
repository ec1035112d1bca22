"""`revsde bench` on the analytic problems: the harness measures what it says."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from revsde.apps.mixture import bench, configs


def test_converged_samplers_reach_the_floor_and_coarse_ones_do_not():
    """At 100 NFE a second-order ODE sampler scores like exact samples (the floor, same n); at 5 NFE
    first-order Euler–Maruyama is far above it. Cells average the repeats."""
    result = bench.run_gmm_bench(problem_names=("mr",), nfes=(5, 100), n_samples=4000, repeats=2,
                                 with_diffusers=False, labels=["mrs ODE 2 data", "euler_maruyama"], progress=False)
    floor = result.floors["mr"]["fd"]
    cell = {(r["label"], r["target_nfe"]): r for r in result.records}
    assert cell[("mrs ODE 2 data", 100)]["nfe"] == 100
    assert cell[("mrs ODE 2 data", 100)]["fd"] < 3 * floor
    assert cell[("euler_maruyama", 5)]["fd"] > 10 * floor
    assert "| mrs ODE 2 data |" in result.markdown()


def test_diffusers_peers_run_on_the_same_problem():
    pytest.importorskip("diffusers")
    result = bench.run_gmm_bench(problem_names=("vp",), nfes=(20,), n_samples=2000, repeats=1, progress=False,
                                 labels=["diffusers DPM-Solver++ 2M", "diffusers Heun", "mrs ODE 2 data"])
    cell = {r["label"]: r for r in result.records}
    assert cell["diffusers DPM-Solver++ 2M"]["nfe"] == 20
    assert cell["diffusers Heun"]["nfe"] == 19  # 10 steps, the last one first-order
    # both second-order solvers of the same ODE land near the floor at 20 NFE
    floor = result.floors["vp"]["fd"]
    assert cell["diffusers DPM-Solver++ 2M"]["fd"] < 5 * floor
    assert cell["mrs ODE 2 data"]["fd"] < 5 * floor


def test_flow_problems_run_revsde_and_diffusers_flow_schedulers_on_one_velocity_field(tmp_path):
    """The rectified-flow problems: diffusers' flow schedulers get the exact velocity at σ = timestep/1000,
    revsde's samplers the same field through RectifiedFlow; both land near the floor at 20 NFE, and the
    result is written as bench_flow.*."""
    pytest.importorskip("diffusers")
    labels = ["diffusers FlowMatchEuler", "diffusers DPM-Solver++ 2M flow", "diffusers FlowMatchHeun",
              "mrs ODE 2 data", "mrs ODE 1 velocity shift 0.5"]
    result = bench.run_gmm_bench(problem_names=("flow",), nfes=(20,), n_samples=2000, repeats=1, progress=False,
                                 labels=labels)
    cell = {r["label"]: r for r in result.records}
    assert set(cell) == set(labels)
    assert cell["diffusers FlowMatchHeun"]["nfe"] == 19 and cell["mrs ODE 2 data"]["nfe"] == 20
    floor = result.floors["flow"]["fd"]
    for label in ("diffusers DPM-Solver++ 2M flow", "mrs ODE 2 data", "mrs ODE 1 velocity shift 0.5"):
        assert cell[label]["fd"] < 5 * floor, (label, cell[label]["fd"], floor)
    paths = bench.write(result, tmp_path)
    assert paths["markdown"].name == "bench_flow.md" and paths["plot"].exists()


@pytest.mark.parametrize("nfe,per_step", [(5, 1), (10, 1), (20, 1), (20, 2), (50, 1), (100, 2)])
def test_dlg_budget_spends_the_nfe_per_output(nfe, per_step):
    """m MCMC + N integrator steps + Tweedie per output, plus the one-time init pass and burn-in shared
    by the snapshots of a chain: within ½ NFE of the target, at least one MCMC step."""
    steps, mcmc = configs.dlg_budget(nfe, per_step)
    once = (steps * per_step + configs.DLG["burn_in_steps"]) / configs.DLG["snapshots"]
    assert mcmc >= 1 and steps >= 1
    assert abs(mcmc + steps * per_step + 1 + once - nfe) <= 0.5 + 1e-9 or nfe <= 5


@pytest.mark.parametrize("nfe", [10, 20, 50])
def test_dlg_budget_with_fixed_mcmc_steps_and_its_own_init_pass(nfe):
    """With ``mcmc_steps`` and ``init_steps`` fixed (the image settings), the integrator steps fill the
    rest of the budget: within ½ NFE of the target per output."""
    from revsde.apps.image.configs import DLG_IMAGE as s

    steps, mcmc = configs.dlg_budget(nfe, 1, s["snapshots"], s["burn_in_steps"], s["init_steps"], s["mcmc_steps"])
    once = (s["init_steps"] + s["burn_in_steps"]) / s["snapshots"]
    assert mcmc == s["mcmc_steps"] and steps >= 1
    assert abs(mcmc + steps + 1 + once - nfe) <= 0.5 + 1e-9


def test_dlg_rows_count_every_score_call_per_output():
    """The DLG row runs persistent chains with the exact noise posterior; its NFE per output includes the
    amortised init pass and burn-in, so it sits within ½ of the target; the samples are sane."""
    result = bench.run_gmm_bench(problem_names=("mr",), nfes=(10,), n_samples=400, repeats=1, with_diffusers=False,
                                 labels=["DLG + mrs ODE 2 data", "mrs ODE 2 data"], progress=False)
    cell = {r["label"]: r for r in result.records}
    dlg = cell["DLG + mrs ODE 2 data"]
    steps, mcmc = configs.dlg_budget(10)
    once = (steps + configs.DLG["burn_in_steps"]) / configs.DLG["snapshots"]
    assert dlg["nfe"] == pytest.approx(round(mcmc + steps + 1 + once, 1))
    assert dlg["fd"] < 20 * cell["mrs ODE 2 data"]["fd"] + 1e-2  # a distribution, not a failure


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="valid: vp, mr"):
        bench.run_gmm_bench(problem_names=("cifar",), progress=False)
    with pytest.raises(ValueError, match="unknown configuration"):
        bench.run_gmm_bench(labels=["nope"], progress=False)


def test_command_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "revsde", "bench", "gmm", "--problems", "mr", "--nfe", "5,10", "--n", "500",
           "--repeats", "1", "--no-diffusers", "--only", "posterior", "--only", "mrs SDE 1 data", "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| posterior |" in done.stdout
    data = json.loads((out / "bench_gmm.json").read_text())
    assert {r["label"] for r in data["records"]} == {"posterior", "mrs SDE 1 data"}
    assert data["n_samples"] == 500 and len(data["records"]) == 4
    assert (out / "bench_gmm.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "revsde", "bench", "gmm", "--nfe", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--nfe must be integers >= 1" in bad.stderr

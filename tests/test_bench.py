"""`revsde bench` on the analytic problems: the harness measures what it says."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from revsde.apps import bench


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


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="valid: vp, mr"):
        bench.run_gmm_bench(problem_names=("cifar",), progress=False)
    with pytest.raises(ValueError, match="unknown configuration"):
        bench.run_gmm_bench(labels=["nope"], progress=False)


def test_command_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "revsde", "bench", "--problems", "mr", "--nfe", "5,10", "--n", "500",
           "--repeats", "1", "--no-diffusers", "--only", "posterior", "--only", "mrs SDE 1 data", "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| posterior |" in done.stdout
    data = json.loads((out / "bench_gmm.json").read_text())
    assert {r["label"] for r in data["records"]} == {"posterior", "mrs SDE 1 data"}
    assert data["n_samples"] == 500 and len(data["records"]) == 4
    assert (out / "bench_gmm.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "revsde", "bench", "--nfe", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--nfe must be integers >= 1" in bad.stderr

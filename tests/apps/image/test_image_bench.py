"""``revsde bench image``: the harness on an unconditional image model, revsde vs diffusers."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from revsde.apps.image import bench as B
from revsde.apps.image import runners as R
from fixtures import ROOT
from fixtures import LABELS, projection_space  # noqa: E402

ROOT = ROOT


def save_tiny_pipeline(folder, size: int, seed: int) -> str:
    """A DDPMPipeline folder with a random 1-channel ``size``×``size`` UNet2DModel (42 k parameters)."""
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("model") / "tiny", 8, seed=0)


def run(model, tmp_path, **kwargs):
    options = dict(nfes=(4,), n_samples=24, labels=LABELS, space=projection_space(), max_batch=24)
    options.update(kwargs)
    return B.run_image_bench(model, **options)


def test_every_sample_is_its_seeds_whatever_the_batching(tiny_model, tmp_path):
    """One generator per seed (EDM's scheme): batches of 5 give the samples batches of 24 give (to the
    float rounding of batched convolutions), for ODE and SDE samplers of both families, hence the same scores."""
    whole = run(tiny_model, tmp_path)
    split = run(tiny_model, tmp_path, max_batch=5)
    assert [r["label"] for r in whole.rows] == LABELS
    for a, b in zip(whole.rows, split.rows):
        assert a["nfe"] == b["nfe"] == 4
        assert a["fd"] == pytest.approx(b["fd"], rel=1e-5) and a["kid"] == pytest.approx(b["kid"], rel=1e-4)
    # and different seeds give other samples
    other = run(tiny_model, tmp_path, seed=100)
    assert all(a["fd"] != b["fd"] for a, b in zip(whole.rows, other.rows))


def test_sample_seeds_are_independent_of_the_batch(tiny_model):
    from revsde.apps.bench.harness import Dist
    from revsde.integrations.pipelines import UnconditionalPipeline

    unet, base, _ = R.load_image_model(tiny_model)
    config = B.SchedulerConfig("sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"})
    pipe = UnconditionalPipeline(unet=unet, scheduler=config.make(base))
    pipe.set_progress_bar_config(disable=True)
    x, nfe = R.sample_seeds(pipe, 3, list(range(10, 19)), Dist(), max_batch=4)
    alone, _ = R.sample_seeds(pipe, 3, [13], Dist(), max_batch=4)
    assert nfe == 3 and x.shape == (9, 1, 8, 8)
    torch.testing.assert_close(x[3:4], alone, rtol=1e-4, atol=1e-5)  # batched-conv rounding only


def test_a_cached_run_resumes_without_sampling_again(tiny_model, tmp_path, monkeypatch):
    cache = tmp_path / "bench_image.cache.jsonl"
    first = run(tiny_model, tmp_path, cache_path=cache, labels=LABELS[:2])
    assert len(cache.read_text().splitlines()) == 1 + 2
    calls = []
    real = R.sample_seeds
    monkeypatch.setattr(B, "sample_seeds", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run(tiny_model, tmp_path, cache_path=cache, labels=LABELS[:3])
    assert len(calls) == 1  # only the new configuration ran
    assert again.rows[:2] == first.rows
    with pytest.raises(ValueError, match="n_samples"):  # other settings: the cache is refused, not mixed in
        run(tiny_model, tmp_path, cache_path=cache, n_samples=30)
    fresh = run(tiny_model, tmp_path, cache_path=cache, n_samples=30, resume=False, labels=LABELS[:1])
    assert fresh.n_samples == 30 and len(cache.read_text().splitlines()) == 2


def test_reports_name_the_feature_space_and_compare_the_families(tiny_model, tmp_path):
    result = run(tiny_model, tmp_path, nfes=(3, 5))
    paths = B.write(result, tmp_path / "out")
    md = paths["md"].read_text()
    assert "| FD-test | NFE 3 | NFE 5 |" in md and "KID × 10³" in md and "Best of each family" in md
    data = json.loads(paths["json"].read_text())
    assert data["label"] == "FD-test" and len(data["rows"]) == 8 and data["nfes"] == [3, 5]
    assert {r["family"] for r in data["rows"]} == {"revsde", "diffusers"}
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_a_diverging_or_failing_configuration_is_a_result_not_a_crash(tiny_model, tmp_path, monkeypatch):
    space = projection_space()
    bad = B.score(space, torch.full((4, 1, 8, 8), math.nan), 0)
    assert bad["diverged"] and bad["fd"] == math.inf
    monkeypatch.setattr(B, "steps_for_nfe", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    result = run(tiny_model, tmp_path, labels=LABELS[:1])
    assert result.rows[0]["error"] == "RuntimeError: boom" and result.rows[0]["fd"] == math.inf
    assert json.loads(json.dumps(result.to_json()))["rows"][0]["fd"] is None


def test_bad_arguments(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="unknown configuration"):
        run(tiny_model, tmp_path, labels=["no such sampler"])
    with pytest.raises(ValueError, match="n_samples"):
        run(tiny_model, tmp_path, n_samples=1)
    with pytest.raises(ValueError, match="model_index.json"):
        R.load_image_model(str(tmp_path))
    with pytest.raises(ValueError, match="FD-digits scores grey"):
        B.digits_space(16, 3)


def test_inception_features_need_the_fid_label_only_from_the_official_file(tiny_model, tmp_path):
    """A weights file in the official format but with other values scores as FD-inception…, not FID, and a
    reference ``.npz`` gives the moments (no KID without reference features)."""
    from revsde.metrics.fid import save_stats
    from revsde.nets.fid_inception import FIDInceptionV3

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    save_stats(tmp_path / "ref.npz", torch.zeros(2048, dtype=torch.float64), torch.eye(2048, dtype=torch.float64))
    space = B.inception_space(weights, tmp_path / "ref.npz", 8, 1)
    assert space.label.startswith("FD-") and space.ref_features is None
    result = run(tiny_model, tmp_path, labels=LABELS[:1], n_samples=4, space=space)
    assert math.isfinite(result.rows[0]["fd"]) and result.rows[0].get("kid") is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER = r"""
import json, sys, torch
sys.path.insert(0, {tests!r})
from fixtures import LABELS, projection_space
from revsde.apps.image import bench as B
from revsde.apps.bench.harness import Dist
dist = Dist.from_env()
r = B.run_image_bench({model!r}, nfes=(4,), n_samples=24, labels=LABELS, space=projection_space(), max_batch=5,
                      dist=dist)
if dist.main:
    print("RESULT", json.dumps([[row["label"], row["nfe"], row["fd"], row["kid"]] for row in r.rows]))
dist.close()
"""


def test_two_processes_on_gloo_give_the_single_process_result(tiny_model, tmp_path):
    """torchrun's environment, 2 ranks on the gloo backend: seeds sharded, gathered in order, same scores."""
    single = run(tiny_model, tmp_path, max_batch=5)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(ROOT / "tests"), model=tiny_model))
    port, procs = _free_port(), []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    line = next(l for l in outs[0][0].splitlines() if l.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert [g[:2] for g in got] == [[r["label"], r["nfe"]] for r in single.rows]
    for g, r in zip(got, single.rows):  # other batch sizes per rank: equal to float rounding
        assert g[2] == pytest.approx(r["fd"], rel=1e-5) and g[3] == pytest.approx(r["kid"], rel=1e-4)
    assert not any(l.startswith("RESULT") for l in outs[1][0].splitlines())  # only rank 0 reports


@pytest.fixture(scope="module")
def tiny_digits_model(tmp_path_factory):
    """16×16: the shape the FD-digits space scores."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("model16") / "tiny16", 16, seed=1)


def test_cli_image_task_writes_reports_and_resumes(tiny_digits_model, tmp_path, capsys):
    from revsde.cli import main

    argv = ["bench", "image", "--model", tiny_digits_model, "--n", "16", "--nfe", "3",
            "--only", "mrs 2 logsnr", "--only", "diffusers UniPC", "-o", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| FD-digits | NFE 3 |" in out and "wrote" in out
    data = json.loads((tmp_path / "bench_image.json").read_text())
    assert data["label"] == "FD-digits" and [r["label"] for r in data["rows"]] == ["mrs 2 logsnr", "diffusers UniPC"]
    assert all(r["nfe"] == 3 and r["fd"] > 0 for r in data["rows"])
    assert main(argv) == 0
    assert "resumed: 2 of 2 cells" in capsys.readouterr().out
    # --no-diffusers keeps revsde's configurations only
    assert main(argv[:-3] + ["--no-diffusers", "-o", str(tmp_path / "b"), "--no-progress"]) == 0
    data = json.loads((tmp_path / "b" / "bench_image.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["mrs 2 logsnr"]


def test_cli_each_task_takes_only_its_own_flags(capsys, tmp_path):
    """``revsde bench TASK``: --quick belongs to gmm and image, --pairs to speech, --crop to restore; a flag
    of another task is refused by name, and the one-command form (``--task X``, ``--speed``) is refused with
    the sub-command to use."""
    from revsde.cli import main

    for argv, flag in ((["restore", "--quick"], "--quick"), (["gmm", "--pairs", "3"], "--pairs"),
                       (["image", "--crop", "64"], "--crop"), (["speed", "--nfe", "5"], "--nfe")):
        with pytest.raises(SystemExit) as stop:
            main(["bench", *argv, "-o", str(tmp_path)])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"error: unrecognized arguments: {flag}" in err, err
    for argv, task in ((["--task", "restore", "--crop", "0"], "restore"), (["--speed"], "speed"),
                       (["--quick"], "image"), (["--problems", "mr"], None)):
        assert main(["bench", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("revsde bench: the task is a sub-command: revsde bench gmm|image|restore|speech|speed")
        assert (f"(here: revsde bench {task} ...)" in err) == (task is not None) and "\n" not in err


def test_native_configurations_run_revsde_sample_from_the_pipelines_priors(tiny_model, tmp_path):
    """A native ``revsde.sample`` run of DPM-Solver++(2M) on the pipeline's grid ("mrs" through
    RevSDEScheduler) and the native RK45 are scored like the rest; native steps found by probing."""
    from revsde.apps.bench.harness import Dist

    unet, base, _ = R.load_image_model(tiny_model)
    runner = R.NativeRunner(unet, base, {"sampler": "mrs", "order": 2})
    steps, nfe = R.native_steps_for_nfe(runner, 6)
    assert (steps, nfe) == (6, 6)
    x, nfe = R.sample_native(runner, 6, [3, 4, 5], Dist(), max_batch=2)
    alone, _ = runner([4], 6)
    assert x.shape == (3, 1, 8, 8) and nfe == 6
    torch.testing.assert_close(x[1:2], alone, rtol=1e-4, atol=1e-5)
    B.default_configs()  # the native RK45 is registered among revsde's configurations
    result = run(tiny_model, tmp_path, labels=["revsde ode_rk45", "diffusers UniPC"], nfes=(12,))
    rk45 = result.rows[0]
    assert rk45["family"] == "revsde" and rk45["scheduler"] == "revsde.sample" and math.isfinite(rk45["fd"])
    # adaptive: the tolerance whose one-sample NFE comes nearest the target (RK45 moves in steps of 6 NFE)
    probe = R.native_steps_for_nfe(R.NativeRunner(unet, base, {"sampler": "ode_rk45"}), 12)
    assert rk45["steps"] == probe[0] and rk45["nfe"] >= probe[1]


def test_inception_reference_from_a_folder_keeps_features_for_kid(tmp_path):
    """``--ref-stats DIR``: the folder's images go through the same network; their features are kept so
    KID and precision/recall can be computed (an ``.npz`` gives moments only)."""
    from PIL import Image

    from revsde.nets.fid_inception import FIDInceptionV3

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    folder = tmp_path / "ref"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    space = B.inception_space(weights, folder, 16, 1)
    assert space.label.startswith("FD-") and space.ref_features.shape == (3, 2048)
    assert space.ref_mean.shape == (2048,) and space.ref_cov.shape == (2048, 2048)
    assert "3 images in `ref`" in space.reference

"""``revsde sample --diffusers PATH``: a saved local pipeline folder sampled with a revsde sampler."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from fixtures import tiny_ddpm_pipeline, tiny_sd_pipeline  # noqa: E402
from PIL import Image  # noqa: E402

from revsde.cli import main  # noqa: E402


def folder_digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    tiny_ddpm_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


def test_ddpm_folder(ddpm_folder, tmp_path, capsys):
    before = folder_digest(ddpm_folder)
    out = tmp_path / "out"
    code = main(["sample", "--diffusers", str(ddpm_folder), "--sampler", "mrs", "--option", "order=3",
                 "--steps", "4", "--n", "3", "--seed", "5", "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "NFE: 4 in 4 steps" in printed and "DDPMPipeline" in printed and "order=3" in printed
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "run.json", "sample_000.png", "sample_001.png",
                                                    "sample_002.png"]
    assert np.asarray(Image.open(out / "sample_000.png")).shape == (16, 16, 3)
    assert np.asarray(Image.open(out / "grid.png")).shape == (16, 48, 3)
    meta = json.loads((out / "run.json").read_text())
    assert meta["nfe"] == 4 and meta["seed"] == 5 and meta["scheduler"]["order"] == 3
    assert folder_digest(ddpm_folder) == before  # the input is only read
    # the same seed gives the same pixels; image b depends only on seed + b
    again = tmp_path / "again"
    main(["sample", "--diffusers", str(ddpm_folder), "--sampler", "mrs", "--option", "order=3", "--steps", "4",
          "--n", "1", "--seed", "6", "-o", str(again), "--no-progress"])
    assert np.array_equal(np.asarray(Image.open(again / "sample_000.png")), np.asarray(Image.open(out / "sample_001.png")))


def test_sd_folder_with_prompt_and_scheduler_keys(sd_folder, tmp_path, capsys):
    out = tmp_path / "sd"
    code = main(["sample", "--diffusers", str(sd_folder), "--prompt", "a photo of a red cat", "--sampler", "ode_heun",
                 "--steps", "3", "--n", "2", "--grid", "karras", "--option", "final_sigmas_type=sigma_min",
                 "--guidance-scale", "4", "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "NFE: 6 in 3 steps" in printed and "grid karras" in printed
    meta = json.loads((out / "run.json").read_text())
    assert meta["prompt"] == "a photo of a red cat" and meta["scheduler"]["final_sigmas_type"] == "sigma_min"
    image = np.asarray(Image.open(out / "sample_001.png"))
    assert image.shape == (16, 16, 3) and image.std() > 0


@pytest.mark.parametrize("args, message", [
    (["--sampler", "ode_rk45"], "chooses its steps as it goes"),
    (["--option", "orderr=2"], "RevSDEScheduler has no option 'orderr'"),
    (["--prompt", "a cat"], "DDPMPipeline is unconditional"),
    (["--sde", "ve"], "--sde and --mu do not apply"),
    (["--grid", "nope"], "grid must be 'discrete' or one of"),
])
def test_bad_arguments_name_the_problem(ddpm_folder, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    code = main(["sample", "--diffusers", str(ddpm_folder), "--steps", "2", "-o", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("revsde: error:")
    assert not out.exists()


def test_missing_prompt_and_bad_folders(sd_folder, tmp_path, capsys):
    assert main(["sample", "--diffusers", str(sd_folder), "--steps", "2", "--no-progress"]) == 2
    assert "conditioned on text: give a prompt" in capsys.readouterr().err
    assert main(["sample", "--diffusers", str(tmp_path / "absent"), "--no-progress"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["sample", "--diffusers", str(tmp_path), "--no-progress"]) == 2
    assert "has no model_index.json" in capsys.readouterr().err
    assert main(["sample", "--prompt", "x", "--no-progress"]) == 2
    assert "--prompt applies only with --diffusers" in capsys.readouterr().err

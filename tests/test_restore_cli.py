"""``revsde restore``: files, folders and globs through a tiny exported model; formats kept, inputs
never overwritten, bad files reported and skipped, tiling, determinism."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from revsde.apps.images import Image, read_image, write_image
from revsde.apps.restore import restore_tiled, tiles
from revsde.apps.train import export_weights
from revsde.cli import main
from revsde.nets.irsde_unet import ConditionalUNet
from revsde.sde import MRSDE


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A ConditionalUNet(nf 8, depth 2) with seeded random weights, exported as revsde would."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ConditionalUNet(in_nc=3, out_nc=3, nf=8, depth=2)
    config = {"format": "revsde.restore/1", "task": "denoise", "loss": "matching", "arch": "ConditionalUNet",
              "nf": 8, "depth": 2, "sde": MRSDE().config()}
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    export_weights({"config": config, "step": 3, "elapsed_s": 1.0, "ema": net.state_dict()}, path)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_image(folder / "rgb.png", Image(rng.random((20, 27, 3), dtype=np.float32)))
    write_image(folder / "sub" / "gray16.png", Image(rng.random((17, 13, 1), dtype=np.float32), bits=16))
    write_image(folder / "rgba.tif", Image(rng.random((9, 30, 3), dtype=np.float32),
                                          rng.random((9, 30), dtype=np.float32), bits=16, format="tiff"))
    write_image(folder / "photo.jpg", Image(rng.random((16, 16, 3), dtype=np.float32), format="jpeg"))
    return folder


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(*args):
    return main(["restore", *map(str, args), "--no-progress"])


def test_folder_in_folder_out_keeps_names_formats_depths_and_alpha(tiny_model, images, tmp_path, capsys):
    before = digest(images)
    out = tmp_path / "out"
    assert run(images, "-o", out, "--model", tiny_model, "--nfe", "3") == 0
    assert "4 restored, 0 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(digest(out)) == ["photo.jpg", "rgb.png", "rgba.tif", "sub/gray16.png"]
    assert digest(images) == before  # inputs only read
    gray = read_image(out / "sub" / "gray16.png")
    assert gray.bits == 16 and gray.pixels.shape == (17, 13, 1)
    rgba = read_image(out / "rgba.tif")
    np.testing.assert_allclose(rgba.alpha, read_image(images / "rgba.tif").alpha)  # alpha passes through
    assert read_image(out / "rgb.png").pixels.shape == (20, 27, 3)


def test_seed_determines_the_result(tiny_model, images, tmp_path):
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run(images / "rgb.png", "-o", tmp_path / name, "--model", tiny_model, "--nfe", "2", "--seed", seed,
            "--sampler", "mrs", "--option", "stochastic=true")
        outs.append((tmp_path / name / "rgb.png").read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_bad_files_are_reported_and_the_rest_restored(tiny_model, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "out"
    assert run(images, "-o", out, "--model", tiny_model, "--nfe", "2") == 1
    printed = capsys.readouterr().out
    assert "failed:" in printed and "broken.png" in printed and "4 restored, 0 skipped, 1 failed" in printed
    assert not (out / "broken.png").exists()
    # resume: everything that exists is skipped
    assert run(images, "-o", out, "--model", tiny_model, "--nfe", "2", "--skip-existing") == 1
    assert "0 restored, 4 skipped, 1 failed" in capsys.readouterr().out


def test_globs_and_files(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    assert run(str(images / "*.png"), images / "photo.jpg", "-o", out, "--model", tiny_model, "--nfe", "1") == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo.jpg", "rgb.png"]


@pytest.mark.parametrize("args, message", [
    (["--nfe", "0"], "--nfe must be an integer >= 1"),
    (["--sampler", "ode_rk45"], "adaptive"),
    (["--tile", "8"], "--tile must be an integer >= 16"),
    (["--task", "deblur"], "is a 'denoise' model; run it with --task denoise"),
])
def test_bad_arguments(tiny_model, images, tmp_path, capsys, args, message):
    assert run(images, "-o", tmp_path / "out", "--model", tiny_model, *args) == 2
    assert message in capsys.readouterr().err


def test_refuses_to_overwrite_inputs_and_names_missing_things(tiny_model, images, capsys):
    assert run(images / "rgb.png", "-o", images, "--model", tiny_model) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert run(images / "absent.png", "-o", images / "x", "--model", tiny_model) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(images, "-o", images / "x", "--model", images / "rgb.png") == 2
    assert "needs --irsde-config" in capsys.readouterr().err


def test_tiles_cover_and_blend_exactly():
    assert tiles(100, 40, 8) == [0, 32, 60] and tiles(30, 40, 8) == [0]
    rgb = np.random.default_rng(1).random((70, 90, 3)).astype(np.float32)
    pointwise = lambda patch, index: patch * 0.5 + 0.1  # a restorer without spatial context
    np.testing.assert_allclose(restore_tiled(pointwise, rgb, 32, 8), pointwise(rgb, 0), atol=1e-6)


def test_tiling_equals_whole_image_where_it_fits(tiny_model, images, tmp_path):
    run(images / "rgb.png", "-o", tmp_path / "whole", "--model", tiny_model, "--nfe", "2")
    run(images / "rgb.png", "-o", tmp_path / "tiled", "--model", tiny_model, "--nfe", "2", "--tile", "32")
    assert (tmp_path / "whole" / "rgb.png").read_bytes() == (tmp_path / "tiled" / "rgb.png").read_bytes()
    run(images / "rgb.png", "-o", tmp_path / "small", "--model", tiny_model, "--nfe", "2", "--tile", "16",
        "--overlap", "4")
    assert read_image(tmp_path / "small" / "rgb.png").pixels.shape == (20, 27, 3)

"""``revsde restore``: files, folders and globs through a tiny exported model; formats kept, inputs
never overwritten, bad files reported and skipped, tiling, determinism."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch

from revsde.io.images import Image, read_image, write_image
from revsde.apps.restore.restore import (DEFAULT_MAX_MEMORY, MIN_AUTO_TILE, auto_tile, bytes_per_pixel,
                                         restore_tiled, tiles)
from revsde.apps.restore.model import export_weights
from revsde.cli import main
from revsde.nets.irsde_unet import ConditionalUNet
from revsde.sde import MRSDE


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


def test_folder_in_folder_out_keeps_names_formats_depths_and_alpha(tiny_restore_model, images, tmp_path, capsys):
    before = digest(images)
    out = tmp_path / "out"
    assert run(images, "-o", out, "--model", tiny_restore_model, "--nfe", "3") == 0
    assert "4 restored, 0 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(digest(out)) == ["photo.jpg", "rgb.png", "rgba.tif", "sub/gray16.png"]
    assert digest(images) == before  # inputs only read
    gray = read_image(out / "sub" / "gray16.png")
    assert gray.bits == 16 and gray.pixels.shape == (17, 13, 1)
    rgba = read_image(out / "rgba.tif")
    np.testing.assert_allclose(rgba.alpha, read_image(images / "rgba.tif").alpha)  # alpha passes through
    assert read_image(out / "rgb.png").pixels.shape == (20, 27, 3)


def test_seed_determines_the_result(tiny_restore_model, images, tmp_path):
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run(images / "rgb.png", "-o", tmp_path / name, "--model", tiny_restore_model, "--nfe", "2", "--seed", seed,
            "--sampler", "mrs", "--option", "stochastic=true")
        outs.append((tmp_path / name / "rgb.png").read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_bad_files_are_reported_and_the_rest_restored(tiny_restore_model, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "out"
    assert run(images, "-o", out, "--model", tiny_restore_model, "--nfe", "2") == 1
    printed = capsys.readouterr().out
    assert "failed:" in printed and "broken.png" in printed and "4 restored, 0 skipped, 1 failed" in printed
    assert not (out / "broken.png").exists()
    # resume: everything that exists is skipped
    assert run(images, "-o", out, "--model", tiny_restore_model, "--nfe", "2", "--skip-existing") == 1
    assert "0 restored, 4 skipped, 1 failed" in capsys.readouterr().out


def test_globs_and_files(tiny_restore_model, images, tmp_path):
    out = tmp_path / "out"
    assert run(str(images / "*.png"), images / "photo.jpg", "-o", out, "--model", tiny_restore_model, "--nfe", "1") == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo.jpg", "rgb.png"]


@pytest.mark.parametrize("args, message", [
    (["--nfe", "0"], "--nfe must be an integer >= 1"),
    (["--sampler", "ode_rk45"], "adaptive"),
    (["--tile", "8"], "--tile must be an integer >= 16"),
    (["--task", "deblur"], "is a 'denoise' model; run it with --task denoise"),
])
def test_bad_arguments(tiny_restore_model, images, tmp_path, capsys, args, message):
    assert run(images, "-o", tmp_path / "out", "--model", tiny_restore_model, *args) == 2
    assert message in capsys.readouterr().err


def test_refuses_to_overwrite_inputs_and_names_missing_things(tiny_restore_model, images, capsys):
    assert run(images / "rgb.png", "-o", images, "--model", tiny_restore_model) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert run(images / "absent.png", "-o", images / "x", "--model", tiny_restore_model) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(images, "-o", images / "x", "--model", images / "rgb.png") == 2
    assert "needs --irsde-config" in capsys.readouterr().err


def test_tiles_cover_and_blend_exactly():
    assert tiles(100, 40, 8) == [0, 32, 60] and tiles(30, 40, 8) == [0]
    rgb = np.random.default_rng(1).random((70, 90, 3)).astype(np.float32)
    pointwise = lambda patch, index: patch * 0.5 + 0.1  # a restorer without spatial context
    np.testing.assert_allclose(restore_tiled(pointwise, rgb, 32, 8), pointwise(rgb, 0), atol=1e-6)


def test_tiling_equals_whole_image_where_it_fits(tiny_restore_model, images, tmp_path):
    run(images / "rgb.png", "-o", tmp_path / "whole", "--model", tiny_restore_model, "--nfe", "2")
    run(images / "rgb.png", "-o", tmp_path / "tiled", "--model", tiny_restore_model, "--nfe", "2", "--tile", "32")
    assert (tmp_path / "whole" / "rgb.png").read_bytes() == (tmp_path / "tiled" / "rgb.png").read_bytes()
    run(images / "rgb.png", "-o", tmp_path / "small", "--model", tiny_restore_model, "--nfe", "2", "--tile", "16",
        "--overlap", "4")
    assert read_image(tmp_path / "small" / "rgb.png").pixels.shape == (20, 27, 3)


def test_auto_tile_is_the_largest_tile_within_the_budget():
    assert auto_tile(512, 512, 2560, DEFAULT_MAX_MEMORY) is None  # 0.67 GB fits 768 MiB: one call, no tiles
    side = auto_tile(3000, 3000, 2560, DEFAULT_MAX_MEMORY)
    assert side % 16 == 0 and side**2 * 2560 <= DEFAULT_MAX_MEMORY < (side + 16) ** 2 * 2560
    assert auto_tile(3000, 200, 2560, DEFAULT_MAX_MEMORY) == side  # a strip that does not fit: the same tiles
    assert auto_tile(10**5, 10**5, 2560, None) is None  # no budget: never tiles by itself
    assert auto_tile(200, 200, 1000, MIN_AUTO_TILE**2 * 1000) == MIN_AUTO_TILE
    with pytest.raises(ValueError, match="the smallest is 64 px"):
        auto_tile(200, 200, 1000, MIN_AUTO_TILE**2 * 1000 - 1)


def test_bytes_per_pixel_grows_with_the_network_width(tiny_restore_model):
    from revsde.apps.restore.restore import load_restore_model

    model, _ = load_restore_model(str(tiny_restore_model))
    assert bytes_per_pixel(model) == 1536 + 64 * 8  # the tiny ConditionalUNet has nf = 8
    assert bytes_per_pixel(lambda x: x) == 1536 + 64 * 64  # unknown: as large as IR-SDE's own nf = 64


def test_an_image_over_the_budget_is_tiled_by_itself_and_one_within_it_is_not(tiny_restore_model, tmp_path):
    """--max-memory: a 100×90 image that needs more than 8 MiB (tiny net: 2048 B/pixel) is restored in
    64-px tiles, byte for byte as --tile 64 does; within 64 MiB it is restored whole, as with no budget."""
    rng = np.random.default_rng(3)
    src = tmp_path / "big.png"
    write_image(src, Image(rng.random((100, 90, 3), dtype=np.float32)))
    common = ["--model", tiny_restore_model, "--nfe", "2"]
    run(src, "-o", tmp_path / "auto", "--max-memory", "8M", *common)
    run(src, "-o", tmp_path / "forced", "--tile", "64", "--max-memory", "none", *common)
    run(src, "-o", tmp_path / "whole", "--max-memory", "none", *common)
    run(src, "-o", tmp_path / "fits", "--max-memory", "64M", *common)
    auto, forced = (tmp_path / "auto" / "big.png").read_bytes(), (tmp_path / "forced" / "big.png").read_bytes()
    whole, fits = (tmp_path / "whole" / "big.png").read_bytes(), (tmp_path / "fits" / "big.png").read_bytes()
    assert auto == forced and fits == whole and auto != whole


# --- checked before any work ----------------------------------------------------------------------
def refused(capsys) -> str:
    """The one error line of a run refused before any work (no banner, nothing restored)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("revsde: error: "), captured.err
    assert captured.out == "", captured.out
    return lines[0]


def test_an_output_path_that_cannot_take_the_outputs_is_refused_before_any_work(tiny_restore_model, images, tmp_path,
                                                                                 capsys):
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"a file")
    assert run(images, "-o", taken, "--model", tiny_restore_model) == 2
    assert "-o " + str(taken) + ": is a file, not a folder; give a folder for the outputs" in refused(capsys)
    assert run(images, "-o", taken / "sub", "--model", tiny_restore_model) == 2
    assert f"cannot create the folder: {taken} is a file" in refused(capsys)
    assert taken.read_bytes() == b"a file"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes without permission")
def test_an_unwritable_output_folder_is_refused_before_any_work(tiny_restore_model, images, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert run(images, "-o", locked, "--model", tiny_restore_model) == 2
        assert "is not writable" in refused(capsys)
        assert run(images, "-o", locked / "new", "--model", tiny_restore_model) == 2
        assert f"the folder {locked}, where it would be created, is not writable" in refused(capsys)
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("args, message", [
    (["--tile", "16", "--overlap", "16"], "--overlap (16) must be smaller than --tile (16)"),
    (["--tile", "64", "--overlap", "80"], "--overlap (80) must be smaller than --tile (64)"),  # the image fits a tile
    (["--nfe", "99999999999"], "--nfe must be an integer from 1 to 10000 (got 99999999999)"),
    (["--nfe", "0"], "--nfe must be an integer >= 1"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--max-memory", "1M"], "--max-memory 1048576 bytes is below one 64 px tile of this model (8388608 bytes"),
    (["--threads", "0"], "--threads must be >= 1 (got 0)"),
])
def test_settings_are_refused_before_the_banner_and_any_image(tiny_restore_model, images, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert run(images, "-o", out, "--model", tiny_restore_model, *args) == 2
    assert message in refused(capsys)
    assert not out.exists()


def test_a_small_tile_gets_an_overlap_that_fits_it(tiny_restore_model, images, tmp_path, capsys):
    assert run(images / "rgb.png", "-o", tmp_path / "out", "--model", tiny_restore_model, "--nfe", "1", "--tile", "16") == 0
    assert "1 restored" in capsys.readouterr().out  # 32 px by default, at most half of a 16 px tile


def test_argument_type_errors_are_one_line(tiny_restore_model, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(images, "-o", tmp_path / "out", "--model", tiny_restore_model, "--nfe", "ten")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["revsde restore: error: argument --nfe: expected an integer (got 'ten') "
                                "(see revsde restore --help)"]


def test_a_second_run_over_a_folder_does_not_take_its_own_outputs_for_inputs(tiny_restore_model, images, tmp_path, capsys):
    out = images / "nest" / "restored"
    assert run(images, "-o", out, "--model", tiny_restore_model, "--nfe", "1") == 0
    assert "4 restored, 0 skipped, 0 failed" in capsys.readouterr().out
    assert run(images, "-o", out, "--model", tiny_restore_model, "--nfe", "1", "--skip-existing") == 0
    assert "0 restored, 4 skipped, 0 failed" in capsys.readouterr().out
    # a glob keeps only file names: rgb.png exists, gray16.png goes next to it; the outputs are not matched
    assert run(str(images / "**" / "*.png"), "-o", out, "--model", tiny_restore_model, "--nfe", "1", "--skip-existing") == 0
    assert "1 restored, 1 skipped, 0 failed" in capsys.readouterr().out
    assert run(images, "-o", out, "--model", tiny_restore_model, "--nfe", "1") == 0
    assert "4 restored, 0 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["gray16.png", "photo.jpg", "rgb.png", "rgba.tif", "sub/gray16.png"]  # no outputs of outputs
    # the output folder itself as the input folder is still refused: every output would overwrite its input
    assert run(out, "-o", out, "--model", tiny_restore_model, "--nfe", "1") == 2
    assert "would overwrite the input" in capsys.readouterr().err


def test_temporaries_are_never_inputs_and_dead_runs_ones_are_removed(tiny_restore_model, images, tmp_path, capsys):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".rgb.png.revsde-{dead}.k2j4_x9q.tmp"  # left by a run killed mid-write
    live = out / f".rgb.png.revsde-{os.getppid()}.abcdefgh.tmp"  # a running process's: never touched
    for p in (stale, live):
        p.write_bytes((images / "rgb.png").read_bytes())
    shutil.copyfile(images / "rgb.png", images / f".rgb.png.revsde-{dead}.part.png")  # not revsde's pattern
    (images / f".photo.jpg.revsde-{dead}.a1b2c3d4.tmp").write_bytes(b"")
    assert run(images, out, "-o", tmp_path / "again", "--model", tiny_restore_model, "--nfe", "1") == 0
    printed = capsys.readouterr().out
    assert "5 restored" in printed and ".tmp" not in printed  # the 4 images and the hidden .part.png
    assert run(images, "-o", out, "--model", tiny_restore_model, "--nfe", "1") == 0
    assert f"removed {stale}: a temporary file left by an interrupted run" in capsys.readouterr().out
    assert not stale.exists() and live.exists()
    assert (images / f".photo.jpg.revsde-{dead}.a1b2c3d4.tmp").exists()  # inputs' folders are only read
    assert run(live, "-o", tmp_path / "x", "--model", tiny_restore_model) == 2
    assert "is a temporary file of a revsde run, not an input" in capsys.readouterr().err


def test_nan_pixels_are_named_as_the_input_problem(tiny_restore_model, images, tmp_path, capsys):
    import tifffile

    pixels = np.full((12, 12, 3), 0.5, np.float32)
    pixels[3, 4, 1] = np.nan
    tifffile.imwrite(images / "nan.tif", pixels, photometric="rgb")
    assert run(images, "-o", tmp_path / "out", "--model", tiny_restore_model, "--nfe", "1") == 1
    printed = capsys.readouterr().out
    assert f"failed: {images / 'nan.tif'} ({images / 'nan.tif'}: the image holds 1 NaN or infinite sample value;" \
        in printed and "4 restored, 0 skipped, 1 failed" in printed


def test_progress_counts_tiles_times_steps_inside_an_image(tiny_restore_model, tmp_path, capsys):
    """With --progress a tiled image shows a bar over tiles × steps (tqdm's count, rate and ETA), not
    "0/1" until the image is done: a 48×40 image in 32-px tiles with overlap 8 is 2 × 2 tiles, at 3 NFE
    of mrs 3 steps each, so 12 steps."""
    rng = np.random.default_rng(1)
    write_image(tmp_path / "big.png", Image(rng.random((48, 40, 3), dtype=np.float32)))
    assert main(["restore", str(tmp_path / "big.png"), "-o", str(tmp_path / "out"), "--model", str(tiny_restore_model),
                 "--nfe", "3", "--tile", "32", "--overlap", "8", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "big.png" in err and "0/12 [" in err, err  # the bar's total; tqdm redraws at most every 0.1 s


def test_a_fitted_grid_file_drives_restore_and_a_wrong_one_is_refused(tiny_restore_model, images, tmp_path, capsys):
    """--grid FILE.json: a grid saved for this model, sampler and NFE is used (other bytes than the default
    grid, the same as the Python call with that grid); one fitted to another NFE or model is refused
    before any image; --grid NAME takes a grid name."""
    import revsde
    from revsde.apps.restore.restore import load_restore_model

    model, _ = load_restore_model(str(tiny_restore_model))
    grid = torch.tensor([1.0, 0.6, 0.25, 0.01], dtype=torch.float64)
    good = revsde.grids.save_grid(tmp_path / "g3.json", grid, model=model, sampler="mrs", options={"order": 2})
    common = ["--model", tiny_restore_model, "--sampler", "mrs", "--option", "order=2"]
    assert run(images / "rgb.png", "-o", tmp_path / "fitted", "--nfe", "3", "--grid", good, *common) == 0
    assert f"grid {good}" in capsys.readouterr().out
    assert run(images / "rgb.png", "-o", tmp_path / "plain", "--nfe", "3", *common) == 0
    fitted, plain = (tmp_path / "fitted" / "rgb.png").read_bytes(), (tmp_path / "plain" / "rgb.png").read_bytes()
    assert fitted != plain
    assert run(images / "rgb.png", "-o", tmp_path / "named", "--nfe", "3", "--grid", "uniform_t", *common) == 0
    capsys.readouterr()
    out = tmp_path / "refused"
    assert run(images, "-o", out, "--nfe", "4", "--grid", good, *common) == 2
    assert "steps" in refused(capsys)
    assert not out.exists()
    other = revsde.grids.save_grid(tmp_path / "other.json", grid, model="sha256:0123456789abcdef", sampler="mrs",
                                   options={"order": 2})
    assert run(images, "-o", out, "--nfe", "3", "--grid", other, *common) == 2
    assert "was fitted to the model with fingerprint sha256:0123456789abcdef" in refused(capsys)
    assert run(images, "-o", out, "--nfe", "3", "--grid", "nope", *common) == 2
    assert "--grid must be one of" in refused(capsys)

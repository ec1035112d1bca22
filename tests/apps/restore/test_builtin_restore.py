"""``revsde restore``'s defaults and the committed restoration models (issue 27, items 1 and 8): a run
given no sampler or NFE uses what the model's card recommends (stored in the file), one outside the
range the card validated warns on stderr and goes on; the built-in denoiser restores at 1-3 NFE (its
x̂₀ near the prior was untrained, 6.8 dB at 1 NFE); the inpainting masks reach the sizes a user draws
and the built-in inpainter's limits are stated in ``--help`` and on its card."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from revsde.apps.restore import data as D
from revsde.apps.restore import eval as E
from revsde.io.images import Image, read_image, write_image
from revsde.apps.restore.restore import TASKS, builtin_path, recommended_setting, run_settings, validation_warning
from revsde.apps.restore.model import load_weights, read_config, recommend, score_model
from revsde.cli import main
from revsde.sde import MRSDE



@pytest.fixture
def photo(tmp_path):
    src = tmp_path / "in" / "x.png"
    src.parent.mkdir()
    write_image(src, Image(np.random.default_rng(0).random((24, 20, 3), dtype=np.float32)))
    return src


def restore(*args):
    return main(["restore", *map(str, args), "--no-progress"])


# --- item 1: the card's setting is the default; a run outside what it validated warns --------------
def test_the_cards_setting_is_the_default_and_anything_given_wins(tiny_restore_model, photo, tmp_path, capsys):
    assert recommended_setting(str(tiny_restore_model)) is None  # a file without one: mrs at 10 NFE, no warning
    assert run_settings(None) == ("mrs", 10, {}, "the default")
    carded = tmp_path / "carded.safetensors"
    carded.write_bytes(tiny_restore_model.read_bytes())
    recommend(carded, 2, (2, 5), options={"order": 1})
    rec = recommended_setting(str(carded))
    assert rec == read_config(carded)["recommended"] == {"sampler": "mrs", "nfe": 2, "options": {"order": 1},
                                                         "validated_nfe": [2, 5]}
    for name, tensor in load_weights(tiny_restore_model)[0].state_dict().items():  # the weights are untouched
        assert torch.equal(load_weights(carded)[0].state_dict()[name], tensor)
    assert run_settings(rec)[:3] == run_settings(rec, "mrs")[:3] == ("mrs", 2, {"order": 1})
    assert run_settings(rec, nfe=5)[:3] == ("mrs", 5, {})
    assert run_settings(rec, "euler_maruyama")[:3] == ("euler_maruyama", 10, {})

    assert restore(photo, "-o", tmp_path / "card", "--model", carded) == 0
    captured = capsys.readouterr()
    assert "sampler mrs, order=1, NFE 2 per image (tile) (the model card's best setting)" in captured.out
    assert "warning" not in captured.err
    assert restore(photo, "-o", tmp_path / "given", "--model", carded, "--nfe", "2", "--option", "order=1") == 0
    assert (tmp_path / "card" / "x.png").read_bytes() == (tmp_path / "given" / "x.png").read_bytes()
    capsys.readouterr()


@pytest.mark.parametrize("args, what", [(["--nfe", "1", "--option", "order=1"], "NFE 1"),
                                        (["--nfe", "10", "--option", "order=1"], "NFE 10"),
                                        (["--nfe", "3"], "sampler mrs"),
                                        (["--sampler", "euler_maruyama", "--nfe", "3"], "sampler euler_maruyama")])
def test_a_run_outside_what_the_card_validated_warns_and_goes_on(tiny_restore_model, photo, tmp_path, capsys, args, what):
    carded = tmp_path / "carded.safetensors"
    carded.write_bytes(tiny_restore_model.read_bytes())
    recommend(carded, 2, (2, 5), options={"order": 1})
    assert restore(photo, "-o", tmp_path / "out", "--model", carded, *args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the model card validated this model with mrs, order=1 at "
                                               "2-5 NFE") and what in err[0], err
    assert read_image(tmp_path / "out" / "x.png").pixels.shape == (24, 20, 3)
    assert validation_warning(recommended_setting(str(carded)), "mrs", 4, {"order": 1}) is None


def test_recommend_refuses_a_setting_outside_its_own_range(tiny_restore_model, tmp_path):
    carded = tmp_path / "carded.safetensors"
    carded.write_bytes(tiny_restore_model.read_bytes())
    for nfe, validated in ((0, (1, 2)), (3, (1, 2)), (True, (1, 2)), (2, (2.5, 3))):
        with pytest.raises(ValueError):
            recommend(carded, nfe, validated)
    assert "recommended" not in read_config(carded)


@pytest.mark.parametrize("task", TASKS)
def test_every_builtin_recommends_a_setting_its_card_validated(task):
    if not builtin_path(task).is_file():
        pytest.skip(f"no built-in {task} model")
    rec = recommended_setting("builtin", task)
    assert rec is not None and rec["sampler"] == "mrs", rec
    lo, hi = rec["validated_nfe"]
    assert lo <= rec["nfe"] <= hi
    card = builtin_path(task).with_suffix(".md").read_text()
    assert f"--task {task}` uses **mrs at {rec['nfe']} NFE**" in card and f"{lo}" in card


def test_the_deblurrer_runs_at_its_cards_nfe_by_default(tmp_path, capsys):
    """The deblur card found 1 NFE best (30.49 dB against 27.67 at 10, below the input's 27.86)."""
    x0 = E.center_crop(D.photos(["camera"])["camera"], 64)
    src = tmp_path / "in" / "blurred.png"
    src.parent.mkdir()
    write_image(src, Image(D.degrade("deblur", x0[None], seed=0)[0].clamp(0, 1).permute(1, 2, 0).numpy()))
    assert restore(src, "-o", tmp_path / "out", "--task", "deblur") == 0
    captured = capsys.readouterr()
    assert "NFE 1 per image (tile) (the model card's best setting)" in captured.out and not captured.err


# --- item 1: the denoiser at few NFE -------------------------------------------------------------
@pytest.fixture(scope="module")
def denoiser():
    net, sde, _ = load_weights(builtin_path("denoise"))
    return score_model(net, sde)


def test_the_builtin_denoiser_restores_at_1_to_3_nfe(denoiser):
    """A 128 px crop of the held-out `camera` (input 20.9 dB): before the fine-tune that trains x̂₀ near
    the prior, mrs gave 6.8 / 18.0 / 15.1 dB at 1 / 2 / 3 NFE (31.0 at 5)."""
    x0 = D.photos(["camera"])["camera"][None, :, 100:228, 100:228]
    ev = E.evaluate_restore(denoiser, "denoise", nfe=1, images={"camera": x0[0]})
    assert ev["mean"]["psnr_in"] < 21.5
    for nfe in (1, 2, 3, 5):
        psnr = E.evaluate_restore(denoiser, "denoise", nfe=nfe, images={"camera": x0[0]})["mean"]["psnr"]
        assert psnr > 28.0, (nfe, psnr)


def test_the_builtin_denoiser_runs_at_1_nfe_from_the_command_line(tmp_path, capsys):
    x0 = D.photos(["camera"])["camera"][:, 100:164, 100:164]
    src = tmp_path / "in" / "noisy.png"
    src.parent.mkdir()
    noisy = D.degrade("denoise", x0[None], seed=0)[0].clamp(0, 1)
    write_image(src, Image(noisy.permute(1, 2, 0).numpy(), bits=16))
    assert restore(src, "-o", tmp_path / "out", "--nfe", "1") == 0
    out = torch.from_numpy(read_image(tmp_path / "out" / "noisy.png").rgb().copy()).permute(2, 0, 1).double()
    assert E.psnr(out, x0.double()) > E.psnr(noisy.double(), x0.double()) + 5
    capsys.readouterr()


# --- item 8: the inpainting masks and the inpainter's limits --------------------------------------
def widest_hole(masks: torch.Tensor) -> float:
    """Twice the largest distance from a missing pixel to a present one, over masks (B, 1, H, W)."""
    from scipy import ndimage

    return max(2 * float(ndimage.distance_transform_edt(m).max()) for m in masks[:, 0].numpy())


def test_the_training_masks_reach_quarter_side_rectangles_and_20_px_strokes():
    masks = D.inpaint_mask(64, 128, 128, torch.Generator().manual_seed(0))
    widest = widest_hole(masks)
    assert widest >= 28, widest  # a 32 px rectangle (the old masks: rectangles up to 19 px)
    assert D.INPAINT_RECT[1] == D.INPAINT_SCALE // 4 and D.INPAINT_STROKE[1] == 20
    coverage = masks[:, 0].float().mean((1, 2))
    assert float(coverage.min()) >= 0.15 and float(coverage.max()) <= 0.6
    small = D.inpaint_mask(64, 128, 128, torch.Generator().manual_seed(1))
    from scipy import ndimage

    assert min(ndimage.label(m)[1] for m in small[:, 0].numpy()) >= 2  # several holes per crop


@pytest.mark.parametrize("kind, size", [("rectangle", 8), ("rectangle", 64), ("stroke", 5), ("stroke", 20)])
def test_sized_masks_have_holes_of_the_size_asked(kind, size):
    mask = D.sized_mask(256, 256, kind, size, torch.Generator().manual_seed(0))
    assert mask.shape == (1, 1, 256, 256) and 0.1 <= float(mask.float().mean()) < 0.1 + (size * 64 + size**2) / 256**2
    widest = widest_hole(mask)
    assert widest <= (2 * size if kind == "rectangle" else 2 * size + 2)  # overlaps may merge two holes
    assert widest >= size - 2


def test_the_inpainters_limits_are_in_help_and_on_its_card(capsys):
    with pytest.raises(SystemExit):
        main(["restore", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "inpaint model was trained on rectangles up to 32 px and strokes up to 20 px wide" in text
    card = builtin_path("inpaint").with_suffix(".md").read_text()
    assert "## Limits" in card and "| rectangle | 64 |" in card and "| stroke | 20 |" in card


def test_the_builtin_inpainter_fills_32_px_holes():
    """32 px squares over 10 % of a held-out crop: the inpainter trained on holes up to 19 px left them near
    white (7.4 dB inside the holes at 5 NFE, 5.5 at 2; the white input itself: 2.8 dB). On the card's 256 px
    crops (128 px crops hold too few holes: seeds 0-2 gave 9.5 / 6.2 / 6.3 dB there, 12.8 / 10.9 / 9.3 here)."""
    rows = E.evaluate_inpaint_sizes(builtin_path("inpaint"), nfe=recommended_setting("builtin", "inpaint")["nfe"],
                                    images=("camera", "flower"), holes=(("rectangle", 32),), crop=256)
    assert rows[0]["psnr_hole"] > 10.0 and math.isfinite(rows[0]["psnr"]), rows


# --- the fine-tune that trains x̂₀ near the prior ------------------------------------------------
def test_the_data_weight_adds_the_data_loss_to_the_matching_loss():
    from revsde.apps.restore import train as T
    from revsde.apps.restore import model as M

    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)
    mu = x0 + 0.1

    class Offset(torch.nn.Module):
        def forward(self, x, time, mu):
            return x0 + 0.05

    model = M.score_model(Offset(), MRSDE(), "data")
    parts = [T.training_loss(model, x0, mu, torch.Generator().manual_seed(4), loss) for loss in ("matching", "data")]
    mixed = T.training_loss(model, x0, mu, torch.Generator().manual_seed(4), "matching", data_weight=0.1)
    torch.testing.assert_close(mixed, parts[0] + 0.1 * parts[1], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="data_weight"):
        T.train_restore("denoise", "unused", 1, loss="data", data_weight=0.1)


def test_a_fine_tune_starts_from_a_model_and_records_its_stages(tiny_restore_model, tmp_path):
    from revsde.apps.restore import train as T
    from revsde.apps.restore import model as M

    images = [torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    kw = dict(nf=8, depth=2, batch=2, patch=16, images=images, progress=False, threads=None, checkpoint_every=1)
    result = T.train_restore("denoise", tmp_path / "tune", 2, lr=1e-4, data_weight=0.1, init_from=tiny_restore_model, **kw)
    path = M.export_weights(result.checkpoint, tmp_path / "tuned.safetensors")
    stages = M.training_stages(read_config(path))
    assert [s["trained_steps"] for s in stages] == [3, 2]
    assert stages[0]["loss"] == "matching" and stages[0]["data_weight"] == 0.0 and stages[1]["data_weight"] == 0.1
    assert stages[1]["init"]["from"] == tiny_restore_model.as_posix()
    again = T.train_restore("denoise", tmp_path / "again", 1, lr=1e-4, init_from=tiny_restore_model, stop_at=0, **kw)
    for name, tensor in load_weights(tiny_restore_model)[0].state_dict().items():  # the start is the model's weights
        torch.testing.assert_close(torch.load(again.checkpoint, weights_only=True)["model"][name], tensor)
    with pytest.raises(ValueError, match="other settings"):
        T.train_restore("denoise", tmp_path / "wide", 1, init_from=tiny_restore_model, **{**kw, "nf": 16})


def test_revsde_train_restore_fine_tunes_with_the_data_term(tiny_restore_model, tmp_path, capsys):
    out = tmp_path / "tuned.safetensors"
    assert main(["train", "restore", "--steps", "1", "-o", str(tmp_path / "run"), "--nf", "8", "--depth", "2",
                 "--batch", "1", "--patch", "16", "--init-from", str(tiny_restore_model), "--data-weight", "0.1",
                 "--export", str(out), "--threads", "1", "--no-progress"]) == 0
    from revsde.apps.restore.model import training_stages

    stages = training_stages(read_config(out))
    assert [s["trained_steps"] for s in stages] == [3, 1] and stages[1]["data_weight"] == 0.1
    capsys.readouterr()

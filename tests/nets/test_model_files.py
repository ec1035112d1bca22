"""Model files: every weights file revsde writes (and every built-in one) carries the checksum of its tensors,
verified on load; bad files of every kind are refused by every loader as one ``ValueError`` naming the file
and the problem (``revsde restore`` / ``enhance``: one line, exit status 2, before any work), and a file that
asks to run code is refused without running it and without a suggestion to load it unsafely."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

import revsde
from revsde.io.images import Image, write_image
from revsde.cli import main
from revsde.nets.model_files import (CHECKSUM_KEY, ModelFileError, load_tensors, read_metadata, save_tensors,
                                     tensors_checksum)

WEIGHTS = Path(revsde.__file__).resolve().parent / "weights"


class _RunsCode:
    """Pickles as a call of ``os.system``: a file holding it asks whoever loads it to run a command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def damaged(source: Path, target: Path) -> Path:
    """A copy of ``source`` with one byte of its tensor data (the file's last bytes) flipped."""
    data = bytearray(source.read_bytes())
    data[-9] ^= 0x5A
    target.write_bytes(bytes(data))
    return target


@pytest.fixture
def bad_files(tmp_path):
    """Files that are not usable weights, by what each should be called; ``marker`` must never appear."""
    marker = tmp_path / "code-ran"
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "cut.safetensors").write_bytes((WEIGHTS / "restore_denoise.safetensors").read_bytes()[:300])
    (folder / "text.pth").write_text("these are not weights\n" * 5)
    torch.save({"weight": torch.zeros(2), "hook": _RunsCode(f"touch {marker}")}, folder / "evil.pth")
    (folder / "empty.pth").write_bytes(b"")
    return folder, marker


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("revsde: error: "), captured.err
    assert "model:" not in captured.out  # no banner: refused before any work
    return lines[0]


# --- checksums ------------------------------------------------------------------------------------
def test_every_builtin_weights_file_carries_the_checksum_of_its_tensors():
    paths = sorted(WEIGHTS.glob("*.safetensors"))
    assert {p.name for p in paths} >= {"restore_denoise.safetensors", "speech_enhance.safetensors",
                                       "fd_digits.safetensors", "image_digits.safetensors"}
    for path in paths:
        assert read_metadata(path)[CHECKSUM_KEY] == tensors_checksum(load_file(str(path))), path.name
        assert load_tensors(path).keys() == load_file(str(path)).keys()


def test_the_checksum_follows_names_dtypes_shapes_and_bytes_not_layout():
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.float16)}
    assert tensors_checksum(a) == tensors_checksum({"b": a["b"].clone(), "w": a["w"].t().contiguous().t()})
    assert tensors_checksum(a) != tensors_checksum({**a, "w": a["w"].reshape(3, 2)})
    assert tensors_checksum(a) != tensors_checksum({**a, "b": torch.zeros(3, dtype=torch.bfloat16)})
    assert tensors_checksum(a) != tensors_checksum({"w2": a["w"], "b": a["b"]})
    changed = a["w"].clone()
    changed[1, 2] = torch.nextafter(changed[1, 2], torch.tensor(10.0))
    assert tensors_checksum(a) != tensors_checksum({**a, "w": changed})


def test_exports_carry_the_checksum_a_damaged_file_is_refused_and_one_without_still_loads(tmp_path):
    from revsde.apps.restore.model import export_weights, load_weights
    from revsde.nets.irsde_unet import ConditionalUNet
    from revsde.sde import MRSDE

    net = ConditionalUNet(in_nc=3, out_nc=3, nf=8, depth=2)
    config = {"format": "revsde.restore/1", "task": "denoise", "loss": "matching", "arch": "ConditionalUNet",
              "nf": 8, "depth": 2, "sde": MRSDE().config()}
    path = export_weights({"config": config, "step": 1, "elapsed_s": 0.0, "ema": net.state_dict()},
                          tmp_path / "model.safetensors")
    assert read_metadata(path)[CHECKSUM_KEY] == tensors_checksum(net.state_dict())
    load_weights(path)
    with pytest.raises(ModelFileError, match=r"the weights are damaged: their checksum is [0-9a-f]{16}…, the file "
                                             r"says [0-9a-f]{16}…"):
        load_weights(damaged(path, tmp_path / "damaged.safetensors"))
    # a file without a checksum (another tool's, or an export from before checksums) loads as before
    meta = {k: v for k, v in read_metadata(path).items() if k != CHECKSUM_KEY}
    save_file(load_file(str(path)), str(tmp_path / "plain.safetensors"), metadata=meta)
    loaded, _, _ = load_weights(tmp_path / "plain.safetensors")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert load_file(str(path)).keys() == load_tensors(tmp_path / "plain.safetensors").keys()


def test_recommend_rewrites_the_checksum_and_refuses_a_damaged_file(tmp_path):
    from revsde.apps.speech.model import read_config, recommend

    path = shutil.copyfile(WEIGHTS / "speech_enhance.safetensors", tmp_path / "speech.safetensors")
    recommend(path, 4, {"order": 1})
    assert read_config(path)["recommended"] == {"nfe": 4, "options": {"order": 1}}
    assert read_metadata(path)[CHECKSUM_KEY] == tensors_checksum(load_file(str(path)))
    with pytest.raises(ModelFileError, match="the weights are damaged"):
        recommend(damaged(path, tmp_path / "damaged.safetensors"), 4)


def test_save_tensors_adds_the_checksum_to_the_metadata_it_is_given(tmp_path):
    tensors = {"a": torch.ones(3), "b": torch.arange(4, dtype=torch.int64)}
    path = tmp_path / "t.safetensors"
    path.write_bytes(save_tensors(tensors, {"format": "x"}))
    assert read_metadata(path) == {"format": "x", CHECKSUM_KEY: tensors_checksum(tensors)}


@pytest.mark.parametrize("command, builtin", [("restore", "restore_denoise.safetensors"),
                                              ("enhance", "speech_enhance.safetensors")])
def test_the_commands_refuse_damaged_weights_in_one_line(tmp_path, capsys, command, builtin):
    model = damaged(WEIGHTS / builtin, tmp_path / builtin)
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.png", Image(np.full((8, 8, 3), 0.5, np.float32)))
    sf.write(str(tmp_path / "in" / "a.wav"), np.zeros(1600, np.float32), 16000)
    out = tmp_path / "out"
    assert main([command, str(tmp_path / "in"), "-o", str(out), "--model", str(model), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert f"{model}: the weights are damaged" in line and "copy or export it again" in line
    assert not out.exists()


# --- bad files, every loader ----------------------------------------------------------------------
@pytest.mark.parametrize("args, name, message", [
    ([], "cut.safetensors", "not a readable .safetensors file"),
    (["--irsde-config", "deraining"], "cut.safetensors", "not a readable .safetensors file"),
    (["--irsde-config", "deraining"], "text.pth", "not a PyTorch checkpoint"),
    (["--irsde-config", "deraining"], "empty.pth", "empty or cut short"),
    (["--irsde-config", "deraining"], "evil.pth", "refused: a weights file may hold only tensors and plain values"),
])
def test_restore_refuses_bad_model_files_in_one_line(tmp_path, capsys, bad_files, args, name, message):
    folder, marker = bad_files
    write_image(tmp_path / "a.png", Image(np.full((8, 8, 3), 0.5, np.float32)))
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "a.png"), "-o", str(out), "--model", str(folder / name), *args,
                 "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert str(folder / name) in line and message in line, line
    assert "weights_only" not in line and "will likely succeed" not in line  # never suggest an unsafe load
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("name, message", [
    ("cut.safetensors", "not a readable .safetensors file"),
    ("text.pth", "not a PyTorch checkpoint"),
    ("evil.pth", "refused: the file asks to call or instantiate"),
])
def test_enhance_refuses_bad_model_files_in_one_line(tmp_path, capsys, bad_files, name, message):
    folder, marker = bad_files
    model = folder / name
    if model.suffix == ".pth":  # enhance reads official checkpoints as .ckpt
        model = model.rename(model.with_suffix(".ckpt"))
    sf.write(str(tmp_path / "a.wav"), np.zeros(1600, np.float32), 16000)
    out = tmp_path / "out"
    assert main(["enhance", str(tmp_path / "a.wav"), "-o", str(out), "--model", str(model), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert str(model) in line and message in line, line
    assert "weights_only" not in line and not marker.exists() and not out.exists()


def _loaders():
    from revsde.apps import exports
    from revsde.apps.image import model as image_model, noise_classifier
    from revsde.apps.restore import model as restore_model
    from revsde.apps.speech import model as speech_model, train as train_speech
    from revsde.nets import digits_classifier, fid_inception, irsde_unet, sgmse

    return {
        "restore export": restore_model.load_weights, "speech export": speech_model.load_weights,
        "image export": image_model.load_weights, "noise classifier": noise_classifier.load_weights,
        "FD-digits extractor": digits_classifier.load_classifier, "speech start": train_speech.read_model,
        "training checkpoint": exports.load_checkpoint, "IR-SDE checkpoint": irsde_unet.load_irsde_checkpoint,
        "SGMSE+ checkpoint": sgmse.load_sgmse_checkpoint, "Inception weights": fid_inception.load_fid_inception,
    }


@pytest.mark.parametrize("loader", list(_loaders()))
@pytest.mark.parametrize("name", ["cut.safetensors", "text.pth", "evil.pth", "empty.pth"])
def test_every_loader_refuses_bad_files_with_a_value_error(bad_files, loader, name):
    folder, marker = bad_files
    with pytest.raises(ValueError) as error:
        _loaders()[loader](folder / name)
    message = str(error.value)
    assert name in message and "\n" not in message and "weights_only" not in message, message
    assert not marker.exists()


def test_restore_names_a_speech_model_for_what_it_is(tmp_path, capsys):
    write_image(tmp_path / "a.png", Image(np.full((8, 8, 3), 0.5, np.float32)))
    speech = WEIGHTS / "speech_enhance.safetensors"
    for extra in ([], ["--irsde-config", "deraining"]):
        assert main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", str(speech),
                     *extra, "--no-progress"]) == 2
        line = one_error_line(capsys)
        assert "is a revsde speech model (for `revsde enhance`), not a restoration model" in line, line
        assert "nf=" not in line and "not a revsde export" not in line


def test_enhance_names_a_restoration_model_for_what_it_is(tmp_path, capsys):
    sf.write(str(tmp_path / "a.wav"), np.zeros(1600, np.float32), 16000)
    assert main(["enhance", str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"), "--model",
                 str(WEIGHTS / "restore_denoise.safetensors"), "--no-progress"]) == 2
    assert "is a revsde restoration model (for `revsde restore`), not a speech model" in one_error_line(capsys)


def test_an_irsde_checkpoint_of_the_wrong_network_says_so_without_python_arguments(tmp_path):
    from revsde.nets.irsde_unet import load_irsde_checkpoint

    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not an IR-SDE ConditionalUNet checkpoint: it has no init_conv.weight") \
            as error:
        load_irsde_checkpoint(tmp_path / "other.pth")
    assert "nf=" not in str(error.value)


def test_every_revsde_file_format_has_a_name_for_messages():
    from revsde.apps.exports import FORMAT_KINDS
    from revsde.apps.image import model as image_model, noise_classifier
    from revsde.apps.restore import model as restore_model
    from revsde.apps.speech import model as speech_model
    from revsde.nets import digits_classifier

    formats = {m.FORMAT for m in (restore_model, image_model, noise_classifier, speech_model, digits_classifier)}
    formats.add(image_model.FLOW_FORMAT)
    assert set(FORMAT_KINDS) == formats
    assert {read_metadata(p)["format"] for p in WEIGHTS.glob("*.safetensors")} <= formats

"""``revsde enhance``: files, folders and globs through a tiny speech model; formats, rates, channels and
subtypes kept, inputs never overwritten, bad files reported and the rest enhanced, determinism by seed,
streamed windows equal to whole-file processing, SGMSE's grid and NFE accounting, peak safety."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from revsde.apps.speech import enhance as E
from revsde.apps.speech.enhance import Enhancer, SpeechModel, chunking, enhance_array, enhance_files
from revsde.grids import sgmse_grid
from revsde.apps.speech.model import export_weights
from revsde.apps.speech.train import train_speech
from revsde.audio.stream import PEAK_LIMIT, windows_count
from revsde.cli import main
from fixtures import _save_lightning, _small_net
from fixtures import ROOT

TINY_NET = {"nf": 8, "ch_mult": (1, 1, 1, 1, 1), "num_res_blocks": 1, "attn_resolutions": (), "image_size": 256,
            "time_scaling": "none"}
RATE = 16000  # the tiny model's rate (SGMSE_16K)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-step NCSN++ (nf 8, five levels, no attention) trained on 8 espeak-ng utterances and exported."""
    root = tmp_path_factory.mktemp("speech_model")
    with torch.random.fork_rng(devices=[]):
        result = train_speech(root / "run", steps=2, batch=2, frames=64, corpus_size=8, corpus_root=root / "corpus",
                              net_config=TINY_NET, progress=False, threads=None)
    return export_weights(result.checkpoint, root / "tiny.safetensors")


@pytest.fixture(scope="session")
def speech(tiny_model):
    return E.load_speech_model(str(tiny_model))


def speech_like(seconds: float, rate: int, channels: int = 1, seed: int = 0, level: float = 0.5) -> np.ndarray:
    """``(C, N)`` float32: a 10-harmonic voice at 120-160 Hz with 4 Hz syllables, plus white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    waves = []
    for c in range(channels):
        f0 = 140 + 20 * np.sin(2 * np.pi * (3 + c) * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        voice = sum(np.sin(k * phase + k * c) / k for k in range(1, 11))
        syllables = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
        x = syllables * voice / 3 + 0.1 * rng.standard_normal(t.size)
        waves.append(level * x / np.abs(x).max())
    return np.stack(waves).astype(np.float32)


def write(path, wave, rate, subtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave.T, rate, subtype=subtype)
    return path


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def listing(folder):
    """Every entry under ``folder``, hidden temporaries included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def run(*args):
    return main(["enhance", *map(str, args), "--no-progress"])


@pytest.fixture
def noisy(tmp_path):
    """WAV PCM_16 16 kHz mono, FLAC PCM_24 44.1 kHz stereo (in a subfolder), Ogg Vorbis 8 kHz mono."""
    folder = tmp_path / "in"
    write(folder / "a.wav", speech_like(0.9, 16000, seed=1), 16000, "PCM_16")
    write(folder / "sub" / "b.flac", speech_like(0.6, 44100, channels=2, seed=2), 44100, "PCM_24")
    write(folder / "c.ogg", speech_like(0.7, 8000, seed=3), 8000, "VORBIS")
    return folder


# --- the command line ---------------------------------------------------------------------------
def test_folder_in_folder_out_keeps_names_formats_rates_channels_lengths_and_subtypes(tiny_model, noisy, tmp_path,
                                                                                        capsys):
    before = digest(noisy)
    out = tmp_path / "out"
    assert run(noisy, "-o", out, "--model", tiny_model, "--nfe", "2") == 0
    printed = capsys.readouterr().out
    assert "model: tiny.safetensors: NCSN++ nf 8" in printed and "16000 Hz; sampler mrs, NFE 2 per window" in printed
    assert "3 enhanced, 0 skipped, 0 failed" in printed
    assert listing(out) == ["a.wav", "c.ogg", "sub", "sub/b.flac"]  # no temporaries left
    assert digest(noisy) == before  # inputs only read
    for name in ("a.wav", "sub/b.flac", "c.ogg"):
        src, dst = sf.info(str(noisy / name)), sf.info(str(out / name))
        assert (dst.format, dst.subtype, dst.samplerate, dst.channels, dst.frames) == \
            (src.format, src.subtype, src.samplerate, src.channels, src.frames), name
        x, _ = sf.read(str(noisy / name), always_2d=True)
        y, _ = sf.read(str(out / name), always_2d=True)
        assert np.isfinite(y).all() and np.abs(y).max() <= 1
        assert np.abs(y - x).max() > 1e-2, name  # enhanced, not copied (every channel)
        assert all(np.abs(y[:, c] - x[:, c]).max() > 1e-2 for c in range(x.shape[1]))


def test_globs_files_and_skip_existing(tiny_model, noisy, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(str(noisy / "**" / "*.flac"), noisy / "a.wav", "-o", out, "--model", tiny_model, "--nfe", "2") == 0
    assert listing(out) == ["a.wav", "b.flac"]  # a glob match keeps only its file name
    assert "2 enhanced, 0 skipped, 0 failed" in capsys.readouterr().out
    stamp = {p: (out / p).stat().st_mtime_ns for p in ("a.wav", "b.flac")}
    (out / "a.wav").write_bytes(b"not touched")
    assert run(noisy / "a.wav", noisy / "sub" / "b.flac", noisy / "c.ogg", "-o", out, "--model", tiny_model,
               "--nfe", "2", "--skip-existing") == 0
    printed = capsys.readouterr().out
    assert "1 enhanced, 2 skipped, 0 failed" in printed
    assert (out / "a.wav").read_bytes() == b"not touched" and (out / "b.flac").stat().st_mtime_ns == stamp["b.flac"]
    assert sf.info(str(out / "c.ogg")).samplerate == 8000


def test_refuses_to_write_over_inputs(tiny_model, noisy, tmp_path, capsys):
    before = digest(noisy)
    assert run(noisy, "-o", noisy, "--model", tiny_model, "--nfe", "2") == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert run(noisy / "sub" / "b.flac", "-o", noisy / "sub", "--model", tiny_model, "--nfe", "2") == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert digest(noisy) == before and listing(noisy) == ["a.wav", "c.ogg", "sub", "sub/b.flac"]
    assert run(noisy / "absent.wav", "-o", tmp_path / "out", "--model", tiny_model) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sampler_args", [[], ["--option", "stochastic=true"]], ids=["mrs_ode", "mrs_sde"])
def test_seed_determines_the_result(tiny_model, noisy, tmp_path, sampler_args):
    """The ODE sampler's only randomness is the prior draw ``y + σ(1) z``; the SDE adds per-step noise."""
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run(noisy / "a.wav", "-o", tmp_path / name, "--model", tiny_model, "--nfe", "2", "--seed", seed,
                   *sampler_args) == 0
        outs.append(tmp_path / name / "a.wav")
    assert outs[0].read_bytes() == outs[1].read_bytes()
    a, c = sf.read(str(outs[0]))[0], sf.read(str(outs[2]))[0]
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("args, message", [
    (["--nfe", "0"], "--nfe must be an integer >= 2 for sampler 'mrs'"),
    (["--nfe", "1"], "--nfe must be an integer >= 2 for sampler 'mrs'"),
    (["--sampler", "pc", "--nfe", "4"], "--nfe must be 1 + a positive multiple of 2 for sampler 'pc'"),
    (["--sampler", "sgmse", "--nfe", "1"], "--nfe must be a positive multiple of 2 for sampler 'sgmse'"),
    (["--sampler", "sgmse", "--nfe", "7"], "--nfe must be a positive multiple of 2 for sampler 'sgmse'"),
    (["--sampler", "nope"], "unknown sampler 'nope'; available samplers:"),
    (["--sampler", "ode_rk45"], "adaptive"),
    (["--option", "order=7"], "sampler 'mrs'"),
    (["--chunk-seconds", "0.5", "--overlap-seconds", "0.25"], "--overlap-seconds must lie in [0, chunk/2)"),
    (["--chunk-seconds", "0.7", "--overlap-seconds", "0.34"], "is too long for chunks of 0.50 s"),
    (["--chunk-seconds", "0"], "--chunk-seconds must be a positive number"),
])
def test_bad_settings_fail_before_any_file(tiny_model, noisy, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert run(noisy, "-o", out, "--model", tiny_model, *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_models_are_clear_errors(noisy, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage" * 20)
    (tmp_path / "garbage.ckpt").write_bytes(b"garbage" * 20)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
    out = tmp_path / "out"
    for model, message in [(tmp_path / "absent.safetensors", "is neither 'builtin' nor a file"),
                           (noisy / "a.wav", "expected a revsde .safetensors export or an SGMSE+ .ckpt"),
                           (tmp_path / "other.safetensors", "is not a revsde speech model"),
                           (tmp_path / "garbage.safetensors", "not a readable .safetensors file"),
                           (tmp_path / "garbage.ckpt", "not a PyTorch checkpoint"),
                           (tmp_path / "empty.ckpt", "empty or cut short"),
                           (tmp_path / "plain.ckpt", "not a Lightning checkpoint")]:
        assert run(noisy, "-o", out, "--model", model) == 2, model.name
        err = capsys.readouterr().err
        assert err.startswith("revsde: error:") and message in err, (model.name, err)
        assert not out.exists()


def test_bad_files_are_reported_and_the_rest_enhanced(tiny_model, noisy, tmp_path, capsys):
    (noisy / "empty.wav").write_bytes(b"")
    (noisy / "text.wav").write_text("this is not a RIFF file\n")
    good = sf.info(str(noisy / "sub" / "b.flac"))
    flac = (noisy / "sub" / "b.flac").read_bytes()
    (noisy / "cut.flac").write_bytes(flac[:len(flac) // 2])  # the header promises more than the stream holds
    (noisy / "folder.wav").mkdir()  # a folder is recursed, not read as a file: here it holds one good file
    write(noisy / "folder.wav" / "inner.wav", speech_like(0.3, 16000, seed=4), 16000, "PCM_16")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "out"
    assert run(noisy, notes, "-o", out, "--model", tiny_model, "--nfe", "2") == 1
    printed = capsys.readouterr().out
    assert "4 enhanced, 0 skipped, 4 failed" in printed
    lines = {line.split(" (")[0]: line for line in printed.splitlines() if line.startswith("failed: ")}
    assert lines.keys() == {f"failed: {noisy / 'empty.wav'}", f"failed: {noisy / 'text.wav'}",
                            f"failed: {noisy / 'cut.flac'}", f"failed: {notes}"}
    assert "empty file (0 bytes)" in lines[f"failed: {noisy / 'empty.wav'}"]
    assert "not a readable WAV file" in lines[f"failed: {noisy / 'text.wav'}"]
    assert "not a readable FLAC file" in lines[f"failed: {noisy / 'cut.flac'}"]
    assert "unsupported audio file type '.txt'" in lines[f"failed: {notes}"]
    # the good files are complete; nothing of the bad ones, no temporaries
    assert listing(out) == ["a.wav", "c.ogg", "folder.wav", "folder.wav/inner.wav", "sub", "sub/b.flac"]
    assert sf.info(str(out / "sub" / "b.flac")).frames == good.frames


def test_a_failure_mid_file_leaves_nothing(tiny_model, noisy, tmp_path, monkeypatch, capsys):
    window, seen = Enhancer.window, []
    out = tmp_path / "out"

    def fail_second(self, wave, index):
        if index == 1:
            seen.append(listing(out))
            raise RuntimeError("boom in window 1")
        return window(self, wave, index)

    monkeypatch.setattr(Enhancer, "window", fail_second)
    short = write(tmp_path / "short" / "short.wav", speech_like(0.3, 16000, seed=5), 16000, "PCM_16")
    assert run(noisy / "a.wav", short, "-o", out, "--model", tiny_model, "--nfe", "2",
               "--chunk-seconds", "0.5", "--overlap-seconds", "0.1") == 1
    printed = capsys.readouterr().out
    assert "RuntimeError: boom in window 1" in printed and "1 enhanced, 0 skipped, 1 failed" in printed
    # 0.9 s in windows of 0.5 s: the first window was in a temporary beside the target when the second failed
    (names,) = seen
    assert len(names) == 1 and names[0].startswith(".a.wav.") and names[0].endswith(".float.wav")
    assert listing(out) == ["short.wav"]  # no partial a.wav, no hidden temporaries


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files without permission")
def test_an_unreadable_file_is_reported(tiny_model, noisy, tmp_path, capsys):
    locked = write(noisy / "locked.wav", speech_like(0.3, 16000), 16000, "PCM_16")
    locked.chmod(0)
    try:
        assert run(noisy, "-o", tmp_path / "out", "--model", tiny_model, "--nfe", "2") == 1
    finally:
        locked.chmod(0o644)
    printed = capsys.readouterr().out
    assert f"failed: {locked}" in printed and "3 enhanced, 0 skipped, 1 failed" in printed


# --- windows ------------------------------------------------------------------------------------
def test_a_chunk_longer_than_the_file_is_one_window_on_the_whole_normalised_file(speech):
    wave = speech_like(1.0, RATE, channels=2, seed=6) * np.array([[1.0], [0.3]], np.float32)
    enhancer = Enhancer(speech, nfe=2, seed=3)
    out = enhance_array(enhancer, wave, RATE, chunk_seconds=4.0)
    assert enhancer.nfe == 2  # one window
    norm = np.abs(wave).max(axis=1).astype(np.float32)[:, None]
    direct = Enhancer(speech, nfe=2, seed=3).window(wave / norm, 0) * norm
    np.testing.assert_array_equal(out, direct)
    mono = enhance_array(Enhancer(speech, nfe=2, seed=3), wave[0], RATE, chunk_seconds=4.0)
    assert mono.shape == wave[0].shape


def test_several_windows_keep_the_length_and_count_their_evaluations(speech):
    wave = speech_like(1.3, 22050, seed=7)[0]
    enhancer = Enhancer(speech, nfe=2, seed=0)
    out = enhance_array(enhancer, wave, 22050, chunk_seconds=0.5, overlap_seconds=0.1)
    assert out.shape == wave.shape and np.isfinite(out).all() and out.dtype == np.float32
    chunk, overlap = chunking(speech, 0.5, 0.1)
    assert (chunk, overlap) == (63 * 128, 12 * 128)  # one 64-frame block; whole hops
    windows = windows_count(round(1.3 * RATE), chunk, overlap)
    assert windows == 3 and enhancer.nfe == 2 * windows


@pytest.mark.parametrize("rate", [RATE, 44100])
def test_streamed_windows_equal_whole_file_processing_for_a_pointwise_enhancer(speech, monkeypatch, rate):
    """A window function without context gives every sample the same value in both windows of an
    overlap, so the cross-fades (which sum to one) must reproduce the whole-file result."""
    monkeypatch.setattr(Enhancer, "window", lambda self, w, i: 0.7 * np.tanh(2 * w))
    wave = speech_like(1.6, rate, channels=2, seed=8) * np.array([[1.0], [0.2]], np.float32)
    enhancer = Enhancer(speech, nfe=2)
    whole = enhance_array(enhancer, wave, rate, chunk_seconds=4.0, overlap_seconds=0.5)
    streamed = enhance_array(enhancer, wave, rate, chunk_seconds=0.5, overlap_seconds=0.2)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=2e-6)
    if rate == RATE:  # no resampling: the whole-file result is the function itself, channel by channel
        norm = np.abs(wave).max(axis=1, keepdims=True)
        np.testing.assert_allclose(whole, 0.7 * np.tanh(2 * wave / norm) * norm, rtol=0, atol=1e-6)


def test_the_command_line_writes_what_enhance_array_returns(tiny_model, speech, tmp_path):
    wave = speech_like(0.8, RATE, channels=2, seed=9, level=0.6)
    src = write(tmp_path / "in" / "float.wav", wave, RATE, "FLOAT")
    assert run(src, "-o", tmp_path / "out", "--model", tiny_model, "--nfe", "2", "--seed", "5",
               "--chunk-seconds", "0.5", "--overlap-seconds", "0.1") == 0
    written = sf.read(str(tmp_path / "out" / "float.wav"), dtype="float32", always_2d=True)[0].T
    ref = enhance_array(Enhancer(speech, nfe=2, seed=5), wave, RATE, chunk_seconds=0.5, overlap_seconds=0.1)
    gain = min(1.0, PEAK_LIMIT / float(np.abs(ref).max()))
    np.testing.assert_array_equal(written, ref * np.float32(gain) if gain < 1 else ref)


def test_a_models_recommended_setting_is_the_default_and_anything_given_wins(tiny_model, tmp_path, capsys):
    from revsde.apps.speech.enhance import run_settings
    from revsde.apps.speech.model import read_config, recommend

    plain = E.load_speech_model(str(tiny_model))
    assert plain.recommended is None and run_settings(plain)[:3] == ("mrs", 10, {})
    assert run_settings(plain, "sgmse")[:3] == ("sgmse", 60, {})
    path = tmp_path / "carded.safetensors"
    path.write_bytes(tiny_model.read_bytes())
    recommend(path, 3, {"stochastic": True})
    assert read_config(path)["recommended"] == {"nfe": 3, "options": {"stochastic": True}}
    speech = E.load_speech_model(str(path))
    for name, tensor in plain.model.net.state_dict().items():  # the weights are untouched
        assert torch.equal(speech.model.net.state_dict()[name], tensor)
    assert run_settings(speech)[:3] == run_settings(speech, "mrs")[:3] == ("mrs", 3, {"stochastic": True})
    assert run_settings(speech, nfe=5)[:3] == ("mrs", 5, {})  # given NFE: the plain sampler at that NFE
    assert run_settings(speech, options={"order": 1})[:3] == ("mrs", 10, {"order": 1})
    assert run_settings(speech, "sgmse")[:3] == ("sgmse", 60, {})
    wave = speech_like(0.5, RATE, seed=4)
    src = write(tmp_path / "in" / "x.wav", wave, RATE, "FLOAT")
    assert run(src, "-o", tmp_path / "out", "--model", path) == 0
    printed = capsys.readouterr().out
    assert "sampler mrs, stochastic=True, NFE 3 per window (the model card's best MR Sampler setting)" in printed
    written = sf.read(str(tmp_path / "out" / "x.wav"), dtype="float32", always_2d=True)[0].T
    ref = enhance_array(Enhancer(speech, nfe=3, options={"stochastic": True}), wave, RATE)
    np.testing.assert_array_equal(written, ref * np.float32(min(1.0, PEAK_LIMIT / float(np.abs(ref).max()))))
    for bad, message in ((1, "integer >= 2"), (2.5, "integer >= 2"), (True, "integer >= 2")):
        with pytest.raises(ValueError, match=message):
            recommend(path, bad)
    with pytest.raises(ValueError, match="must be a dict"):
        recommend(path, 3, [("order", 1)])
    assert read_config(path)["recommended"]["nfe"] == 3  # refused: the file is unchanged


# --- SGMSE+'s sampler ---------------------------------------------------------------------------
def test_sgmse_sampler_runs_sgmse_grid_to_zero_at_two_evaluations_per_step(speech, tmp_path, monkeypatch):
    assert Enhancer(speech, sampler="sgmse", nfe=60).steps == 30
    torch.testing.assert_close(Enhancer(speech, sampler="sgmse", nfe=60).grid, sgmse_grid(30, 0.03), rtol=0, atol=0)
    calls, real = [], E.sample

    def spy(model, shape, **kw):
        calls.append((model.sde.t_min, kw["grid"], kw["steps"]))
        return real(model, shape, **kw)

    monkeypatch.setattr(E, "sample", spy)
    src = write(tmp_path / "in" / "x.wav", speech_like(1.2, RATE), RATE, "PCM_16")
    report = enhance_files([str(src)], tmp_path / "out", speech, sampler="sgmse", nfe=6, chunk_seconds=0.5,
                           overlap_seconds=0.1)
    windows = windows_count(round(1.2 * RATE), *chunking(speech, 0.5, 0.1))
    assert windows == 3 and len(calls) == windows
    assert report.results[0].status == "ok" and report.results[0].nfe == windows * 6
    for t_min, grid, steps in calls:  # 3 steps: linspace(1, t_eps, 3), then t_eps → 0 on OUVE continued to 0
        assert t_min == 0.0 and steps is None
        torch.testing.assert_close(grid, sgmse_grid(3, speech.model.sde.t_min), rtol=0, atol=0)
    assert speech.model.sde.t_min == 0.03  # the loaded model itself is untouched


# --- channels and levels ------------------------------------------------------------------------
def test_channels_are_enhanced_on_their_own_with_their_own_scale_and_seed(speech):
    """Channel ``b`` of window ``i`` is sample ``b`` of one batched call and draws its noise from its own
    Philox stream keyed ``(seed·1000003 + i)·4099 + b``: identical channels come out different, channel 0
    equals a one-channel call, and no channel shares its noise with another window's channel."""
    x = speech_like(0.5, RATE, seed=10)[0]
    xn = x / np.abs(x).max()
    enhancer = Enhancer(speech, nfe=2, seed=0)
    both = enhancer.window(np.stack([xn, xn]), 0)
    np.testing.assert_allclose(both[0], enhancer.window(xn[None], 0)[0], rtol=0, atol=1e-5)
    assert np.abs(both[1] - enhancer.window(xn[None], 1)[0]).max() > 1e-2  # window 1 draws other noise
    assert np.abs(both[0] - both[1]).max() > 1e-2
    seeds = {key for i in range(50) for key in enhancer.generators(i, 3).keys.tolist()}
    assert len(seeds) == 150

    wave = np.stack([x, x, 0.1 * x])
    out = enhance_array(Enhancer(speech, nfe=2, seed=0), wave, RATE)
    for c in range(3):
        assert np.abs(out[c] - wave[c]).max() > 0.05 * np.abs(wave[c]).max()  # every channel enhanced
    rms = np.sqrt((out.astype(np.float64) ** 2).mean(axis=1))
    assert 0.05 < rms[2] / rms[0] < 0.2  # per-channel normalisation: the quiet channel stays quiet
    assert 0.5 < rms[1] / rms[0] < 2


@pytest.mark.parametrize("name, subtype", [("loud.wav", "PCM_16"), ("loud.flac", "PCM_24")])
def test_outputs_that_would_clip_are_scaled_down(tiny_model, tmp_path, monkeypatch, name, subtype):
    monkeypatch.setattr(Enhancer, "window", lambda self, w, i: 3 * w)  # a model output 3x too loud
    wave = speech_like(0.5, RATE, channels=2, seed=11, level=0.9)
    src = write(tmp_path / "in" / name, wave, RATE, subtype)
    assert run(src, "-o", tmp_path / "out", "--model", tiny_model, "--nfe", "2") == 0
    x = sf.read(str(src), always_2d=True)[0]
    y = sf.read(str(tmp_path / "out" / name), always_2d=True)[0]
    step = 2.0 ** (1 - int(subtype[-2:]))  # one quantisation step
    assert np.abs(y).max() <= PEAK_LIMIT + step < 1  # libsndfile may round the last step up
    np.testing.assert_allclose(y, x * PEAK_LIMIT / np.abs(x).max(), rtol=0, atol=step + 4e-7)  # one gain (float32 ops)


# --- an official SGMSE+ checkpoint ----------------------------------------------------------------
def test_an_official_style_checkpoint_enhances_end_to_end(noisy, tmp_path, monkeypatch, capsys):
    with torch.random.fork_rng(devices=[]):
        net = _small_net(0, ch_mult=(1, 1, 1, 1, 1), attn_resolutions=(), image_size=256)
    path = tmp_path / "sgmse.ckpt"
    _save_lightning(path, monkeypatch, net, hparams={"ch_mult": [1] * 5, "attn_resolutions": [], "image_size": 256})
    speech = E.load_speech_model(str(path))
    assert isinstance(speech, SpeechModel) and speech.sample_rate == 16000 and speech.spec.spec_factor == 0.065
    assert speech.model.sde.config() == {"theta": 2.0, "sigma_min": 0.1, "sigma_max": 1.0, "t_min": 0.04}
    out = tmp_path / "out"
    assert run(noisy / "a.wav", noisy / "sub" / "b.flac", "-o", out, "--model", path, "--sampler", "sgmse",
               "--nfe", "4") == 0
    printed = capsys.readouterr().out
    assert "model: sgmse.ckpt: SGMSE+ ncsnpp" in printed and "sampler sgmse, NFE 4 per window" in printed
    assert "2 enhanced, 0 skipped, 0 failed" in printed
    for name in ("a.wav", "sub/b.flac"):
        src, dst = sf.info(str(noisy / name)), sf.info(str(out / name.split("/")[-1]))
        assert (dst.subtype, dst.samplerate, dst.channels, dst.frames) == \
            (src.subtype, src.samplerate, src.channels, src.frames)
    assert run(noisy / "a.wav", "-o", tmp_path / "raw", "--model", path, "--sampler", "sgmse", "--nfe", "4",
               "--weights", "raw") == 0
    assert (tmp_path / "raw" / "a.wav").read_bytes() != (out / "a.wav").read_bytes()


# --- inputs that are not what they claim, outputs that cannot be written, leftovers ----------------
def test_a_truncated_wav_and_nan_samples_are_named_and_the_rest_enhanced(tiny_model, noisy, tmp_path, capsys):
    whole = (noisy / "a.wav").read_bytes()
    (noisy / "cut.wav").write_bytes(whole[:len(whole) // 2])  # the header still promises all of a.wav's frames
    nan = speech_like(0.3, 16000, seed=6)
    nan[0, 1600] = np.nan
    write(noisy / "nan.wav", nan, 16000, "FLOAT")
    out = tmp_path / "out"
    assert run(noisy, "-o", out, "--model", tiny_model, "--nfe", "2") == 1
    printed = capsys.readouterr().out
    assert "3 enhanced, 0 skipped, 2 failed" in printed
    frames = sf.info(str(noisy / "a.wav")).frames
    assert (f"failed: {noisy / 'cut.wav'} ({noisy / 'cut.wav'}: the WAV file is cut short: its header promises "
            f"{frames} frames ({frames / 16000:.2f} s) but it holds only ") in printed
    assert (f"failed: {noisy / 'nan.wav'} ({noisy / 'nan.wav'}: the audio holds NaN or infinite samples (the first "
            "at 0.100 s)") in printed
    assert listing(out) == ["a.wav", "c.ogg", "sub", "sub/b.flac"]


def test_an_output_path_that_cannot_take_the_outputs_is_refused_before_any_work(tiny_model, noisy, tmp_path,
                                                                                 capsys):
    taken = tmp_path / "taken.wav"
    taken.write_bytes(b"a file")
    for target, message in [(taken, f"-o {taken}: is a file, not a folder"),
                            (taken / "sub", f"-o {taken / 'sub'}: cannot create the folder: {taken} is a file")]:
        assert run(noisy, "-o", target, "--model", tiny_model, "--nfe", "2") == 2
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert captured.out == "" and line.startswith("revsde: error: ") and message in line
    assert taken.read_bytes() == b"a file"


@pytest.mark.parametrize("args, message", [
    (["--nfe", "99999999999"], "--nfe must be an integer from 1 to 10000 (got 99999999999)"),
    (["--sampler", "sgmse", "--nfe", "20000"], "--nfe must be an integer from 1 to 10000 (got 20000)"),
    (["--chunk-seconds", "0.5", "--overlap-seconds", "0.25"], "--overlap-seconds must lie in [0, chunk/2)"),
])
def test_settings_are_refused_before_the_model_loads(noisy, tmp_path, capsys, args, message):
    """Given a model file that cannot even be read, the settings are still what is reported: they come first."""
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    assert run(noisy, "-o", tmp_path / "out", "--model", tmp_path / "junk.ckpt", *args) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_argument_type_errors_are_one_line(noisy, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(noisy, "-o", tmp_path / "out", "--chunk-seconds", "long")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "revsde enhance: error: argument --chunk-seconds: invalid float value: 'long' (see revsde enhance --help)"]


def test_temporaries_are_never_inputs_and_dead_runs_ones_are_removed(tiny_model, noisy, tmp_path, capsys):
    """A run killed with SIGKILL leaves its float WAV beside the target: a valid WAV, but never an input."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "out"
    assert run(noisy / "a.wav", "-o", out, "--model", tiny_model, "--nfe", "2") == 0
    wave = speech_like(0.3, 16000, seed=7)
    leftovers = [out / f".c.ogg.{dead}.float.wav",  # the name revsde gave them before they were marked
                 out / f".c.ogg.revsde-{dead}.float.wav", out / f".c.ogg.revsde-{dead}.part"]
    live = out / f".c.ogg.revsde-{os.getppid()}.float.wav"  # a running process's: left alone
    for path in [*leftovers[:2], live]:
        write(path, wave, 16000, "FLOAT")
    leftovers[2].write_bytes(b"partial")
    capsys.readouterr()
    assert run(out, "-o", tmp_path / "again", "--model", tiny_model, "--nfe", "2") == 0
    printed = capsys.readouterr().out
    assert "1 enhanced, 0 skipped, 0 failed" in printed and "float.wav" not in printed
    assert listing(tmp_path / "again") == ["a.wav"]
    assert run(noisy, "-o", out, "--model", tiny_model, "--nfe", "2", "--skip-existing") == 0
    printed = capsys.readouterr().out
    for path in leftovers:
        assert f"removed {path}: a temporary file left by an interrupted run" in printed and not path.exists()
    assert live.exists() and listing(out) == sorted([live.name, "a.wav", "c.ogg", "sub", "sub/b.flac"])


def test_an_output_folder_inside_the_input_folder_is_not_searched(tiny_model, noisy, capsys):
    out = noisy / "nest" / "enhanced"
    assert run(noisy, "-o", out, "--model", tiny_model, "--nfe", "2") == 0
    assert run(noisy, "-o", out, "--model", tiny_model, "--nfe", "2", "--skip-existing") == 0
    assert "0 enhanced, 3 skipped, 0 failed" in capsys.readouterr().out
    assert listing(out) == ["a.wav", "c.ogg", "sub", "sub/b.flac"]


def test_digital_silence_comes_back_as_exact_zeros(tiny_model, speech, tmp_path):
    """A silent file, a silent channel and a silent stretch (≥ 10 ms of exact zeros) stay exact zeros, through
    resampling (44.1 kHz) too; the rest is enhanced as before."""
    folder = tmp_path / "in"
    write(folder / "silent.wav", np.zeros((1, 8000), np.float32), 16000, "PCM_16")
    voice = speech_like(0.6, 44100, seed=8)
    gap = slice(8000, 12000)
    voice[0, gap] = 0.0
    stereo = np.concatenate([voice, np.zeros_like(voice)])
    write(folder / "gap.wav", stereo, 44100, "FLOAT")
    short = np.zeros((1, 20000), np.float32)
    short[0, 10000:10100] = 0.3 * np.sin(np.arange(100) / 3)  # 100 samples of signal in 1.25 s of zeros
    write(folder / "blip.wav", short, 16000, "FLOAT")
    assert run(folder, "-o", tmp_path / "out", "--model", tiny_model, "--nfe", "2") == 0
    silent = sf.read(str(tmp_path / "out" / "silent.wav"), dtype="float32")[0]
    assert not silent.any()
    out = sf.read(str(tmp_path / "out" / "gap.wav"), dtype="float32", always_2d=True)[0].T
    assert not out[1].any() and not out[0, gap].any()
    assert np.abs(out[0, :8000]).max() > 1e-2 and np.abs(out[0, 12000:]).max() > 1e-2
    blip = sf.read(str(tmp_path / "out" / "blip.wav"), dtype="float32")[0]
    assert not blip[:10000].any() and not blip[10100:].any() and np.abs(blip[10000:10100]).max() > 1e-3
    # the same in memory; runs of zeros shorter than 10 ms are enhanced like any other samples
    again = enhance_array(Enhancer(speech, nfe=2), stereo, 44100)
    assert not again[1].any() and not again[0, gap].any()
    pcm = speech_like(0.3, 16000, seed=9)
    pcm[0, 1000:1100] = 0.0  # 6 ms
    assert np.abs(enhance_array(Enhancer(speech, nfe=2), pcm, 16000)[0, 1000:1100]).max() > 0


def test_a_run_killed_with_sigkill_leaves_a_temporary_that_is_no_input_and_the_next_run_removes(tiny_model,
                                                                                                 tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder, out = tmp_path / "in", tmp_path / "out"
    write(folder / "long.wav", speech_like(20.0, 16000, seed=10), 16000, "PCM_16")
    repo = ROOT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "revsde", "enhance", str(folder), "-o", str(out), "--model",
                             str(tiny_model), "--nfe", "2", "--chunk-seconds", "0.5", "--overlap-seconds", "0.1",
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".long.wav.*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    (left,) = out.glob(".long.wav.*")
    assert left.name == f".long.wav.revsde-{proc.pid}.float.wav" and not (out / "long.wav").exists()
    assert run(out, "-o", tmp_path / "again", "--model", tiny_model, "--nfe", "2") == 2
    assert "no audio files (.flac, .ogg, .wav) among the inputs" in capsys.readouterr().err
    assert run(folder / "long.wav", "-o", out, "--model", tiny_model, "--nfe", "2", "--chunk-seconds", "8") == 0
    assert f"removed {left}: a temporary file left by an interrupted run" in capsys.readouterr().out
    assert listing(out) == ["long.wav"]


# --- the memory budget -------------------------------------------------------------------------------
def test_a_budget_groups_channels_and_shortens_windows_only_when_needed(speech):
    """--max-memory: the tiny net (nf 8) needs 1024 B per bin, 8.4 MB for one 64-frame block. A budget of
    one block per call enhances three channels one at a time, each as in the batched call (its own noise);
    a window longer than a budget allows is shortened to whole blocks; a budget below one block is refused."""
    from revsde.apps.speech.enhance import bytes_per_bin, chunking, window_bytes

    spec = speech.spec
    block = (spec.pad_multiple - 1) * spec.hop_length  # 64 frames
    assert bytes_per_bin(speech) == 128 * 8 and window_bytes(speech, block) == 256 * 64 * 1024
    x = speech_like(0.5, RATE, channels=3, seed=11)
    wave = x / np.abs(x).max(axis=1, keepdims=True)
    batched, grouped = Enhancer(speech, nfe=2, seed=0), Enhancer(speech, nfe=2, seed=0, max_memory=window_bytes(speech, 8000))
    a, b = batched.window(wave, 4), grouped.window(wave, 4)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert (batched.nfe, grouped.nfe) == (2, 6)  # one call per channel
    assert Enhancer(speech, nfe=2, max_memory=3 * window_bytes(speech, 8000)).window(wave, 4).shape == wave.shape

    asked = chunking(speech, 8.0, 0.5)
    assert chunking(speech, 8.0, 0.5, 10**12) == asked  # within the budget: unchanged
    assert chunking(speech, 8.0, 0.5, 3 * window_bytes(speech, block))[0] == (3 * 64 - 1) * spec.hop_length
    with pytest.raises(ValueError, match="below one window of 64 frames"):
        chunking(speech, 8.0, 0.5, window_bytes(speech, block) - 1)


def test_cli_says_when_the_budget_shortens_the_windows(tiny_model, noisy, tmp_path, capsys):
    assert main(["enhance", str(noisy / "a.wav"), "-o", str(tmp_path / "out"), "--model", str(tiny_model), "--nfe", "2",
                 "--max-memory", "40M", "--no-progress"]) == 0
    assert "windows of 1.02 s, not 8.18 s: a longer one needs more than --max-memory 41943040 bytes" in \
        capsys.readouterr().out
    assert main(["enhance", str(noisy / "a.wav"), "-o", str(tmp_path / "o2"), "--model", str(tiny_model),
                 "--max-memory", "1M"]) == 2
    assert "--max-memory 1048576 bytes is below one window of 64 frames" in capsys.readouterr().err

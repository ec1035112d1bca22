"""The committed built-in speech model: it loads with the setting its card recommends, enhances a file
end to end through ``revsde enhance`` with that default, and improves held-out speech (two test pairs,
a fast regression check of the card's numbers); without the weights the command says so."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from revsde.apps.speech import enhance as E
from revsde.cli import main
from fixtures import needs_espeak


@pytest.fixture(scope="module")
def builtin():
    return E.load_speech_model("builtin")


def test_the_builtin_loads_with_its_cards_recommendation(builtin):
    card = E.builtin_path().with_suffix(".md").read_text()
    rec = builtin.recommended
    assert rec is not None and rec["nfe"] >= 2 and builtin.sample_rate == 16000
    label = "mrs " + ("SDE" if rec["options"].get("stochastic") else "ODE")
    assert f"Best MR Sampler setting: {label} at {rec['nfe']} NFE" in card
    assert builtin.description.startswith("speech_enhance.safetensors: NCSN++ nf 16")
    from revsde.apps.speech.model import read_config, steps_text

    assert builtin.description.endswith(steps_text(read_config(E.builtin_path())))  # fine-tunes counted in


def test_enhance_runs_the_builtin_at_its_recommended_setting(builtin, tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = np.arange(12000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 - 0.5 * np.cos(2 * np.pi * 3 * t))
            + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    src = tmp_path / "in" / "x.wav"
    src.parent.mkdir()
    sf.write(str(src), wave, 16000, subtype="PCM_16")
    assert main(["enhance", str(src), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"NFE {builtin.recommended['nfe']} per window (the model card's best MR Sampler setting)" in printed
    out, rate = sf.read(str(tmp_path / "out" / "x.wav"), dtype="float32")
    assert rate == 16000 and out.shape == wave.shape and np.isfinite(out).all() and np.abs(out).max() > 0


@needs_espeak
def test_the_builtin_improves_held_out_speech(builtin, tmp_path):
    """The first two held-out pairs (white and pink noise at 4.9 and 3.2 dB SNR): the card's setting gains
    SI-SDR and PESQ (at step 5000 the gains were +7.1 and +4.3 dB)."""
    from revsde.apps.speech.data import test_set
    from revsde.apps.speech.eval import evaluate_speech

    rec = builtin.recommended
    ev = evaluate_speech(builtin, sampler="mrs", nfe=rec["nfe"], options=rec["options"], pairs=test_set(tmp_path, n=2))
    gains = [r["si_sdr"] - r["si_sdr_in"] for r in ev["rows"]]
    assert min(gains) > 3.0, gains
    assert ev["mean"]["pesq"] > ev["mean"]["pesq_in"]


def test_without_builtin_weights_the_command_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(E, "builtin_path", lambda: tmp_path / "absent.safetensors")
    src = tmp_path / "x.wav"
    sf.write(str(src), np.zeros(4000, np.float32), 16000)
    assert main(["enhance", str(src), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "this install has no built-in speech model" in err and "give --model PATH" in err
    assert not (tmp_path / "out").exists()

"""revsde.metrics.speech: SI-SDR family against closed forms, PESQ/ESTOI on a synthetic speech-like signal."""
from __future__ import annotations

import math

import numpy as np
import pytest

from revsde.metrics.speech import energy_ratios, estoi, mean_std, pesq_wb, si_sdr


def speech_like(seconds=3.0, sr=16000):
    """A voiced 'vowel' train: harmonics of a gliding 120 Hz pitch, amplitude-modulated at a 4-Hz
    syllable rate (PESQ's voice-activity detector needs on/off activity like this)."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 0.7 * t)) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30) if k * 150 < sr / 2)
    x = voiced * np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    return 0.3 * x / np.abs(x).max()


def at_snr(x, snr_db, seed=0, *, orthogonal=False):
    """White Gaussian noise scaled so that ‖x‖²/‖n‖² is exactly ``snr_db`` (and, if ``orthogonal``,
    with its chance correlation with ``x`` projected out)."""
    n = np.random.default_rng(seed).standard_normal(x.size)
    if orthogonal:
        n -= np.dot(n, x) / np.dot(x, x) * x
    return n * np.linalg.norm(x) / np.linalg.norm(n) / 10 ** (snr_db / 20)


def test_si_sdr_of_a_scaled_copy_is_unbounded():
    x = speech_like(0.5)
    assert si_sdr(x, 0.5 * x) > 100
    assert si_sdr(x, x) == math.inf or si_sdr(x, x) > 200


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 20.0])
def test_si_sdr_of_additive_white_noise_is_its_snr(snr):
    # White noise is nearly orthogonal to the signal, so α ≈ 1 and SI-SDR ≈ SNR (within the chance
    # correlation, ~1/√N in relative terms).
    x = speech_like(1.0)
    n = at_snr(x, snr)
    assert si_sdr(x, x + n) == pytest.approx(snr, abs=0.1)
    # exact closed form: with n orthogonal to x, SI-SDR is exactly the SNR
    n_orth = at_snr(x, snr, orthogonal=True)
    assert si_sdr(x, x + n_orth) == pytest.approx(snr, abs=1e-9)
    assert si_sdr(x, 3.0 * (x + n_orth)) == pytest.approx(snr, abs=1e-9)  # scale-invariant


def test_energy_ratios_decompose_as_defined():
    rng = np.random.default_rng(3)
    s = speech_like(1.0)
    n = at_snr(s, 5.0, seed=1)
    artefact = 0.05 * rng.standard_normal(s.size)
    est = 0.8 * s + 0.3 * n + artefact
    ratios = energy_ratios(est, s, s + n)
    # the same numbers straight from the definitions (sgmse.md §7)
    s_t = np.dot(est, s) / np.dot(s, s) * s
    e_n = np.dot(est, n) / np.dot(n, n) * n
    e_a = est - s_t - e_n
    db = lambda a, b: 10 * np.log10(np.sum(a**2) / np.sum(b**2))  # noqa: E731
    assert ratios.si_sdr == pytest.approx(db(s_t, e_n + e_a), abs=1e-9)
    assert ratios.si_sir == pytest.approx(db(s_t, e_n), abs=1e-9)
    assert ratios.si_sar == pytest.approx(db(s_t, e_a), abs=1e-9)
    # consistency: 10^(-SDR/10) ≈ 10^(-SIR/10) + 10^(-SAR/10) when e_n ⟂ e_a (nearly so here)
    inv = 10 ** (-ratios.si_sir / 10) + 10 ** (-ratios.si_sar / 10)
    assert ratios.si_sdr == pytest.approx(-10 * np.log10(inv), abs=0.05)
    # the noisy input itself, with noise orthogonal to speech: no artefacts, SI-SIR = SI-SDR = SNR
    n_orth = at_snr(s, 5.0, seed=1, orthogonal=True)
    unprocessed = energy_ratios(s + n_orth, s, s + n_orth)
    assert unprocessed.si_sdr == pytest.approx(5.0, abs=1e-9) and unprocessed.si_sir == pytest.approx(5.0, abs=1e-9)
    assert unprocessed.si_sar > 100
    # SI-SDR of energy_ratios is the plain SI-SDR when the estimate has no noise component
    assert energy_ratios(0.8 * s + artefact, s, s + n).si_sdr == pytest.approx(si_sdr(s, 0.8 * s + artefact),
                                                                                abs=0.05)


def test_pesq_on_identical_and_noisy_speech():
    x = speech_like(3.0)
    clean = pesq_wb(x, x, 16000)
    assert clean == pytest.approx(4.644, abs=0.01)
    noisy = pesq_wb(x, x + at_snr(x, 10.0), 16000)
    assert 1.0 <= noisy < 3.0


def test_pesq_resamples_other_rates():
    x48 = speech_like(3.0, sr=48000)
    assert pesq_wb(x48, x48, 48000) == pytest.approx(4.644, abs=0.01)


def test_pesq_returns_nan_for_silence():
    with pytest.warns(RuntimeWarning, match="no utterances"):
        assert math.isnan(pesq_wb(np.zeros(32000), np.zeros(32000), 16000))


def test_estoi_identical_and_noisy():
    x = speech_like(3.0)
    assert estoi(x, x, 16000) == pytest.approx(1.0, abs=1e-6)
    assert estoi(x, x + at_snr(x, 0.0), 16000) < 0.8


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="one length"):
        si_sdr(np.ones(10), np.ones(11))
    with pytest.raises(ValueError, match="mono"):
        estoi(np.ones((2, 100)), np.ones((2, 100)), 16000)
    x = speech_like(0.2)
    assert si_sdr(x[None], x[None] * 0.5) > 100  # a [1, N] file is accepted


def test_mean_std_drops_nans():
    mean, std = mean_std([1.0, float("nan"), 3.0])
    assert (mean, std) == (2.0, 1.0)  # population std, as SGMSE
    assert all(math.isnan(v) for v in mean_std([float("nan")]))

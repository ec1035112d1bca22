"""Synthetic speech-enhancement data: sentences, espeak-ng calls, the cache, noises, mixing, the split,
the test set and training crops.

Tests marked ``needs_espeak`` speak a handful of utterances into ``tmp_path``; they skip when espeak-ng
is not on PATH, except under CI (``CI`` set), where they must run (and fail without it).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from scipy import signal

from revsde.apps.speech import data as D
from revsde.apps.speech import espeak as E
from revsde.apps.speech import noise as N
from revsde.apps.speech import text as T
from fixtures import needs_espeak  # noqa: E402


SR = N.SAMPLE_RATE


def speech_like(n_seconds=2.0, seed=0, silence=0.3):
    """A stand-in for speech: noise under a syllabic (4 Hz) envelope, with silent gaps and silent ends."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(n_seconds * SR)) / SR
    x = rng.standard_normal(t.size) * np.maximum(np.sin(2 * np.pi * 4 * t), 0) ** 2
    x[int(0.8 * SR):int(1.0 * SR)] = 0
    pad = np.zeros(int(silence * SR))
    return np.concatenate([pad, x, pad]).astype(np.float32)


def reference_active_power(x, threshold_db=40.0):
    """Active power written out independently: 320-sample frames, those within 40 dB of the loudest."""
    x = np.asarray(x, dtype=np.float64)
    x = np.pad(x, (0, -x.size % 320)).reshape(-1, 320)
    energy = (x ** 2).mean(axis=1)
    return energy[energy >= energy.max() * 10 ** (-threshold_db / 10)].mean()


def fake_corpus(lengths, split="train"):
    """A SpeechCorpus of deterministic non-zero signals (no espeak): utterance k has value k+1 at its ends."""
    audio, utts = [], []
    for k, n in enumerate(lengths):
        x = speech_like(n / SR, seed=k, silence=0.0)[:n]
        x[0], x[-1] = k + 1, -(k + 1)
        audio.append(x)
        utts.append(E.Utterance(f"utterance {k}", "en-us", "", 175, 50, 50))
    return D.SpeechCorpus(split, tuple(utts), tuple(audio))


# --- sentences and the split -------------------------------------------------------------------
def test_sentences_are_deterministic_distinct_and_prefixes():
    a, b = T.sentences("train", 300, seed=3), T.sentences("train", 300, seed=3)
    assert a == b and len(set(a)) == 300
    assert T.sentences("train", 100, seed=3) == a[:100]
    assert T.sentences("train", 300, seed=4)[len(T.FIXED_SENTENCES):] != a[len(T.FIXED_SENTENCES):]
    assert all(s[0].isupper() and s[-1] in ".?" for s in a)


def test_train_and_test_sentences_are_disjoint():
    train, test = set(T.sentences("train", 3000)), set(T.sentences("test", 500))
    assert not train & test
    held_out = set(T.HELD_OUT_NAMES + T.HELD_OUT_AGENTS + T.HELD_OUT_THINGS)
    generated_test = T.sentences("test", 500)[len(T.FIXED_TEST_SENTENCES):]
    assert all(set(s.rstrip(".?").replace(",", "").split()) & held_out for s in generated_test)
    train_words = {w for s in train for w in s.rstrip(".?").replace(",", "").split()}
    assert not train_words & held_out


def test_voice_split_is_disjoint_and_as_documented():
    train_specs, test_specs = E.utterance_specs("train", 200), E.utterance_specs("test", 32)
    assert {u.accent for u in test_specs} == set(E.HELD_OUT_ACCENTS)
    assert {u.variant for u in test_specs} == set(E.HELD_OUT_VARIANTS)
    assert {(u.accent, u.variant) for u in test_specs[:16]} == {(a, v) for a in E.HELD_OUT_ACCENTS
                                                                 for v in E.HELD_OUT_VARIANTS}
    assert not {u.accent for u in train_specs} & set(E.HELD_OUT_ACCENTS)
    assert not {u.variant for u in train_specs} & set(E.HELD_OUT_VARIANTS)
    assert len({u.voice for u in train_specs}) > 50
    for u in train_specs:
        assert E.RATE_WPM[0] <= u.rate <= E.RATE_WPM[1] and E.PITCH[0] <= u.pitch <= E.PITCH[1]
        assert E.AMPLITUDE[0] <= u.amplitude <= E.AMPLITUDE[1]
    assert E.utterance_specs("train", 50) == train_specs[:50]


def test_noise_split_is_as_documented():
    assert set(N.TRAIN_NOISES) < set(N.TEST_NOISES) and "engine" not in N.TRAIN_NOISES
    assert not set(N.HUM_F0["train"]) & set(N.HUM_F0["test"])
    with pytest.raises(ValueError, match="held out"):
        D.SpeechPairs(fake_corpus([20000] * 3), noises=("white", "engine"))


# --- noises ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(N.NOISES))
def test_noise_is_deterministic_finite_and_unit_rms(kind):
    ctx = N.NoiseContext("test", pool=[speech_like(seed=k) for k in range(4)])
    a = N.make_noise(kind, 8000, np.random.default_rng(7), ctx)
    b = N.make_noise(kind, 8000, np.random.default_rng(7), ctx)
    c = N.make_noise(kind, 8000, np.random.default_rng(8), ctx)
    assert a.shape == (8000,) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.sqrt(np.mean(a ** 2)) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("kind, slope", [("white", 0.0), ("pink", -10.0), ("brown", -20.0)])
def test_colored_noise_slopes(kind, slope):
    """Welch PSD, log-log fit over 100 Hz–6 kHz: power slope in dB/decade."""
    x = N.make_noise(kind, 4 * SR, np.random.default_rng(0))
    f, p = signal.welch(x, SR, nperseg=2048)
    band = (f >= 100) & (f <= 6000)
    fitted = np.polyfit(np.log10(f[band]), 10 * np.log10(p[band]), 1)[0]
    assert fitted == pytest.approx(slope, abs=1.0)


@pytest.mark.parametrize("split", ["train", "test"])
def test_hum_peaks_at_its_fundamental(split):
    for seed in range(3):
        x = N.make_noise("hum", 2 * SR, np.random.default_rng(seed), N.NoiseContext(split))
        f, p = signal.welch(x, SR, nperseg=SR)  # 1 Hz bins
        peak = f[np.argmax(p)]
        assert min(abs(peak - f0) for f0 in N.HUM_F0[split]) <= 1.0, (split, peak)


def test_tones_are_an_extra_for_training_with_no_fundamental_near_the_test_hum():
    """``tones`` may join a training mix but is in neither the default mix nor the test set, and no tone
    or buzz puts power between the training hum (60 Hz) and 150 Hz, where the test hum (100/120) lives."""
    assert "tones" in N.EXTRA_TRAIN_NOISES and not set(N.EXTRA_TRAIN_NOISES) & set(N.TEST_NOISES)
    pairs = D.SpeechPairs(fake_corpus([20000] * 3), length=4000, batch=2, noises=("white", "tones"))
    assert pairs.noises == ("white", "tones") and next(pairs)[1].shape == (2, 4000)
    band_share = []
    for seed in range(20):
        x = N.make_noise("tones", 2 * SR, np.random.default_rng(seed))
        f, p = signal.welch(x, SR, nperseg=4096)
        band_share.append(p[(f > 61) & (f < 140)].sum() / p.sum())
    assert max(band_share) < 0.02, band_share
    hum = N.make_noise("hum", 2 * SR, np.random.default_rng(0), N.NoiseContext("test"))
    f, p = signal.welch(hum, SR, nperseg=4096)
    assert p[(f > 61) & (f < 140)].sum() / p.sum() > 0.5  # the band the check above watches is the test hum's


def test_tones_are_tonal_and_some_beep():
    """Most of a tones noise's power sits in a few narrow peaks above 150 Hz; a gated one switches off."""
    peaky, gated = 0, 0
    for seed in range(12):
        x = N.make_noise("tones", SR, np.random.default_rng(seed))
        p = np.abs(np.fft.rfft(x)) ** 2
        peaky += np.sort(p)[-200:].sum() / p.sum() > 0.9  # 200 of 8001 1-Hz bins
        frames = np.sqrt(np.mean(x[:SR // 160 * 160].reshape(-1, 160) ** 2, axis=1))  # 10 ms frames
        gated += frames.min() < 0.2 * np.median(frames)
    assert peaky == 12 and 1 <= gated < 12


def test_babble_leaves_out_the_clean_utterance():
    pool = [np.full(4000, 1000.0), np.ones(4000)]  # utterance 0 is the clean one: only 1 may talk
    x = N.make_noise("babble", 3000, np.random.default_rng(0), N.NoiseContext(pool=pool, pool_power=[1.0, 1.0],
                                                                               exclude=0))
    assert np.unique(np.round(x[x != 0], 9)).size == 1
    with pytest.raises(ValueError, match="pool"):
        N.make_noise("babble", 1000, np.random.default_rng(0), N.NoiseContext(pool=pool[:1], exclude=0))


def test_make_noise_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown noise 'rain'; available: white"):
        N.make_noise("rain", 100, np.random.default_rng(0))


# --- mixing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.3, 15.0])
def test_mix_hits_the_snr_over_active_speech(snr_db):
    clean = speech_like(seed=1)
    noise = N.make_noise("pink", clean.size, np.random.default_rng(2))
    noisy, scaled = N.mix(clean, noise, snr_db)
    np.testing.assert_allclose(noisy - clean, scaled, atol=1e-6)
    measured = 10 * np.log10(reference_active_power(clean) / np.mean((noisy - clean.astype(np.float64)) ** 2))
    assert abs(measured - snr_db) < 0.1
    # silence around the speech does not change its level
    assert N.active_power(np.pad(clean, SR)) == pytest.approx(N.active_power(clean), rel=1e-9)


# --- training crops ------------------------------------------------------------------------------
def test_crop_length_matches_sgmse():
    assert D.crop_length(256) == 32640 and D.crop_length(128) == 16256


def test_short_utterances_are_padded_symmetrically():
    corpus = fake_corpus([9001, 9001, 9001])
    pairs = D.SpeechPairs(corpus, length=16256, batch=4, seed=0)
    clean, noisy = next(pairs)
    assert clean.shape == noisy.shape == (4, 16256) and clean.dtype == noisy.dtype == np.float32
    pad = 16256 - 9001
    before, after = pad // 2, pad - pad // 2
    for c, y in zip(clean, noisy):
        assert not c[:before].any() and not c[-after:].any() and not y[:before].any() and not y[-after:].any()
        k = int(round(c[before])) - 1  # utterance k starts with k + 1
        np.testing.assert_array_equal(c[before:before + 9001], corpus.audio[k])
        assert np.any(y[before:before + 9001] != c[before:before + 9001])  # noise on the utterance only


def test_long_utterances_are_cropped_at_the_requested_length():
    corpus = fake_corpus([40000, 50000])
    clean, noisy = D.SpeechPairs(corpus, length=16256, batch=3, seed=1).pair()
    assert clean.shape == noisy.shape == (16256,)
    found = [k for k, x in enumerate(corpus.audio)
             if any(np.array_equal(x[s:s + 16256], clean) for s in range(x.size - 16256 + 1) if x[s] == clean[0])]
    assert found


def test_crops_are_deterministic_by_seed_and_hit_the_utterance_snr():
    corpus = fake_corpus([30000, 12000, 25000, 20000])
    a = next(D.SpeechPairs(corpus, batch=6, seed=5))
    b = next(D.SpeechPairs(corpus, batch=6, seed=5))
    c = next(D.SpeechPairs(corpus, batch=6, seed=6))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    pairs = D.SpeechPairs(corpus, length=40000, batch=1, seed=2, snr_db=(3.0, 3.0), noises=("white",))
    clean, noisy = pairs.pair()  # every utterance is shorter than the crop: the SNR is the utterance's
    k = int(round(clean[clean != 0][0])) - 1
    start = (40000 - corpus.audio[k].size) // 2
    noise = (noisy.astype(np.float64) - clean)[start:start + corpus.audio[k].size]
    measured = 10 * np.log10(reference_active_power(corpus.audio[k]) / np.mean(noise ** 2))
    assert abs(measured - 3.0) < 0.1


def test_torch_output():
    clean, noisy = next(D.SpeechPairs(fake_corpus([20000, 20000]), length=1000, batch=2, output="torch"))
    assert isinstance(clean, torch.Tensor) and clean.dtype == torch.float32 and noisy.shape == (2, 1000)
    with pytest.raises(ValueError, match="output must be one of numpy, torch"):
        D.SpeechPairs(fake_corpus([20000, 20000]), output="jax")


# --- espeak-ng -----------------------------------------------------------------------------------
def test_missing_espeak_is_a_clear_error():
    with pytest.raises(E.EspeakNotFoundError, match="apt-get install espeak-ng"):
        E.espeak("Hello.", executable="/nonexistent/bin/espeak-ng")


def fake_executable(tmp_path, body):
    exe = tmp_path / "fake-espeak"
    exe.write_text("#!/bin/sh\nPATH=/usr/bin:/bin\n" + body + "\n")
    exe.chmod(0o755)
    return str(exe)


def test_espeak_text_never_reaches_the_command_line(tmp_path):
    args = tmp_path / "args"
    exe = fake_executable(tmp_path, f'printf "%s\\n" "$@" > "{args}"; cat > "{tmp_path / "stdin"}"')
    text = "-v xx --stdout; rm -rf / $(touch pwned)"
    with pytest.raises(RuntimeError, match="no audio"):
        E.espeak(text, executable=exe)
    assert text not in args.read_text() and (tmp_path / "stdin").read_text() == text
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match="voice must look like"):
        E.espeak("Hello.", voice="en-us; ls", executable=exe)


def test_espeak_timeout_and_failure_are_reported(tmp_path):
    with pytest.raises(RuntimeError, match="longer than 0.2 s"):
        E.espeak("Hello.", executable=fake_executable(tmp_path, "exec sleep 5"), timeout=0.2)
    with pytest.raises(RuntimeError, match=r"exit 3.*broken voice"):
        E.espeak("Hello.", executable=fake_executable(tmp_path, "echo broken voice >&2; exit 3"))


@needs_espeak
def test_espeak_gives_16khz_float_audio():
    x = E.espeak("The quick brown fox jumps over the lazy dog.", "en-gb+m3")
    assert x.dtype == np.float32 and x.ndim == 1
    assert 1.5 < x.size / SR < 5.0 and 0.01 < np.sqrt(np.mean(x ** 2)) < 1.0
    u = E.Utterance("Please close the window.", "en-us", "f1", 180, 60, 55)
    y = E.render(u)
    assert np.abs(y).max() == pytest.approx(0.55, rel=1e-3)
    assert y.size < E.espeak(u.text, u.voice, rate=180, pitch=60, amplitude=55).size  # trailing silence trimmed


@needs_espeak
def test_corpus_cache_is_resumable_and_described(tmp_path, monkeypatch):
    corpus = D.load_corpus("train", 3, tmp_path, progress=False)
    assert len(corpus) == 3 and all(x.dtype == np.float32 and x.size > SR for x in corpus.audio)
    folder = D.corpus_dir("train", 0, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [e["text"] for e in manifest["utterances"]] == T.sentences("train", 3)
    assert {"voice", "rate", "pitch", "amplitude", "seconds"} <= set(manifest["utterances"][0])
    spoken = []
    monkeypatch.setattr(D, "render", lambda u, **kw: spoken.append(u) or np.full(SR, 0.1, np.float32))
    again = D.load_corpus("train", 4, tmp_path, progress=False)
    assert spoken == [E.utterance_specs("train", 4)[3]]  # only the new one
    for x, y in zip(corpus.audio, again.audio):
        np.testing.assert_array_equal(x, y)
    assert len(json.loads((folder / "manifest.json").read_text())["utterances"]) == 4


@needs_espeak
def test_test_set_is_fixed_and_held_out(tmp_path):
    pairs = D.test_set(tmp_path, n=4)
    assert [p.noise for p in pairs] == ["white", "pink", "brown", "babble"]
    again = D.test_set(tmp_path, n=4)
    for p, q in zip(pairs, again):
        np.testing.assert_array_equal(p.noisy, q.noisy)
    train_text = set(T.sentences("train", 1000))
    for p in pairs:
        assert 2.0 <= p.clean.size / SR <= 4.0 and p.clean.shape == p.noisy.shape
        assert N.SNR_DB[0] <= p.snr_db <= N.SNR_DB[1]
        measured = 10 * np.log10(reference_active_power(p.clean) / np.mean((p.noisy - p.clean.astype(np.float64)) ** 2))
        assert abs(measured - p.snr_db) < 0.1
        assert p.utterance.accent in E.HELD_OUT_ACCENTS and p.utterance.variant in E.HELD_OUT_VARIANTS
        assert p.utterance.text not in train_text


@needs_espeak
def test_test_set_with_one_noise_keeps_its_utterances_and_snrs(tmp_path):
    pairs = D.test_set(tmp_path, n=3)
    tones = D.test_set(tmp_path, n=3, noise="tones")
    assert [p.noise for p in tones] == ["tones"] * 3
    for p, q in zip(pairs, tones):
        np.testing.assert_array_equal(p.clean, q.clean)
        assert p.snr_db == q.snr_db and p.utterance == q.utterance and not np.array_equal(p.noisy, q.noisy)
        measured = 10 * np.log10(reference_active_power(q.clean) / np.mean((q.noisy - q.clean.astype(np.float64)) ** 2))
        assert abs(measured - q.snr_db) < 0.1
    with pytest.raises(ValueError, match="unknown noise 'rain'"):
        D.test_set(tmp_path, n=3, noise="rain")

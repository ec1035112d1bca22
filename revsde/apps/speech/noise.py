"""Noises for the synthetic speech-enhancement data (``speech_data``), and mixing at an SNR.

Every generator returns float64 noise of unit RMS; all its randomness comes from the
``numpy.random.Generator`` passed in. ``make_noise(kind, n, rng, context)`` dispatches on ``NOISES``:

- ``white``: Gaussian white noise;
- ``pink`` / ``brown``: power ∝ 1/f and 1/f² (−10 and −20 dB/decade), shaped in the frequency domain
  and high-passed at ``LOW_CUT_HZ`` (a recording chain's rumble filter; also keeps brown noise's
  power out of the sub-audio bins);
- ``babble``: 3–7 other utterances of the same split summed at ±3 dB of each other, each from a random
  offset (looped); training babble is made of training utterances (never the clean one), test babble of
  held-out utterances that are not clean test utterances;
- ``hum``: mains hum, fundamental ``HUM_F0[split]`` ±0.4 % with a slow ±0.2 % drift, harmonics weaker
  than the fundamental, a slight level wobble;
- ``bursts``: 1–4 events a second (at least one) — clicks of 1–6 ms, noise bursts of 20–150 ms, door-slam
  decays (low-passed noise and a 40–90 Hz thump, τ 40–150 ms) — over a pink floor 30 dB down;
- ``hvac``: a recorded-like fan/air-conditioning noise: low-passed white plus pink, a resonance, weak
  blade-pass tones, and a slow level modulation of 10–40 %;
- ``tones`` (an extra for training, not in the default mix or the test set): tonal interference —
  1–3 whistles, beeps or buzzers, each a pure tone (150 Hz–4 kHz) or a harmonic buzz (fundamental
  150–600 Hz, harmonics to 4 kHz), log-uniform, with a slow ±0.3 % drift, a third of them switching
  on and off (an alarm's 2–8 Hz beeping), over a pink floor 30 dB down. No fundamental lies in
  61–149 Hz, so the test hum (100/120 Hz) stays unseen;
- ``engine`` (test only): a firing-pulse train at 25–60 Hz with slowly varying speed, each pulse a short
  low-passed decay, plus brown rumble.

The split (``TRAIN_NOISES``, ``TEST_NOISES``, ``HUM_F0``): the test hum's fundamental (100/120 Hz, a
rectifier buzz) is never a training one (50/60 Hz), ``engine`` is never trained on, and test babble
is made of held-out voices saying held-out sentences. Noise streams themselves are seeded apart.
``EXTRA_TRAIN_NOISES`` (``tones``) may join a training mix (``SpeechPairs(noises=...)``); the default
mix and the test set do not use them, so the committed held-out numbers stay comparable.

SNR is ``10 log10(P_speech / P_noise)`` with ``P_speech`` the *active* speech power: the mean square
over the 20 ms frames whose energy is within ``ACTIVE_DB`` = 40 dB of the loudest frame (so pauses and
padding do not dilute it; a simplified ITU-T P.56 active level), and ``P_noise`` the mean square of
the whole noise segment. ``mix`` scales the noise to hit the SNR exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000
SNR_DB = (-5.0, 15.0)
ACTIVE_DB = 40.0
ACTIVE_FRAME_S = 0.02
LOW_CUT_HZ = 20.0
HUM_F0 = {"train": (50.0, 60.0), "test": (100.0, 120.0)}
BABBLE_TALKERS = (3, 7)
TRAIN_NOISES = ("white", "pink", "brown", "babble", "hum", "bursts", "hvac")
TEST_NOISES = TRAIN_NOISES + ("engine",)
EXTRA_TRAIN_NOISES = ("tones",)
TONE_HZ = (150.0, 4000.0)
BUZZ_F0_HZ = (150.0, 600.0)
_WARMUP_S = 0.1  # discarded start of recursively filtered noise (the filter's transient)


# --- levels and mixing -------------------------------------------------------------------------
def active_power(x: np.ndarray, sample_rate: int = SAMPLE_RATE, threshold_db: float = ACTIVE_DB) -> float:
    """Mean square of ``x`` over its active 20 ms frames (energy within ``threshold_db`` of the loudest)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.any(x):
        raise ValueError("speech is empty or all zeros: it has no active level")
    starts = np.arange(0, x.size, max(1, int(round(ACTIVE_FRAME_S * sample_rate))))
    sums = np.add.reduceat(x * x, starts)
    sizes = np.diff(np.append(starts, x.size))
    energy = sums / sizes
    active = energy >= energy.max() * 10 ** (-threshold_db / 10)
    return float(sums[active].sum() / sizes[active].sum())


def snr(clean: np.ndarray, noise: np.ndarray, *, speech_power: float | None = None,
        sample_rate: int = SAMPLE_RATE) -> float:
    """The SNR in dB of ``clean`` against ``noise``, with the active speech power (module docstring)."""
    p_speech = active_power(clean, sample_rate) if speech_power is None else speech_power
    return float(10 * np.log10(p_speech / np.mean(np.asarray(noise, dtype=np.float64) ** 2)))


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float, *, speech_power: float | None = None,
        sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """``(clean + g·noise, g·noise)`` with ``g`` such that the SNR is ``snr_db``; ``speech_power``
    (default: ``clean``'s active power) lets a crop be mixed at its whole utterance's level."""
    clean, noise = np.asarray(clean), np.asarray(noise, dtype=np.float64)
    if clean.shape != noise.shape:
        raise ValueError(f"clean and noise differ in shape: {clean.shape} vs {noise.shape}")
    p_noise = float(np.mean(noise ** 2))
    if p_noise <= 0:
        raise ValueError("noise is all zeros: it cannot be scaled to an SNR")
    p_speech = active_power(clean, sample_rate) if speech_power is None else speech_power
    noise = noise * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    return clean + noise, noise


# --- generators --------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseContext:
    """What a generator may need besides length and generator: the split (for split-specific
    parameters), the sample rate, and for babble a pool of utterances (with their active powers, if
    known) and the index of the clean utterance to leave out."""

    split: str = "train"
    sample_rate: int = SAMPLE_RATE
    pool: Sequence[np.ndarray] = field(default=(), repr=False)
    pool_power: Sequence[float] | None = field(default=None, repr=False)
    exclude: int | None = None


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x))


def _slow(n: int, rng: np.random.Generator, sample_rate: int, max_hz: float) -> np.ndarray:
    """A smooth random curve in [−1, 1]: three sinusoids below ``max_hz`` with random phases."""
    t = np.arange(n) / sample_rate
    f = rng.uniform(0.05, 1.0, 3) * max_hz
    return np.mean(np.sin(2 * np.pi * f[:, None] * t + rng.uniform(0, 2 * np.pi, (3, 1))), axis=0)


def _filtered(sos: np.ndarray, x: np.ndarray, warmup: int) -> np.ndarray:
    return signal.sosfilt(sos, x)[warmup:]


def colored(n: int, rng: np.random.Generator, exponent: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Gaussian noise with power ∝ 1/f^exponent above ``LOW_CUT_HZ`` (zero below)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sample_rate)
    keep = (f > 0) & (f >= min(LOW_CUT_HZ, f[-1]))
    if not keep.any():  # a single sample has no spectrum to shape
        return _unit(rng.standard_normal(n))
    gain = np.zeros_like(f)
    gain[keep] = f[keep] ** (-exponent / 2)
    return _unit(np.fft.irfft(spectrum * gain, n))


def white(n, rng, ctx):
    return _unit(rng.standard_normal(n))


def pink(n, rng, ctx):
    return colored(n, rng, 1.0, ctx.sample_rate)


def brown(n, rng, ctx):
    return colored(n, rng, 2.0, ctx.sample_rate)


def hum(n, rng, ctx):
    sr = ctx.sample_rate
    f0 = HUM_F0[ctx.split][int(rng.integers(len(HUM_F0[ctx.split])))] * (1 + rng.uniform(-0.004, 0.004))
    freq = f0 * (1 + 0.002 * _slow(n, rng, sr, 0.5))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    k = np.arange(1, int(min(12, (0.45 * sr) // f0)) + 1)
    amp = np.concatenate([[1.0], rng.uniform(0.1, 0.6, k.size - 1) / np.sqrt(k[1:])])
    offsets = rng.uniform(0, 2 * np.pi, k.size)
    x = np.sum(amp[:, None] * np.sin(k[:, None] * phase + offsets[:, None]), axis=0)
    return _unit(x * (1 + 0.05 * _slow(n, rng, sr, 1.0)))


def _gate(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """An alarm's on/off envelope: 2–8 Hz, duty 30–70 %, 5 ms ramps, a random phase."""
    rate, duty = rng.uniform(2, 8), rng.uniform(0.3, 0.7)
    cycle = (np.arange(n) / sample_rate * rate + rng.uniform()) % 1.0
    ramp = 0.005 * rate  # 5 ms in cycles
    return np.clip(np.minimum(cycle, duty - cycle) / ramp + 0.5, 0.0, 1.0)


def tones(n, rng, ctx):
    sr = ctx.sample_rate
    top = min(TONE_HZ[1], 0.45 * sr)
    x = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        buzz = rng.uniform() < 0.5
        lo, hi = (BUZZ_F0_HZ[0], min(BUZZ_F0_HZ[1], top)) if buzz else (TONE_HZ[0], top)
        f0 = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.003 * _slow(n, rng, sr, 0.5))) / sr
        k = np.arange(1, max(1, int(top // f0)) + 1) if buzz else np.ones(1)
        amp = rng.uniform(0.2, 1.0, k.size) / k ** rng.uniform(0.5, 1.5)
        part = np.sum(amp[:, None] * np.sin(k[:, None] * phase + rng.uniform(0, 2 * np.pi, (k.size, 1))), axis=0)
        if rng.uniform() < 1 / 3:
            part = part * _gate(n, rng, sr)
        level = np.sqrt(np.mean(part * part))
        if level > 0:
            x += part / level * 10 ** (rng.uniform(-6, 0) / 20)
    level = np.sqrt(np.mean(x * x))
    floor = colored(n, rng, 1.0, sr) * (level if level > 0 else 1.0) * 10 ** (-30 / 20)
    return _unit(x + floor)


def bursts(n, rng, ctx):
    sr = ctx.sample_rate
    x = np.zeros(n)
    count = max(1, int(rng.poisson(rng.uniform(1.0, 4.0) * n / sr)))
    for _ in range(count):
        kind = int(rng.integers(3))
        if kind == 0:  # click
            length = max(2, int(sr * rng.uniform(0.001, 0.006)))
            event = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4)) * rng.uniform(0.5, 1)
        elif kind == 1:  # short noise burst
            length = max(4, int(sr * rng.uniform(0.02, 0.15)))
            event = np.hanning(length) * colored(length, rng, rng.uniform(0, 1.5), sr) * rng.uniform(0.2, 0.6)
        else:  # door slam: low-passed noise and a thump, decaying
            length = int(sr * rng.uniform(0.2, 0.6))
            t = np.arange(length) / sr
            sos = signal.butter(2, rng.uniform(300, 1500), fs=sr, output="sos")
            body = _unit(signal.sosfilt(sos, rng.standard_normal(length))) + np.sin(2 * np.pi * rng.uniform(40, 90) * t)
            event = body * np.exp(-t / rng.uniform(0.04, 0.15)) * rng.uniform(0.5, 1)
        start = int(rng.integers(-(event.size // 2), n))
        lo, hi = max(start, 0), min(start + event.size, n)
        if hi > lo:
            x[lo:hi] += event[lo - start:hi - start]
    level = np.sqrt(np.mean(x * x))
    floor = colored(n, rng, 1.0, sr) * (level if level > 0 else 1.0) * 10 ** (-30 / 20)
    return _unit(x + floor)


def hvac(n, rng, ctx):
    sr = ctx.sample_rate
    w = int(_WARMUP_S * sr)
    lowpass = signal.butter(2, rng.uniform(200, 2000), fs=sr, output="sos")
    x = _unit(_filtered(lowpass, rng.standard_normal(n + w), w)) + rng.uniform(0.2, 1.0) * colored(n, rng, 1.0, sr)
    centre = rng.uniform(100, 1000)
    resonance = signal.butter(1, (centre / 1.15, centre * 1.15), btype="bandpass", fs=sr, output="sos")
    x += rng.uniform(0.1, 0.5) * _unit(_filtered(resonance, rng.standard_normal(n + w), w))
    blade = rng.uniform(60, 300) * (1 + 0.003 * _slow(n, rng, sr, 0.3))
    phase = 2 * np.pi * np.cumsum(blade) / sr
    for k in (1, 2, 3):
        x += rng.uniform(0.02, 0.2) / k * np.sqrt(2) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return _unit(x * (1 + rng.uniform(0.1, 0.4) * _slow(n, rng, sr, rng.uniform(0.2, 2.0))))


def engine(n, rng, ctx):
    sr = ctx.sample_rate
    w = int(_WARMUP_S * sr)
    rate = rng.uniform(25, 60) * (1 + 0.1 * _slow(n + w, rng, sr, 0.5))
    cycles = np.floor(np.cumsum(rate) / sr)
    pulses = np.zeros(n + w)
    hits = np.flatnonzero(np.diff(cycles)) + 1
    pulses[hits] = rng.uniform(0.6, 1.0, hits.size)
    t = np.arange(int(0.02 * sr)) / sr
    kernel = rng.standard_normal(t.size) * np.exp(-t / rng.uniform(0.002, 0.006))
    x = signal.fftconvolve(pulses, kernel)[:n + w]
    x = _unit(_filtered(signal.butter(4, rng.uniform(400, 1500), fs=sr, output="sos"), x, w))
    return _unit(x + rng.uniform(0.1, 0.4) * colored(n, rng, 2.0, sr))


def babble(n, rng, ctx):
    pool = ctx.pool
    candidates = [i for i in range(len(pool)) if i != ctx.exclude]
    if len(candidates) < 1:
        raise ValueError("babble needs a pool of other utterances (NoiseContext.pool)")
    k = min(int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1)), len(candidates))
    x = np.zeros(n)
    for i in rng.choice(candidates, size=k, replace=False):
        u = np.asarray(pool[i], dtype=np.float64)
        power = ctx.pool_power[i] if ctx.pool_power is not None else active_power(u, ctx.sample_rate)
        u = np.concatenate([u, np.zeros(int(rng.uniform(0.05, 0.3) * ctx.sample_rate))])  # a pause between loops
        segment = u[(int(rng.integers(u.size)) + np.arange(n)) % u.size]
        x += segment / np.sqrt(power) * 10 ** (rng.uniform(-3, 3) / 20)
    return _unit(x)


@dataclass(frozen=True)
class NoiseKind:
    """A noise generator ``fn(n, rng, context) -> (n,) float64`` of unit RMS."""

    name: str
    fn: Callable[[int, np.random.Generator, NoiseContext], np.ndarray]
    description: str


NOISES: dict[str, NoiseKind] = {kind.name: kind for kind in (
    NoiseKind("white", white, "Gaussian white noise"),
    NoiseKind("pink", pink, "1/f power (−10 dB/decade), high-passed at 20 Hz"),
    NoiseKind("brown", brown, "1/f² power (−20 dB/decade), high-passed at 20 Hz"),
    NoiseKind("babble", babble, "3–7 other utterances of the split, summed"),
    NoiseKind("hum", hum, "mains hum: fundamental (50/60 Hz train, 100/120 Hz test), harmonics, drift"),
    NoiseKind("bursts", bursts, "clicks, short noise bursts and door-slam decays over a pink floor"),
    NoiseKind("hvac", hvac, "fan/air-conditioning: coloured noise, resonance, blade tones, slow modulation"),
    NoiseKind("tones", tones, "whistles, beeps and buzzers: 1–3 tones or harmonic buzzes (training extra)"),
    NoiseKind("engine", engine, "engine: 25–60 Hz firing pulses and brown rumble (test only)"),
)}


def make_noise(kind: str, n: int, rng: np.random.Generator, context: NoiseContext | None = None) -> np.ndarray:
    """``n`` samples of noise ``kind`` (unit RMS, float64)."""
    if kind not in NOISES:
        raise ValueError(f"unknown noise {kind!r}; available: {', '.join(NOISES)}")
    context = context if context is not None else NoiseContext()
    if context.split not in HUM_F0:
        raise ValueError(f"noise split must be one of {', '.join(HUM_F0)} (got {context.split!r})")
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"n must be a positive number of samples (got {n!r})")
    return NOISES[kind].fn(int(n), rng, context)

"""Speech-enhancement metrics as SGMSE's ``calc_metrics.py`` computes them.

PESQ (wide-band, ITU-T P.862.2, the ``pesq`` package) at 16 kHz; ESTOI (``pystoi``, extended=True) at
the file's rate; SI-SDR and the SI-SDR/SI-SIR/SI-SAR decomposition of ``energy_ratios`` with the noise
``n = noisy − clean``; ``mean_std`` over files with NaNs dropped. Signals are 1-D float arrays of one
length (a ``[1, N]`` file is accepted and squeezed).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np


def _mono(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a mono waveform [N] (got shape {x.shape}); score channels one by one")
    return x


def _pair(ref, deg, names=("reference", "degraded")) -> tuple[np.ndarray, np.ndarray]:
    ref, deg = _mono(ref, names[0]), _mono(deg, names[1])
    if ref.shape != deg.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have one length (got {ref.size} and {deg.size} samples)")
    return ref, deg


def pesq_wb(ref, deg, sr: int) -> float:
    """Wide-band PESQ of ``deg`` against ``ref`` (−0.5…4.64); both resampled to 16 kHz first when
    ``sr`` ≠ 16000 (soxr; SGMSE uses librosa, which differs in the last digits). NaN with a warning
    when PESQ finds no speech (silence), instead of pesq's ``NoUtterancesError``."""
    from pesq import NoUtterancesError, pesq

    from ..audio.io import resample

    ref, deg = _pair(ref, deg)
    if sr != 16000:
        ref, deg = resample(ref, sr, 16000), resample(deg, sr, 16000)
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # pesq divides by the peak, 0 for silence
            return float(pesq(16000, ref, deg, "wb"))
    except NoUtterancesError:
        warnings.warn("PESQ found no utterances (silent or too quiet a signal); returning NaN", RuntimeWarning,
                      stacklevel=2)
        return float("nan")


def estoi(ref, deg, sr: int) -> float:
    """Extended STOI (Jensen & Taal 2016; ``pystoi.stoi(..., extended=True)``) at ``sr`` (pystoi resamples
    to 10 kHz itself). About 1 for identical signals."""
    from pystoi import stoi

    ref, deg = _pair(ref, deg)
    return float(stoi(ref, deg, sr, extended=True))


def _db(numerator: float, denominator: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(10 * np.log10(np.float64(numerator) / np.float64(denominator)))


def si_sdr(ref, est) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019): ``α = ⟨ŝ,s⟩/‖s‖²``, ``10 log10(‖αs‖²/‖αs − ŝ‖²)``.
    ``inf`` when ``est`` is an exact multiple of ``ref``; NaN for a silent reference."""
    s, s_hat = _pair(ref, est, ("reference", "estimate"))
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.dot(s_hat, s) / np.dot(s, s)
    target = alpha * s
    return _db(np.dot(target, target), np.sum((target - s_hat) ** 2))


class EnergyRatios(NamedTuple):
    """SI-SDR, SI-SIR and SI-SAR in dB."""

    si_sdr: float
    si_sir: float
    si_sar: float


def energy_ratios(est, clean, noisy) -> EnergyRatios:
    """SGMSE's decomposition of ``est`` (ŝ) into target, noise and artefacts, with ``n = noisy − clean``:
    ``s_t = (⟨ŝ,s⟩/‖s‖²)s``, ``e_n = (⟨ŝ,n⟩/‖n‖²)n``, ``e_a = ŝ − s_t − e_n``; SI-SDR = ‖s_t‖²/‖e_n+e_a‖²,
    SI-SIR = ‖s_t‖²/‖e_n‖², SI-SAR = ‖s_t‖²/‖e_a‖², each in dB."""
    s_hat, s = _pair(est, clean, ("estimate", "clean"))
    n = _pair(clean, noisy, ("clean", "noisy"))[1] - s
    with np.errstate(divide="ignore", invalid="ignore"):
        s_target = np.dot(s_hat, s) / np.dot(s, s) * s
        e_noise = np.dot(s_hat, n) / np.dot(n, n) * n
    e_art = s_hat - s_target - e_noise
    energy = np.dot(s_target, s_target)
    return EnergyRatios(_db(energy, np.sum((e_noise + e_art) ** 2)), _db(energy, np.dot(e_noise, e_noise)),
                        _db(energy, np.dot(e_art, e_art)))


def mean_std(values) -> tuple[float, float]:
    """``(mean, std)`` of ``values`` after dropping NaNs (population std, ``ddof=0``, as SGMSE reports);
    ``(nan, nan)`` if nothing is left."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))

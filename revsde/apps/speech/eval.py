"""Measuring the speech models: enhance the held-out test pairs and score them (PESQ, ESTOI, SI-SDR, RTF).

``evaluate_speech`` enhances each noisy utterance of ``speech_data.test_set`` (held-out sentences,
voices and noises; 2–4 s at 16 kHz) as ``revsde enhance`` would, in one window, and compares input and
output with the clean speech: wide-band PESQ, ESTOI and SI-SDR (SGMSE's ``calc_metrics``: the SI-SDR of
``energy_ratios`` with the noise ``noisy − clean``). The real-time factor is the enhancement's wall
time over the audio's duration. The model card and ``revsde bench speech`` are made of it.
"""
from __future__ import annotations

import math
import time

import numpy as np

from revsde.metrics.speech import energy_ratios, estoi, mean_std, pesq_wb
from revsde.apps.speech.enhance import Enhancer, SpeechModel, enhance_array

METRICS = ("pesq", "estoi", "si_sdr")


def score(clean: np.ndarray, estimate: np.ndarray, noisy: np.ndarray, sample_rate: int) -> dict:
    """PESQ-WB, ESTOI and SI-SDR of ``estimate`` against ``clean`` (``noisy`` gives SI-SDR's noise term)."""
    return {"pesq": pesq_wb(clean, estimate, sample_rate), "estoi": estoi(clean, estimate, sample_rate),
            "si_sdr": energy_ratios(estimate, clean, noisy).si_sdr}


def evaluate_speech(speech: SpeechModel, *, sampler: str = "mrs", nfe: int = 10, pairs=None, seed: int = 0,
                    options: dict | None = None, device=None, progress: bool = False) -> dict:
    """Enhance the test pairs (default: ``speech_data.test_set()``) and score input and output.

    Returns ``{"rows": [per pair], "mean": {...}, "std": {...}, "rtf", "nfe" (per utterance), "sampler",
    "options", "seconds"}``; means and standard deviations drop NaNs (PESQ of silence), as SGMSE's report.
    """
    from tqdm.auto import tqdm

    from revsde.apps.speech.data import test_set

    pairs = test_set() if pairs is None else pairs
    enhancer = Enhancer(speech, sampler=sampler, nfe=nfe, seed=seed, options=options, device=device)
    rate = speech.sample_rate
    rows, compute, audio = [], 0.0, 0.0
    for i, pair in enumerate(tqdm(pairs, desc=f"eval {sampler} {nfe}", disable=not progress)):
        clean, noisy = np.asarray(pair.clean, np.float32), np.asarray(pair.noisy, np.float32)
        enhancer.seed = seed + i  # a fixed draw per utterance, whichever pairs run
        nfe_before, start = enhancer.nfe, time.perf_counter()
        enhanced = enhance_array(enhancer, noisy, rate, chunk_seconds=max(8.0, 1.1 * noisy.size / rate))
        compute += time.perf_counter() - start
        audio += noisy.size / rate
        row = {"index": i, "snr_db": float(getattr(pair, "snr_db", math.nan)), "nfe": enhancer.nfe - nfe_before}
        row.update({f"{k}_in": v for k, v in score(clean, noisy, noisy, rate).items()})
        row.update(score(clean, enhanced, noisy, rate))
        rows.append(row)
    keys = [k + suffix for k in METRICS for suffix in ("_in", "")]
    stats = {k: mean_std([r[k] for r in rows]) for k in keys}
    return {"sampler": sampler, "options": dict(options or {}), "nfe": rows[0]["nfe"] if rows else 0,
            "rows": rows, "mean": {k: v[0] for k, v in stats.items()}, "std": {k: v[1] for k, v in stats.items()},
            "rtf": compute / max(audio, 1e-9), "seconds": compute}

"""Synthetic speech-enhancement data at 16 kHz for SGMSE+-style training: clean English speech spoken
by espeak-ng (Debian package ``espeak-ng``), noisy = clean + noise at an SNR uniform in −5…15 dB.

Three modules feed this one: ``speech_text`` composes the sentences (a fixed list, then grammatical
template sentences, deterministic by seed), ``speech_espeak`` speaks them (8 English accents × 30 voice
variants, rate 130–210 words/min, pitch 25–75, amplitude 40–70; resampled to 16 kHz, silences trimmed
to 0.1 s, peak normalised to amplitude/100), ``speech_noise`` makes the noises (white, pink, brown,
babble, mains hum, bursts, HVAC; engine for test only) and mixes at an SNR over the *active* speech.

The split is fixed, like ``restore_data.HELD_OUT``. Test utterances use held-out accents × held-out
variants only (``HELD_OUT_ACCENTS``, ``HELD_OUT_VARIANTS``), training ones the others; test sentences
use held-out names, nouns and templates (``speech_text.HELD_OUT_*``), so no test sentence or voice is
trained on; test noise has hum at 100/120 Hz (training: 50/60 Hz), ``engine`` noise (never trained
on), and babble from held-out utterances. The test set is ``TEST_PAIRS`` = 24 pairs of 2–4 s: test
utterances 0–23 as clean (longer ones cut at their quietest 20 ms between 3 and 4 s, shorter ones
zero-padded symmetrically), noise kinds taking turns over ``TEST_NOISES`` (3 pairs each), SNRs
stratified over −5…15 dB, babble from test utterances 24–35; all from fixed seeds.

Cache. ``synthesize_corpus`` speaks a split's first N utterances into ``<root>/<split>-seed<S>-v<V>/``
(``root`` defaults to ``out/speech``) as 16-bit FLAC files named by index and a hash of their
text/voice/rate/pitch/amplitude, with a ``manifest.json`` listing them (file, text, voice, accent,
variant, rate, pitch, amplitude, seconds). It is resumable (existing files are skipped, so a corpus can
grow) and safe to run in parallel (each file is written under a temporary name and renamed; the
manifest is merged under a lock). About 0.01–0.03 s per utterance.

Public API::

    load_corpus(split, n, root=None, *, seed=0, workers=2, progress=True, executable=None,
                timeout=30.0) -> SpeechCorpus                # the first n utterances, synthesised if missing
    synthesize_corpus(split, n, root=None, *, seed=0, workers=2, progress=True, ...) -> Path
    test_set(root=None, *, n=TEST_PAIRS, progress=False, executable=None, noise=None) -> list[NoisyPair]
    SpeechPairs(corpus, length=16256, batch=8, *, noises=TRAIN_NOISES, snr_db=(-5, 15), seed=0,
                output="numpy")                               # iterator of (clean, noisy), each (batch, length)
    SpeechPairs.pair() -> (clean, noisy)                      # one crop, each (length,) float32
    crop_length(num_frames, hop_length=128) -> int            # SGMSE's (num_frames − 1) · hop samples
    espeak(text, voice="en-us", *, rate=175, pitch=50, amplitude=100, sample_rate=16000, executable=None,
           timeout=30.0) -> np.ndarray                        # speech_espeak: raw espeak-ng audio, float32
    render(utterance, *, sample_rate=16000, ...) -> np.ndarray    # speech_espeak: corpus audio of a spec
    utterance_specs(split, n, seed=0) -> list[Utterance]      # speech_espeak: text, voice, rate, pitch, amplitude
    sentences(split, n, seed=0) -> list[str]                  # speech_text
    make_noise(kind, n, rng, context=None) -> np.ndarray      # speech_noise: unit-RMS noise
    mix(clean, noise, snr_db, *, speech_power=None) -> (noisy, scaled_noise)   # speech_noise
    snr(clean, noise, *, speech_power=None) -> float; active_power(x) -> float  # speech_noise
"""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from revsde.apps.speech.espeak import (ACCENTS, HELD_OUT_ACCENTS, HELD_OUT_VARIANTS, VARIANTS, EspeakNotFoundError,
                                       Utterance, espeak, find_espeak, render, split_voices, utterance_specs)
from revsde.apps.speech.noise import (EXTRA_TRAIN_NOISES, NOISES, SAMPLE_RATE, SNR_DB, TEST_NOISES, TRAIN_NOISES,
                                      NoiseContext, active_power, make_noise, mix, snr)
from revsde.apps.speech.text import sentences

__all__ = ["load_corpus", "synthesize_corpus", "SpeechCorpus", "test_set", "NoisyPair", "SpeechPairs", "crop_length",
           "espeak", "render", "Utterance", "utterance_specs", "split_voices", "EspeakNotFoundError", "sentences",
           "make_noise", "mix", "snr", "active_power", "ACCENTS", "VARIANTS", "HELD_OUT_ACCENTS",
           "HELD_OUT_VARIANTS", "TRAIN_NOISES", "TEST_NOISES", "EXTRA_TRAIN_NOISES", "SNR_DB"]

CORPUS_VERSION = 1
DEFAULT_ROOT = Path("out") / "speech"
TEST_PAIRS = 24
TEST_BABBLE = 12
TEST_SECONDS = (2.0, 4.0)
TEST_SEED = 0  # the corpus seed of the test utterances
TEST_NOISE_SEED = 0x7E57
OUTPUTS = ("numpy", "torch")


# --- the cache ---------------------------------------------------------------------------------
def corpus_dir(split: str, seed: int = 0, root=None) -> Path:
    return Path(DEFAULT_ROOT if root is None else root) / f"{split}-seed{int(seed)}-v{CORPUS_VERSION}"


def _file_name(i: int, u: Utterance) -> str:
    return f"{i:05d}-{u.key()}.flac"


def _write(path: Path, audio: np.ndarray, sample_rate: int):
    import soundfile as sf

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    sf.write(str(tmp), audio, sample_rate, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)


@contextmanager
def _locked(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the manifest is still replaced atomically
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _update_manifest(folder: Path, split: str, seed: int, specs: list[Utterance], sample_rate: int):
    import soundfile as sf

    manifest = folder / "manifest.json"
    with _locked(folder / ".manifest.lock"):
        entries = {}
        if manifest.exists():
            entries = {e["file"]: e for e in json.loads(manifest.read_text())["utterances"]}
        for i, u in enumerate(specs):
            name = _file_name(i, u)
            if name not in entries:
                seconds = round(sf.info(str(folder / name)).duration, 4)
                entries[name] = {"file": name, **asdict(u), "voice": u.voice, "seconds": seconds}
        data = {"version": CORPUS_VERSION, "split": split, "seed": seed, "sample_rate": sample_rate,
                "utterances": [entries[k] for k in sorted(entries)]}
        tmp = folder / f".manifest.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
        os.replace(tmp, manifest)


def synthesize_corpus(split: str, n: int, root=None, *, seed: int = 0, workers: int = 2, progress: bool = True,
                      executable: str | None = None, timeout: float = 30.0) -> Path:
    """Speak the first ``n`` utterances of ``split`` into the cache at 16 kHz (skipping those already
    there) and return the corpus folder."""
    from tqdm.auto import tqdm

    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers must be a positive integer (got {workers!r})")
    specs = utterance_specs(split, n, seed)
    folder = corpus_dir(split, seed, root)
    folder.mkdir(parents=True, exist_ok=True)
    missing = [(folder / _file_name(i, u), u) for i, u in enumerate(specs) if not (folder / _file_name(i, u)).exists()]
    if missing:
        find_espeak(executable)  # fail before starting any worker

        def job(path, u):
            _write(path, render(u, executable=executable, timeout=timeout), SAMPLE_RATE)

        with ThreadPoolExecutor(workers) as pool, \
                tqdm(total=len(missing), desc=f"espeak-ng {split}", unit="utt", disable=not progress) as bar:
            futures = [pool.submit(job, path, u) for path, u in missing]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    _update_manifest(folder, split, seed, specs, SAMPLE_RATE)
    return folder


@dataclass(frozen=True)
class SpeechCorpus:
    """A split's utterances in memory: float32 audio, their specs, and their active powers."""

    split: str
    utterances: tuple[Utterance, ...]
    audio: tuple[np.ndarray, ...] = field(repr=False)
    sample_rate: int = SAMPLE_RATE
    power: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "power", tuple(active_power(x, self.sample_rate) for x in self.audio))

    def __len__(self) -> int:
        return len(self.audio)


def load_corpus(split: str, n: int, root=None, *, seed: int = 0, workers: int = 2, progress: bool = True,
                executable: str | None = None, timeout: float = 30.0) -> SpeechCorpus:
    """The first ``n`` utterances of ``split``, synthesised into the cache first where missing."""
    import soundfile as sf

    folder = synthesize_corpus(split, n, root, seed=seed, workers=workers, progress=progress,
                               executable=executable, timeout=timeout)
    specs = utterance_specs(split, n, seed)
    audio = tuple(sf.read(str(folder / _file_name(i, u)), dtype="float32")[0] for i, u in enumerate(specs))
    return SpeechCorpus(split, tuple(specs), audio)


# --- the held-out test set ---------------------------------------------------------------------
@dataclass(frozen=True)
class NoisyPair:
    """A test pair: ``noisy = clean + noise`` at ``snr_db`` (active speech level), float32 at 16 kHz."""

    clean: np.ndarray = field(repr=False)
    noisy: np.ndarray = field(repr=False)
    noise: str
    snr_db: float
    utterance: Utterance


def _fit_length(x: np.ndarray, seconds: tuple[float, float], sample_rate: int) -> np.ndarray:
    """Cut ``x`` at its quietest 20 ms frame in the last second of the allowed span, or pad it to the shortest."""
    lo, hi = (int(s * sample_rate) for s in seconds)
    if x.size > hi:
        frame = int(0.02 * sample_rate)
        start = max(lo, hi - sample_rate)
        energy = np.convolve(x[start:hi].astype(np.float64) ** 2, np.ones(frame), "valid")
        x = x[:start + int(np.argmin(energy)) + frame // 2]
    pad = max(lo - x.size, 0)
    return np.pad(x, (pad // 2, pad - pad // 2))


def test_set(root=None, *, n: int = TEST_PAIRS, progress: bool = False, executable: str | None = None,
             timeout: float = 30.0, noise: str | None = None) -> list[NoisyPair]:
    """The fixed held-out test pairs (the first ``n`` of ``TEST_PAIRS``), spoken into the cache first.

    ``noise``: every pair mixed with this kind instead (the same utterances, SNRs and noise seeds), to
    measure one noise on its own, e.g. ``tones``, which the test set proper never uses."""
    if not (isinstance(n, int) and 1 <= n <= TEST_PAIRS):
        raise ValueError(f"n must be in 1..{TEST_PAIRS} (got {n!r})")
    if noise is not None and noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; available: {', '.join(NOISES)}")
    # noise kinds in turn, shifted by 3 every round so that each meets three voice variants and both accents
    kinds = [noise or TEST_NOISES[(i + 3 * (i // len(TEST_NOISES))) % len(TEST_NOISES)] for i in range(n)]
    size = TEST_PAIRS + TEST_BABBLE if "babble" in kinds else n
    corpus = load_corpus("test", size, root, seed=TEST_SEED, progress=progress, executable=executable,
                         timeout=timeout)
    babble = NoiseContext("test", corpus.sample_rate, corpus.audio[TEST_PAIRS:], corpus.power[TEST_PAIRS:])
    rng = np.random.default_rng(TEST_NOISE_SEED)
    strata = rng.permutation(TEST_PAIRS)
    lo, hi = SNR_DB
    pairs = []
    for i, kind in enumerate(kinds):
        clean = _fit_length(corpus.audio[i], TEST_SECONDS, corpus.sample_rate)
        rng = np.random.default_rng([TEST_NOISE_SEED, i])
        snr_db = lo + (hi - lo) * (strata[i] + rng.uniform()) / TEST_PAIRS
        noisy, _ = mix(clean, make_noise(kind, clean.size, rng, babble), snr_db)
        pairs.append(NoisyPair(clean, noisy.astype(np.float32), kind, float(snr_db), corpus.utterances[i]))
    return pairs


# --- training crops ----------------------------------------------------------------------------
def crop_length(num_frames: int, hop_length: int = 128) -> int:
    """SGMSE's crop in samples, ``(num_frames − 1) · hop_length``: 256 frames → 32640, 128 → 16256."""
    return (int(num_frames) - 1) * int(hop_length)


class SpeechPairs:
    """Random training batches ``(clean, noisy)``, each ``(batch, length)`` float32.

    Each crop picks an utterance uniformly; a longer one is cut at a uniform position, a shorter one is
    zero-padded symmetrically (``pad // 2`` before, the rest after), clean and noisy alike, as SGMSE
    does. The noise kind is uniform over ``noises`` (for the train split: ``TRAIN_NOISES``, the default
    mix, and ``EXTRA_TRAIN_NOISES``), the SNR uniform over ``snr_db`` relative to the
    *whole utterance's* active level; noise is generated fresh for every crop (babble from the corpus's
    other utterances). All randomness comes from ``self.rng`` (a ``numpy.random.Generator`` seeded
    ``seed``; save ``rng.bit_generator.state`` to resume).
    """

    def __init__(self, corpus: SpeechCorpus, length: int = crop_length(128), batch: int = 8, *,
                 noises=TRAIN_NOISES, snr_db=SNR_DB, seed: int = 0, output: str = "numpy"):
        if not (isinstance(length, int) and length >= 1 and isinstance(batch, int) and batch >= 1):
            raise ValueError(f"length and batch must be positive integers (got length={length!r}, batch={batch!r})")
        unknown = [k for k in noises if k not in NOISES]
        if unknown or not noises:
            raise ValueError(f"unknown noise {unknown or noises!r}; available: {', '.join(NOISES)}")
        held_out = [k for k in noises if k not in TRAIN_NOISES + EXTRA_TRAIN_NOISES]
        if corpus.split == "train" and held_out:
            raise ValueError(f"noise {', '.join(held_out)} is held out for the test split")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)} (got {output!r})")
        if len(corpus) < 1 or ("babble" in noises and len(corpus) < 2):
            raise ValueError(f"the corpus has {len(corpus)} utterances: too few" + (" for babble" * ("babble" in noises)))
        self.corpus, self.length, self.batch, self.output = corpus, length, batch, output
        self.noises, self.snr_db = tuple(noises), (float(snr_db[0]), float(snr_db[1]))
        self.rng = np.random.default_rng(seed)

    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        """One ``(clean, noisy)`` crop, each ``(length,)`` float32."""
        rng, c, length = self.rng, self.corpus, self.length
        i = int(rng.integers(len(c)))
        x = c.audio[i]
        if x.size >= length:
            start = int(rng.integers(x.size - length + 1))
            x = x[start:start + length]
        kind = self.noises[int(rng.integers(len(self.noises)))]
        context = NoiseContext(c.split, c.sample_rate, c.audio, c.power, exclude=i)
        noisy, _ = mix(x, make_noise(kind, x.size, rng, context), rng.uniform(*self.snr_db), speech_power=c.power[i])
        pad = length - x.size
        pads = (pad // 2, pad - pad // 2)
        return np.pad(x, pads).astype(np.float32), np.pad(noisy, pads).astype(np.float32)

    def __iter__(self):
        return self

    def __next__(self):
        clean, noisy = map(np.stack, zip(*(self.pair() for _ in range(self.batch))))
        if self.output == "torch":
            import torch

            return torch.from_numpy(clean), torch.from_numpy(noisy)
        return clean, noisy

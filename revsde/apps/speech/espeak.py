"""Clean speech from espeak-ng (Debian package ``espeak-ng``) for the synthetic speech corpus
(``speech_data``): the voices, the held-out voice split, and one utterance's audio.

Voices. ``ACCENTS``: espeak-ng's eight built-in English voices (the ``mb-*`` MBROLA voices and
``en-uk`` need the ``mbrola`` package and are left out). ``VARIANTS``: espeak's ``+m…``/``+f…`` and
named variants, ``croak``, ``whisper`` and the Klatt synthesiser (``klatt…``). Left out: variants with
an ``echo`` setting (m2, f2–f5, Alicia, …), because a clean target must not carry a reflection; the
robot/effect voices (Demonic, robosoft, announcer, …); those that clip at a normal level (Andy, john,
norbert); klatt5/klatt6 (near-copies of kept ones). Test utterances speak with ``HELD_OUT_ACCENTS`` ×
``HELD_OUT_VARIANTS`` only (each run of 16 utterances speaks all 16 pairs), training ones with the other accents ×
the other variants, so no test voice is heard in training.

An utterance is spoken at a rate of ``RATE_WPM`` words/min, pitch ``PITCH`` (espeak's 0–99) and
amplitude ``AMPLITUDE`` (espeak ``-a``), resampled from espeak's 22.05 kHz with soxr, its leading and
trailing silence (below −40 dB of the peak) cut to at most ``TRIM_KEEP_S``, and its peak normalised to
``amplitude / 100``: espeak's own level differs from voice to voice, so the amplitude sets the level.
An output that clips is re-spoken at half the amplitude before normalising.

espeak-ng runs as ``[exe, -v, voice, -s, …, --stdout]`` with the text on stdin (never through a
shell, never parsed as an option), under a timeout.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

import numpy as np

from revsde.apps.speech.noise import SAMPLE_RATE
from revsde.apps.speech.text import SPLITS, sentences

ESPEAK = "espeak-ng"
ESPEAK_PACKAGE = "espeak-ng"
ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-us-nyc",
           "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("", "m1", "m3", "m4", "m5", "m6", "croak", "whisper", "klatt", "klatt2", "klatt3", "quincy",
            "travis", "max", "rob", "f1", "Annie", "belinda", "grandma", "steph", "Andrea", "aunty",
            "m7", "m8", "klatt4", "victor", "linda", "anika", "steph2", "whisperf")
#: the test split's voices: West Midlands and Caribbean English; 4 male and 4 female variants
HELD_OUT_ACCENTS = ("en-gb-x-gbcwmd", "en-029")
HELD_OUT_VARIANTS = ("m7", "m8", "klatt4", "victor", "linda", "anika", "steph2", "whisperf")
RATE_WPM = (130, 210)
PITCH = (25, 75)
AMPLITUDE = (40, 70)
TRIM_KEEP_S = 0.1
TRIM_DB = 40.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class EspeakNotFoundError(FileNotFoundError):
    """espeak-ng is not installed (or not at the path given)."""


def find_espeak(executable: str | None = None) -> str:
    """The path of the espeak-ng executable, or an error that says how to install it."""
    name = executable or ESPEAK
    path = shutil.which(name)
    if path is None:
        raise EspeakNotFoundError(f"espeak-ng executable not found (looked for {name!r}): install the Debian/Ubuntu "
                                  f"package with `sudo apt-get install {ESPEAK_PACKAGE}`, or pass executable=PATH")
    return path


def _check(name: str, value, lo, hi):
    if not (lo <= value <= hi):
        raise ValueError(f"espeak-ng {name} must be in [{lo}, {hi}] (got {value!r})")


def _speak_int16(text: str, voice: str, rate: int, pitch: int, amplitude: int, executable, timeout: float):
    """espeak-ng's raw output: int16 mono samples and their sample rate."""
    import soundfile as sf

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string (got {text!r})")
    accent, _, variant = voice.partition("+")
    if not _NAME.match(accent) or (variant and not _NAME.match(variant)):
        raise ValueError(f"voice must look like 'en-us' or 'en-us+m3' (got {voice!r})")
    _check("rate", rate, 80, 450)
    _check("pitch", pitch, 0, 99)
    _check("amplitude", amplitude, 0, 200)
    exe = find_espeak(executable)
    args = [exe, "-v", voice, "-s", str(int(rate)), "-p", str(int(pitch)), "-a", str(int(amplitude)), "-b", "1",
            "--stdout"]
    try:
        done = subprocess.run(args, input=text.encode("utf-8"), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"espeak-ng took longer than {timeout} s (voice {voice!r}, text {text[:60]!r})") from None
    except OSError as e:
        raise EspeakNotFoundError(f"could not run {exe!r} ({e}); install the package `{ESPEAK_PACKAGE}`") from None
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed (exit {done.returncode}, voice {voice!r}): "
                           f"{done.stderr.decode(errors='replace').strip() or 'no audio'}")
    audio, rate_in = sf.read(io.BytesIO(done.stdout), dtype="int16")
    return (audio if audio.ndim == 1 else audio[:, 0]), rate_in


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    import soxr

    return x if rate_in == rate_out else soxr.resample(x, rate_in, rate_out, quality="HQ").astype(np.float32)


def espeak(text: str, voice: str = "en-us", *, rate: int = 175, pitch: int = 50, amplitude: int = 100,
           sample_rate: int = SAMPLE_RATE, executable: str | None = None, timeout: float = 30.0) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice`` (``"en-us"``, ``"en-gb+m3"``, …): float32 mono at
    ``sample_rate``, untrimmed, at espeak's own level."""
    audio, rate_in = _speak_int16(text, voice, rate, pitch, amplitude, executable, timeout)
    return _resample(audio.astype(np.float32) / 32768, rate_in, sample_rate)


@dataclass(frozen=True)
class Utterance:
    """What one corpus utterance says and how: espeak-ng's voice ``accent+variant``, rate (words/min),
    pitch (0–99) and amplitude (espeak ``-a``; the stored peak is ``amplitude / 100``)."""

    text: str
    accent: str
    variant: str
    rate: int
    pitch: int
    amplitude: int

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}" if self.variant else self.accent

    def key(self) -> str:
        """A short hash of the fields, naming the utterance's cache file."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def render(utterance: Utterance, *, sample_rate: int = SAMPLE_RATE, executable: str | None = None,
           timeout: float = 30.0) -> np.ndarray:
    """An utterance as corpus audio: spoken, resampled, silences trimmed, peak normalised."""
    u, amplitude = utterance, utterance.amplitude
    for _ in range(4):
        audio, rate_in = _speak_int16(u.text, u.voice, u.rate, u.pitch, amplitude, executable, timeout)
        if np.abs(audio.astype(np.int32)).max() < 32767:
            break
        amplitude = max(1, amplitude // 2)  # clipped: speak it quieter; the normalisation restores the level
    x = _resample(audio.astype(np.float32) / 32768, rate_in, sample_rate)
    if not np.any(x):
        raise RuntimeError(f"espeak-ng returned silence for {u.voice!r}: {u.text!r}")
    loud = np.flatnonzero(np.abs(x) > np.abs(x).max() * 10 ** (-TRIM_DB / 20))
    keep = int(TRIM_KEEP_S * sample_rate)
    x = x[max(0, loud[0] - keep):loud[-1] + 1 + keep]
    return (x * (u.amplitude / 100 / np.abs(x).max())).astype(np.float32)


def split_voices(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The accents and variants ``split`` speaks with."""
    if split == "test":
        return HELD_OUT_ACCENTS, HELD_OUT_VARIANTS
    if split == "train":
        return (tuple(a for a in ACCENTS if a not in HELD_OUT_ACCENTS),
                tuple(v for v in VARIANTS if v not in HELD_OUT_VARIANTS))
    raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")


def utterance_specs(split: str, n: int, seed: int = 0) -> list[Utterance]:
    """The first ``n`` utterances of ``split``: distinct sentences, each with a voice (drawn for training,
    cycling through every held-out accent × variant for test), rate, pitch and amplitude drawn from
    its own seed, so a longer corpus starts with the same utterances."""
    accents, variants = split_voices(split)
    specs = []
    for i, text in enumerate(sentences(split, n, seed)):
        rng = np.random.default_rng([int(seed), SPLITS.index(split), i, 0xE5])
        a, v = int(rng.integers(len(accents))), int(rng.integers(len(variants)))
        if split == "test":
            a, v = (i // len(variants)) % len(accents), (i + i // len(variants)) % len(variants)
        specs.append(Utterance(text, accents[a], variants[v], int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
                               int(rng.integers(PITCH[0], PITCH[1] + 1)),
                               int(rng.integers(AMPLITUDE[0], AMPLITUDE[1] + 1))))
    return specs

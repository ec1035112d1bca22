"""Audio files in and out (WAV, FLAC, Ogg Vorbis via soundfile), resampling (soxr) and clip-safe gain.

``read_audio`` returns float32 ``[C, N]`` samples, the sample rate and an ``AudioInfo`` that remembers the
file's format and subtype, so ``write_audio(..., subtype=info.subtype)`` writes the same kind of file.
Writes are atomic (a temporary file in the destination folder renamed over it), and every failure is an
``AudioError`` (a ``ValueError``) that names the file and the reason.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_output

SUFFIXES = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
# Where a format cannot hold the requested subtype, the first it can from this list is used.
_FALLBACK_SUBTYPES = ("PCM_24", "PCM_16", "VORBIS")


class AudioError(ValueError):
    """A file that cannot be read or written as audio."""


@dataclass(frozen=True)
class AudioInfo:
    """What ``read_audio`` found: container ``format`` (``WAV``, ``FLAC``, ``OGG``), sample ``subtype``
    (``PCM_16``, ``PCM_24``, ``FLOAT``, ``VORBIS``, ...), channel and frame counts and the sample rate."""

    format: str
    subtype: str
    channels: int
    frames: int
    sample_rate: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def audio_format(path: str | os.PathLike) -> str:
    """soundfile's format name for ``path``'s suffix; ``AudioError`` listing the valid suffixes otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise AudioError(f"{path}: unsupported audio file type {suffix or '(none)'!r}; "
                         f"audio files are {', '.join(SUFFIXES)}")
    return SUFFIXES[suffix]


def _checked_path(path) -> tuple[Path, str]:
    fmt = audio_format(path)
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise AudioError(f"{path}: cannot read ({error.strerror or error})") from None
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return path, fmt


def _wav_data_claim(path: Path) -> tuple[int, int, int] | None:
    """``(bytes the data chunk claims, bytes it has, bytes per frame)`` of a RIFF/RIFX WAVE file; None for
    another layout, or a length the writer left open (0 or 0xFFFFFFFF, as streaming writers do)."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order, pos, align = "<" if head[:4] == b"RIFF" else ">", 12, None
        while pos + 8 <= size:
            file.seek(pos)
            chunk, length = file.read(4), struct.unpack(order + "I", file.read(4))[0]
            if chunk == b"fmt " and length >= 14:
                align = struct.unpack(order + "H", file.read(14)[12:14])[0]
            elif chunk == b"data":
                if length in (0, 0xFFFFFFFF) or not align:
                    return None
                return length, min(length, size - pos - 8), align
            pos += 8 + length + (length & 1)
    return None


def _read(path, fmt: str, read):
    import soundfile as sf

    try:
        with sf.SoundFile(path) as file:
            info = AudioInfo(file.format, file.subtype, file.channels, file.frames, file.samplerate)
            data = read(file)
    except sf.LibsndfileError as error:
        raise AudioError(f"{path}: not a readable {fmt} file ({error.error_string})") from None
    except (OSError, RuntimeError) as error:
        raise AudioError(f"{path}: not a readable {fmt} file ({type(error).__name__}: {error})") from None
    if info.frames == 0 or (data is not None and data.shape[0] == 0):
        raise AudioError(f"{path}: the {info.format} file holds no audio samples")
    claim = _wav_data_claim(path) if info.format == "WAV" else None
    if claim is not None and claim[1] // claim[2] < claim[0] // claim[2]:
        claimed, present, rate = claim[0] // claim[2], claim[1] // claim[2], info.sample_rate
        raise AudioError(f"{path}: the WAV file is cut short: its header promises {claimed} frames "
                         f"({claimed / rate:.2f} s) but it holds only {present} ({present / rate:.2f} s)")
    if data is not None and not np.isfinite(data).all():
        raise AudioError(f"{path}: the audio holds NaN or infinite samples")
    return info, data


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """The ``AudioInfo`` of a WAV, FLAC or Ogg file, with ``read_audio``'s checks, without reading the samples."""
    path, fmt = _checked_path(path)
    return _read(path, fmt, lambda file: None)[0]


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int, AudioInfo]:
    """``(samples, sample_rate, info)`` of a WAV, FLAC or Ogg file; samples float32 ``[C, N]`` in [-1, 1]."""
    path, fmt = _checked_path(path)
    info, data = _read(path, fmt, lambda file: file.read(dtype="float32", always_2d=True))
    return np.ascontiguousarray(data.T), info.sample_rate, info


def _as_channels_first(wave, what: str) -> np.ndarray:
    if hasattr(wave, "detach"):  # a torch tensor
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise AudioError(f"{what}: a waveform is [N] or [C, N] (got shape {wave.shape})")
    if not np.issubdtype(wave.dtype, np.floating):
        raise AudioError(f"{what}: samples must be floats in [-1, 1] (got {wave.dtype})")
    return wave


def subtype_for(fmt: str, subtype: str | None, path) -> str:
    """``subtype`` if the format ``fmt`` can hold it, else the nearest it can; soundfile's default for None."""
    import soundfile as sf

    if subtype is None:
        return sf.default_subtype(fmt)
    subtype = subtype.upper()
    if subtype not in sf.available_subtypes():
        raise AudioError(f"{path}: unknown subtype {subtype!r}; {fmt} files take "
                         f"{', '.join(sf.available_subtypes(fmt))}")
    if sf.check_format(fmt, subtype):
        return subtype
    return next(s for s in _FALLBACK_SUBTYPES if sf.check_format(fmt, s))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_audio(path: str | os.PathLike, wave, sample_rate: int, *, subtype: str | None = None,
                source: str | os.PathLike | None = None, replace_source: bool = False) -> str:
    """Write ``wave`` (``[C, N]`` or ``[N]`` floats) to ``path`` atomically; returns the subtype written.

    The format follows the suffix (``.wav``, ``.flac``, ``.ogg``). ``subtype`` (e.g. a read file's
    ``info.subtype``) is kept where the format can hold it; otherwise the nearest it can (FLOAT → PCM_24
    in FLAC, anything → VORBIS in Ogg). Default: soundfile's, PCM_16 for WAV and FLAC as in SGMSE.
    Integer subtypes clip samples outside [-1, 1]; call ``peak_safe`` first to avoid that.
    ``source``: the input this output was made from; writing over it is refused unless ``replace_source``.
    """
    import soundfile as sf

    fmt = audio_format(path)
    path = Path(path)
    if source is not None and not replace_source and _same_file(path, Path(source)):
        raise AudioError(f"{path}: is the input file {source}; refusing to overwrite it "
                         "(choose another output path, or pass replace_source=True)")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    wave = _as_channels_first(wave, str(path))
    if wave.shape[1] == 0:
        raise AudioError(f"{path}: refusing to write an audio file with no samples")
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{path}: the waveform holds NaN or infinite samples")
    sample_rate = int(sample_rate)
    if sample_rate < 1:
        raise AudioError(f"{path}: sample rate must be a positive integer (got {sample_rate})")
    subtype = subtype_for(fmt, subtype, path)
    try:
        with atomic_output(path) as file:
            with sf.SoundFile(file, "w", sample_rate, wave.shape[0], subtype, format=fmt) as out:
                out.write(np.ascontiguousarray(wave.T))
    except sf.LibsndfileError as error:
        raise AudioError(f"{path}: cannot write {fmt}/{subtype} ({error.error_string})") from None
    except OSError as error:
        raise AudioError(f"{path}: cannot write ({error.strerror or error})") from None
    return subtype


def resample(wave: np.ndarray, sr_in: int, sr_out: int, *, quality: str = "HQ") -> np.ndarray:
    """``wave`` (``[N]`` or ``[C, N]``) from ``sr_in`` to ``sr_out`` Hz with soxr (``quality`` ``HQ`` by
    default; ``VHQ`` for more). The output has ``round(N · sr_out / sr_in)`` samples. Equal rates
    return the input itself, untouched. float32 stays float32; other inputs become float64.
    """
    sr_in, sr_out = int(sr_in), int(sr_out)
    if sr_in < 1 or sr_out < 1:
        raise ValueError(f"sample rates must be positive integers (got {sr_in} → {sr_out})")
    if sr_in == sr_out:
        return wave
    import soxr

    wave = np.asarray(wave)
    if wave.ndim not in (1, 2):
        raise ValueError(f"resample takes a waveform [N] or [C, N] (got shape {wave.shape})")
    dtype = np.float32 if wave.dtype == np.float32 else np.float64
    out = soxr.resample(np.ascontiguousarray(wave.T, dtype=dtype), sr_in, sr_out, quality=quality)
    return np.ascontiguousarray(out.T)


def peak_safe(wave, margin: float = 1e-3):
    """``(wave, scaled)``: ``wave`` scaled down to a peak of ``1 − margin`` if its peak exceeds that,
    else unchanged (the same object) with ``scaled`` False. Prevents clipping in integer files."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1) (got {margin})")
    if not hasattr(wave, "numel"):  # numpy (or array-like); torch tensors are kept as they are
        wave = np.asarray(wave)
    size = wave.numel() if hasattr(wave, "numel") else wave.size
    peak = float(abs(wave).max()) if size else 0.0
    if not np.isfinite(peak):
        raise ValueError("the waveform holds NaN or infinite samples")
    limit = 1.0 - margin
    if peak <= limit:
        return wave, False
    return wave * (limit / peak), True

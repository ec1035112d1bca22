"""Processing audio of any length in bounded memory: streamed resampling, overlapping windows with
cross-fades, and peak-safe atomic writing.

``process_stream(source, fn, rate, chunk, overlap)`` reads ``source`` in blocks, resamples them to
``rate`` (soxr's streaming resampler: the same output as one-shot resampling, tested), cuts the
stream into windows of ``chunk`` samples that overlap by ``overlap``, calls ``fn(window, index)``
on each ``(C, n)`` window and joins the results with complementary raised-cosine ramps (they sum to
one, so a signal that every window reproduces passes unchanged), resamples back to the source's
rate and yields ``(n, C)`` blocks that add up to exactly the source's length. A source that fits in
one window is processed as one call, so it equals whole-file processing. Memory holds one window,
one block and one overlap, whatever the length.

``write_peak_safe(path, blocks, ...)`` writes the blocks through a float temporary file beside the
target, then copies them into the target's format scaled down only if their peak would clip, and
renames the result into place: an interrupted write leaves no partial output.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .io import AudioError, audio_format, probe_audio, subtype_for

#: peak level the written audio never exceeds (−0.01 dBFS); lossy codecs (Ogg Vorbis) overshoot their
#: input's peak by up to about 1 dB when decoded, so they get −1 dBFS
PEAK_LIMIT = 0.99885
LOSSY_PEAK_LIMIT = 0.89125


class ArraySource:
    """An in-memory ``(C, N)`` waveform seen as a stream."""

    def __init__(self, wave: np.ndarray, samplerate: int):
        wave = np.asarray(wave, dtype=np.float32)
        self.wave = wave[None] if wave.ndim == 1 else wave
        if self.wave.ndim != 2:
            raise ValueError(f"a waveform must be (N,) or (C, N) (got shape {wave.shape})")
        self.channels, self.frames = self.wave.shape
        self.samplerate = int(samplerate)

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        for i in range(0, self.frames, size):
            yield self.wave[:, i:i + size].T


class FileSource:
    """A sound file read in blocks (soundfile); ``peak()`` is a first pass over it."""

    def __init__(self, path):
        self.path = Path(path)
        self.info = info = probe_audio(self.path)  # AudioError for a missing, empty or unreadable file
        self.channels, self.frames, self.samplerate = info.channels, info.frames, info.sample_rate
        self.subtype, self.format = info.subtype, info.format

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """``(n, C)`` float32 blocks; a stream that fails to decode part-way (a cut FLAC) is an ``AudioError``."""
        import soundfile as sf

        try:
            with sf.SoundFile(str(self.path)) as f:
                while True:
                    block = f.read(size, dtype="float32", always_2d=True)
                    if len(block) == 0:
                        return
                    yield block
        except sf.LibsndfileError as error:
            raise AudioError(f"{self.path}: not a readable {self.format} file ({error.error_string})") from None


def peak(source, block: int = 1 << 16) -> np.ndarray:
    """Per-channel ``max |x|`` of a source, streamed."""
    top = np.zeros(source.channels, dtype=np.float64)
    for b in source.blocks(block):
        np.maximum(top, np.abs(b).max(axis=0), out=top)
    return top


class _Resampler:
    """soxr's streaming resampler, or a pass-through when the rates agree."""

    def __init__(self, rate_in: int, rate_out: int, channels: int):
        self.same = rate_in == rate_out
        if not self.same:
            import soxr

            self.stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")
        self.channels = channels

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.same:
            return block
        return self.stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32), last=last)


def crossfade_ramp(n: int) -> np.ndarray:
    """The weight of the incoming window over an overlap of ``n`` samples (raised cosine, 0 → 1);
    the outgoing window gets ``1 − ramp``."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)


def check_chunking(chunk: int, overlap: int) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of samples (got {chunk!r})")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= 2 * overlap < chunk:
        raise ValueError(f"overlap must be an integer in [0, chunk/2) = [0, {math.ceil(chunk / 2)}) samples "
                         f"(got {overlap!r})")


def windows_count(frames: int, chunk: int, overlap: int) -> int:
    """How many windows ``process_stream`` makes of ``frames`` samples (at the processing rate)."""
    return 1 if frames <= chunk else 1 + math.ceil((frames - chunk) / (chunk - overlap))


def process_stream(source, fn: Callable[[np.ndarray, int], np.ndarray], rate: int, chunk: int, overlap: int, *,
                   block: int = 1 << 16, on_window: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Yield ``(n, C)`` float32 blocks of ``fn`` applied to ``source`` in overlapping windows at ``rate``.

    ``fn(window, index)`` gets a ``(C, n)`` float32 window (``n ≤ chunk``) and returns the same shape.
    The blocks add up to ``source.frames`` samples at ``source.samplerate``.
    """
    check_chunking(chunk, overlap)
    up = _Resampler(source.samplerate, rate, source.channels)
    down = _Resampler(rate, source.samplerate, source.channels)
    ramp = crossfade_ramp(overlap)
    state = {"tail": None, "index": 0, "emitted": 0}

    def run(window: np.ndarray, last: bool) -> np.ndarray:
        """Process one window; return the part of its output that is final."""
        out = np.asarray(fn(np.ascontiguousarray(window.T), state["index"]), dtype=np.float32).T
        if out.shape != window.shape:
            raise ValueError(f"the window function returned shape {out.T.shape} for a window of {window.T.shape}")
        if on_window is not None:
            on_window(state["index"])
        state["index"] += 1
        if state["tail"] is not None and overlap:
            out = out.copy()
            out[:overlap] = state["tail"] * (1 - ramp[:, None]) + out[:overlap] * ramp[:, None]
        keep = 0 if last else overlap
        state["tail"] = out[len(out) - keep:] if keep else None
        return out[:len(out) - keep]

    def emit(y: np.ndarray, last: bool = False) -> Iterator[np.ndarray]:
        z = down(y, last=last)
        z = z[:max(0, source.frames - state["emitted"])]
        state["emitted"] += len(z)
        if len(z):
            yield z

    buffer = np.zeros((0, source.channels), dtype=np.float32)
    for b in source.blocks(block):
        buffer = np.concatenate([buffer, up(b)])
        while len(buffer) > chunk:  # strictly more: the last window is processed with last=True below
            yield from emit(run(buffer[:chunk], last=False))
            buffer = buffer[chunk - overlap:]
    buffer = np.concatenate([buffer, up(np.zeros((0, source.channels), np.float32), last=True)])
    while len(buffer) > chunk:  # what the resampler's flush added
        yield from emit(run(buffer[:chunk], last=False))
        buffer = buffer[chunk - overlap:]
    if state["index"] == 0 or len(buffer) > overlap:
        final = run(buffer, last=True)
    else:  # the signal ended where the previous window did: its held-back overlap is final as it is
        final = state["tail"] if state["tail"] is not None else buffer[:0]
    yield from emit(final, last=True)
    missing = source.frames - state["emitted"]
    if missing > 0:  # resampling round trips can come up a sample or two short
        state["emitted"] += missing
        yield np.zeros((missing, source.channels), dtype=np.float32)


def collect(blocks: Iterable[np.ndarray], channels: int) -> np.ndarray:
    """Concatenate ``(n, C)`` blocks into a ``(C, N)`` array."""
    parts = list(blocks)
    return (np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)).T.copy()


def write_peak_safe(path, blocks: Iterable[np.ndarray], samplerate: int, channels: int, *,
                    subtype: str | None = None, format: str | None = None, limit: float | None = None,
                    block: int = 1 << 16) -> float:
    """Write ``(n, C)`` blocks to ``path`` atomically, scaled by ``min(1, limit / peak)``; returns the gain.
    ``limit`` defaults to ``PEAK_LIMIT``, ``LOSSY_PEAK_LIMIT`` for Vorbis.

    The blocks go to a float WAV temporary beside ``path`` first (so the peak is known before any
    sample is quantised), then into a second temporary in the target's ``format``/``subtype``
    (soundfile's default for the suffix when None; a subtype the format cannot hold becomes the nearest
    it can, as in ``write_audio``), renamed over ``path`` when complete. Returns the gain applied.
    """
    import soundfile as sf

    path = Path(path)
    fmt = format or audio_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.with_name(f".{path.name}.{os.getpid()}.float.wav")
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    top = 0.0
    try:
        with sf.SoundFile(str(stage), "w", samplerate, channels, subtype="FLOAT", format="WAV") as f:
            for b in blocks:
                if len(b):
                    top = max(top, float(np.abs(b).max()))
                    f.write(b)
        subtype = subtype_for(fmt, subtype, path)
        if limit is None:
            limit = LOSSY_PEAK_LIMIT if subtype == "VORBIS" else PEAK_LIMIT
        gain = 1.0 if top <= limit else limit / top
        with sf.SoundFile(str(part), "w", samplerate, channels, subtype=subtype, format=fmt) as out, \
                sf.SoundFile(str(stage)) as f:
            while True:
                b = f.read(block, dtype="float32", always_2d=True)
                if not len(b):
                    break
                out.write(b * np.float32(gain) if gain != 1.0 else b)
        os.replace(part, path)
        return gain
    finally:
        for p in (stage, part):
            if p.exists():
                p.unlink()


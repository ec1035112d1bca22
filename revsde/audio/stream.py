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

from ..files import temp_path
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
    return scan(source, block=block)[0]


#: digital silence (exact zeros) at least this long, or a whole channel of it, is kept as exact zeros
SILENCE_SECONDS = 0.01


class _ZeroRuns:
    """The stretches of exact zeros, ``[start, end)`` per channel, at least ``min_run`` samples long, found
    block by block (a stretch may span blocks)."""

    def __init__(self, channels: int, min_run: int):
        self.min_run, self.pos = min_run, 0
        self.runs: list[list[tuple[int, int]]] = [[] for _ in range(channels)]
        self.open: list[int | None] = [None] * channels  # start of a stretch still going at the block's end

    def _close(self, c: int, start: int, end: int) -> None:
        if end - start >= self.min_run:
            self.runs[c].append((start, end))

    def update(self, block: np.ndarray) -> None:
        n = len(block)
        for c in range(block.shape[1]):
            z = np.concatenate(([False], block[:, c] == 0, [False]))
            edges = np.flatnonzero(z[1:] != z[:-1])
            carry, self.open[c] = self.open[c], None
            if carry is not None and (not len(edges) or edges[0] != 0):
                self._close(c, carry, self.pos)  # the stretch ended where this block starts
                carry = None
            for s, e in zip(edges[0::2], edges[1::2]):
                start = carry if s == 0 and carry is not None else self.pos + int(s)
                if e == n:
                    self.open[c] = start
                else:
                    self._close(c, start, self.pos + int(e))
        self.pos += n

    def finish(self) -> list[list[tuple[int, int]]]:
        for c, start in enumerate(self.open):
            if start is not None:
                self._close(c, start, self.pos)
        self.open = [None] * len(self.open)
        return self.runs


def scan(source, *, silence_seconds: float = SILENCE_SECONDS, block: int = 1 << 16):
    """``(peak, silences)`` of a source in one streamed pass: per-channel ``max |x|``, and per channel the
    ``[start, end)`` stretches of exact zeros at least ``silence_seconds`` long (or the whole source).
    ``AudioError`` (a ``ValueError``) if a sample is NaN or infinite."""
    top = np.zeros(source.channels, dtype=np.float64)
    runs = _ZeroRuns(source.channels, max(1, min(round(silence_seconds * source.samplerate), source.frames)))
    for b in source.blocks(block):
        if not np.isfinite(b).all():
            where = runs.pos + int(np.flatnonzero(~np.isfinite(b).all(axis=1))[0])
            name = getattr(source, "path", "the waveform")
            raise AudioError(f"{name}: the audio holds NaN or infinite samples (the first at "
                             f"{where / source.samplerate:.3f} s); enhancement needs finite samples")
        np.maximum(top, np.abs(b).max(axis=0), out=top)
        runs.update(b)
    return top, runs.finish()


def keep_silence(blocks: Iterable[np.ndarray], silences: list[list[tuple[int, int]]]) -> Iterator[np.ndarray]:
    """``(n, C)`` blocks with the samples inside ``silences`` (``scan``'s, per channel) set to exact zeros."""
    pos, first = 0, [0] * len(silences)  # per channel: the first stretch not yet behind us
    for b in blocks:
        n = len(b)
        hits = []
        for c, runs in enumerate(silences):
            while first[c] < len(runs) and runs[first[c]][1] <= pos:
                first[c] += 1
            i = first[c]
            while i < len(runs) and runs[i][0] < pos + n:
                hits.append((c, max(runs[i][0], pos) - pos, min(runs[i][1], pos + n) - pos))
                i += 1
        if hits:
            b = b.copy()
            for c, s, e in hits:
                b[s:e, c] = 0.0
        pos += n
        yield b


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
    stage, part = temp_path(path, "float.wav"), temp_path(path, "part")
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


"""Streamed, windowed audio processing (revsde.audio.stream): exactness against whole-signal
processing, cross-fades, lengths, and peak-safe atomic writes."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr

from revsde.audio.stream import (ArraySource, FileSource, collect, crossfade_ramp, keep_silence, peak,
                                 process_stream, scan, windows_count, write_peak_safe)


def noise(channels: int, frames: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((channels, frames))).astype(np.float32)


def run(x, sr, fn, rate, chunk, overlap, block=4096):
    return collect(process_stream(ArraySource(x, sr), fn, rate, chunk, overlap, block=block), x.shape[0])


def test_crossfade_ramps_are_complementary_and_monotone():
    for n in (2, 7, 800):
        r = crossfade_ramp(n)
        assert r.shape == (n,) and np.all(np.diff(r) > 0) and 0 < r[0] < r[-1] < 1
        np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-7)  # incoming + outgoing weights = 1


@pytest.mark.parametrize("frames", [1, 999, 1000, 2999, 3000, 3001, 3400, 3401, 10_000])
def test_windows_cover_the_signal_and_pointwise_fn_passes_exactly(frames):
    """A pointwise fn gives the same result in any windowing: the cross-fades sum to one."""
    x = noise(2, frames)
    calls = []

    def fn(w, i):
        calls.append((i, w.shape))
        return 0.5 * w - 0.01

    y = run(x, 16000, fn, 16000, chunk=1000, overlap=200, block=333)
    np.testing.assert_allclose(y, 0.5 * x - 0.01, atol=2e-7)
    assert [i for i, _ in calls] == list(range(len(calls))) == list(range(windows_count(frames, 1000, 200)))
    assert all(shape[0] == 2 and shape[1] <= 1000 for _, shape in calls)


def test_a_signal_that_fits_is_one_call_on_the_whole():
    x = noise(1, 5000, seed=1)
    rng = np.random.default_rng(5)
    fn = lambda w, i: w + rng.standard_normal(w.shape).astype(np.float32)  # not pointwise: any split would show
    y = run(x, 16000, fn, 16000, chunk=5000, overlap=1000)
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(y, x + rng.standard_normal(x.shape).astype(np.float32))


def test_windows_see_the_true_signal_at_the_processing_rate():
    """Each window is the matching slice of the one-shot resampled signal."""
    x = noise(2, 44100 * 3, seed=2)
    ref = soxr.resample(x.T, 44100, 16000).T
    seen = {}
    run(x, 44100, lambda w, i: seen.setdefault(i, w.copy()), 16000, chunk=16000, overlap=4000)
    hop = 16000 - 4000
    for i, w in seen.items():
        np.testing.assert_array_equal(w, ref[:, i * hop:i * hop + w.shape[1]])
    assert sum(w.shape[1] for w in seen.values()) - 4000 * (len(seen) - 1) == ref.shape[1]


@pytest.mark.parametrize("rates", [(44100, 16000), (16000, 48000), (22050, 16000)])
def test_resampled_identity_equals_one_shot_round_trip(rates):
    sr, rate = rates
    x = noise(2, int(sr * 2.3), seed=3)
    y = run(x, sr, lambda w, i: w, rate, chunk=rate, overlap=rate // 8, block=5000)
    ref = soxr.resample(soxr.resample(x.T, sr, rate), rate, sr).T
    n = min(ref.shape[1], x.shape[1])
    assert y.shape == x.shape
    np.testing.assert_allclose(y[:, :n], ref[:, :n], atol=1e-6)


def test_bad_chunking_is_refused():
    with pytest.raises(ValueError, match="overlap must be an integer in"):
        run(noise(1, 100), 16000, lambda w, i: w, 16000, chunk=100, overlap=50)
    with pytest.raises(ValueError, match="chunk must be a positive"):
        run(noise(1, 100), 16000, lambda w, i: w, 16000, chunk=0, overlap=0)
    with pytest.raises(ValueError, match="returned shape"):
        run(noise(1, 100), 16000, lambda w, i: w[:, :10], 16000, chunk=100, overlap=10)


def test_file_source_blocks_and_peak(tmp_path):
    x = noise(2, 12345, seed=4)
    x[1, 77] = -0.9
    sf.write(tmp_path / "a.flac", x.T, 16000, subtype="PCM_24")
    src = FileSource(tmp_path / "a.flac")
    assert (src.channels, src.frames, src.samplerate, src.subtype) == (2, 12345, 16000, "PCM_24")
    got = collect(src.blocks(1000), 2)
    np.testing.assert_allclose(got, x, atol=2**-22)
    np.testing.assert_allclose(peak(src, 1000), np.abs(got).max(axis=1))


def test_write_peak_safe_scales_only_what_would_clip(tmp_path):
    x = noise(1, 8000, seed=6)
    gain = write_peak_safe(tmp_path / "ok.wav", [x.T], 16000, 1, subtype="PCM_16")
    assert gain == 1.0
    np.testing.assert_allclose(sf.read(tmp_path / "ok.wav", always_2d=True)[0].T, x, atol=2**-15)
    loud = 3 * x / np.abs(x).max()
    gain = write_peak_safe(tmp_path / "loud.flac", [loud[:, :3000].T, loud[:, 3000:].T], 16000, 1)
    back, sr = sf.read(tmp_path / "loud.flac", always_2d=True)
    assert sr == 16000 and sf.info(str(tmp_path / "loud.flac")).subtype == "PCM_16"
    assert gain == pytest.approx(0.99885 / 3, rel=1e-5) and np.abs(back).max() <= 1.0
    np.testing.assert_allclose(back.T, loud * gain, atol=2**-14)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loud.flac", "ok.wav"]  # no temporaries left


def test_write_peak_safe_failure_leaves_target_and_no_temporaries(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"old")

    def blocks():
        yield noise(1, 100).T
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError, match="the model failed"):
        write_peak_safe(target, blocks(), 16000, 1)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    with pytest.raises(ValueError, match="unsupported audio file type"):
        write_peak_safe(tmp_path / "out.mp4", [noise(1, 10).T], 16000, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_memory_does_not_grow_with_the_file_length(tmp_path):
    """Streaming a file through windows and into a peak-safe write holds one window, one block and one
    overlap: numpy's peak allocation (tracemalloc sees it) is the same for 20 s and for 3 min of audio."""
    import tracemalloc

    peaks = []
    for seconds in (20, 180):
        src, dst = tmp_path / f"in{seconds}.flac", tmp_path / f"out{seconds}.flac"
        with sf.SoundFile(str(src), "w", 44100, 2, subtype="PCM_16") as f:
            for i in range(seconds):  # written a second at a time: the test itself never holds the file
                f.write(noise(2, 44100, seed=i).T)
        tracemalloc.start()
        write_peak_safe(dst, process_stream(FileSource(src), lambda w, i: w, 16000, 16000 * 4, 4000), 44100, 2,
                        subtype="PCM_16")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sf.info(str(dst)).frames == seconds * 44100
    assert peaks[1] < 1.2 * peaks[0], peaks
    assert peaks[1] < 30 * 2**20  # a 3-min stereo file is 63 MB as float32; the stream holds a few MB


def _zero_runs_directly(x: np.ndarray, min_run: int) -> list[list[tuple[int, int]]]:
    runs = []
    for row in x:
        found, start = [], None
        for i, v in enumerate(list(row) + [1.0]):
            if v == 0 and start is None:
                start = i
            elif v != 0 and start is not None:
                if i - start >= min_run:
                    found.append((start, i))
                start = None
        runs.append(found)
    return runs


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_scan_finds_the_silent_stretches_across_blocks_and_keep_silence_zeroes_them(block):
    rng = np.random.default_rng(3)
    x = noise(2, 3000, seed=3)
    for c, (s, e) in [(0, (0, 50)), (0, (100, 109)), (0, (500, 1200)), (1, (2990, 3000)), (1, (64, 128))]:
        x[c, s:e] = 0.0
    x[1, rng.integers(0, 3000, 40)] = 0.0  # lone zero crossings
    source = ArraySource(x, 1000)  # 10 ms = 10 samples
    top, silences = scan(source, block=block)
    np.testing.assert_allclose(top, np.abs(x).max(axis=1))
    assert silences == _zero_runs_directly(x, 10)
    assert silences[0][:2] == [(0, 50), (500, 1200)] and (2990, 3000) in silences[1]
    y = noise(2, 3000, seed=4)
    kept = collect(keep_silence((b for b in ArraySource(y, 1000).blocks(block)), silences), 2)
    mask = np.zeros_like(y, dtype=bool)
    for c, runs in enumerate(silences):
        for s, e in runs:
            mask[c, s:e] = True
    assert not kept[mask].any() and np.array_equal(kept[~mask], y[~mask])
    assert peak(source, 100).tolist() == top.tolist()


def test_a_silent_source_is_one_stretch_and_nan_is_refused():
    assert scan(ArraySource(np.zeros((1, 5)), 16000))[1] == [[(0, 5)]]  # shorter than 10 ms: the whole of it
    x = noise(1, 100)
    x[0, 50] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite samples \(the first at 0\.050 s\)"):
        scan(ArraySource(x, 1000))

"""revsde.audio: SGMSE+ features (exact inversion, upstream parity), files and resampling."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from revsde.audio import (EARS_48K, SGMSE_16K, AudioError, SpecConfig, compress, decompress, from_spec,
                          istft, norm_factor, normalize, pad_frames, peak_safe,
                          probe_audio, read_audio, resample, stft, to_spec, write_audio)

torch.set_num_threads(1)


def noise(n, *, channels=None, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shape = (n,) if channels is None else (channels, n)
    return (0.3 * rng.standard_normal(shape)).astype(dtype)


def sine(freq, sr, seconds, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


# ---------------------------------------------------------------- features

@pytest.mark.parametrize("config", [SGMSE_16K, EARS_48K, SGMSE_16K.__class__(window="sqrthann"),
                                    SpecConfig(transform="log"), SpecConfig(transform="none")],
                         ids=["sgmse16k", "ears48k", "sqrthann", "log", "none"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
def test_round_trip_is_exact(config, dtype, tol):
    wave = torch.as_tensor(noise(5003, channels=2), dtype=dtype)
    spec = pad_frames(to_spec(wave, config), config)
    assert spec.dtype == (torch.complex64 if dtype == torch.float32 else torch.complex128)
    assert spec.shape[-1] % 64 == 0
    back = from_spec(spec, wave.shape[-1], config)
    assert back.shape == wave.shape and back.dtype == dtype
    assert torch.max(torch.abs(back - wave)) < tol


def test_drop_padding_false_is_upstreams_istft():
    wave = torch.as_tensor(noise(3000), dtype=torch.float64)
    spec = pad_frames(to_spec(wave))
    upstream = torch.istft(decompress(spec[:, 0]), 510, 128, window=torch.hann_window(510, dtype=torch.float64),
                           center=True, length=3000)
    assert torch.equal(from_spec(spec, 3000, drop_padding=False), upstream)
    # zero padding frames enter the overlap-add normalisation: upstream's tail is off, ours is exact
    assert torch.max(torch.abs(upstream - wave)[0, -100:]) > 1e-3
    assert torch.max(torch.abs(from_spec(spec, 3000) - wave)) < 1e-13


def test_compress_decompress_are_inverse_and_match_formula():
    c = torch.randn(3, 256, 40, dtype=torch.complex128)
    for config in (SGMSE_16K, EARS_48K, SpecConfig(transform="log"), SpecConfig(spec_abs_exponent=1.0)):
        assert torch.allclose(decompress(compress(c, config), config), c, atol=1e-12)
    compressed = compress(c, SGMSE_16K)
    assert torch.allclose(compressed.abs(), 0.15 * c.abs() ** 0.5)
    assert torch.allclose(compressed.angle(), c.angle())
    assert torch.allclose(compress(c, SpecConfig(transform="log")).abs(), 0.15 * torch.log1p(c.abs()))
    assert torch.equal(compress(c, SpecConfig(transform="none")), c)


def test_stft_matches_torch_with_sgmse_settings():
    wave = torch.as_tensor(noise(4000), dtype=torch.float64)
    expected = torch.stft(wave, 510, 128, window=torch.hann_window(510, periodic=True, dtype=torch.float64),
                          center=True, return_complex=True)
    assert torch.equal(stft(wave), expected)
    assert torch.allclose(istft(expected, 4000), wave, atol=1e-12)


def test_shapes():
    spec = to_spec(noise(16000))
    assert spec.shape == (1, 1, 256, 16000 // 128 + 1)
    assert to_spec(noise(16000, channels=3)).shape == (3, 1, 256, 126)
    assert to_spec(torch.zeros(2, 1, 16000)).shape == (2, 1, 256, 126)
    assert to_spec(noise(48000), EARS_48K).shape == (1, 1, 768, 126)
    assert SGMSE_16K.n_frames(32640) == 256 and SGMSE_16K.samples_for_frames(256) == 32640
    with pytest.raises(RuntimeError, match="Padding size"):  # what upstream does with 13 frames
        torch.nn.ReflectionPad2d((0, 51, 0, 0))(torch.zeros(1, 1, 4, 13))
    with pytest.raises(ValueError, match="too short"):
        to_spec(noise(200))
    with pytest.raises(ValueError, match=r"\[B, 1, F, T\]"):
        from_spec(torch.zeros(256, 10, dtype=torch.complex64), 1000)


def test_pad_frames_multiples_and_modes():
    spec = torch.randn(1, 1, 4, 70, dtype=torch.complex64)
    zero = pad_frames(spec)
    assert zero.shape[-1] == 128 and torch.equal(zero[..., :70], spec) and not zero[..., 70:].abs().any()
    assert pad_frames(spec[..., :64]).shape[-1] == 64  # already a multiple: unchanged
    reflect = pad_frames(spec, mode="reflection")
    # Where upstream's ReflectionPad2d works (pad < frames) the result is the same.
    assert torch.equal(reflect, torch.nn.ReflectionPad2d((0, 58, 0, 0))(spec))
    rep = pad_frames(spec, mode="replication")
    assert torch.equal(rep[..., 70:], spec[..., -1:].expand(1, 1, 4, 58))


def test_reflection_pad_does_not_crash_on_short_inputs():
    # 13 frames → 51 to pad; upstream's ReflectionPad2d raises here. Rule: reflect back and forth (period 2(T − 1)).
    spec = torch.arange(13, dtype=torch.float32).reshape(1, 1, 1, 13).to(torch.complex64)
    padded = pad_frames(spec, EARS_48K)
    assert padded.shape[-1] == 64
    frames = padded.real.flatten().tolist()
    assert frames[:26] == list(range(13)) + list(range(11, -1, -1)) + [1]
    assert all(a - b in (1, -1) for a, b in zip(frames[1:], frames[:-1]))  # a mirrored walk, no jumps
    assert pad_frames(spec[..., :1], EARS_48K).real.flatten().tolist() == [0.0] * 64  # one frame: repeated
    assert pad_frames(spec[..., :2], EARS_48K).real.flatten().tolist() == [0.0, 1.0] * 32
    # and a very short file still goes through the whole 48 kHz pipeline
    wave = torch.as_tensor(noise(1000), dtype=torch.float64)
    assert torch.allclose(from_spec(pad_frames(to_spec(wave, EARS_48K), EARS_48K), 1000, EARS_48K)[0], wave,
                          atol=1e-12)


def test_presets_and_from_hparams():
    assert SGMSE_16K.n_freqs == 256 and EARS_48K.n_freqs == 768
    assert (EARS_48K.sample_rate, EARS_48K.hop_length, EARS_48K.spec_factor) == (48000, 384, 0.065)
    assert SpecConfig.from_hparams({}) == SGMSE_16K
    ears = dict(backbone="ncsnpp_48k", n_fft=1534, hop_length=384, spec_factor=0.065, spec_abs_exponent=0.667,
                window="hann", transform_type="exponent", sigma_min=0.1)
    assert SpecConfig.from_hparams(ears) == EARS_48K
    v2 = SpecConfig.from_hparams({"backbone": "ncsnpp_v2"})
    assert (v2.sample_rate, v2.pad_mode) == (16000, "reflection")
    # `sr` is SGMSE's PESQ-loss rate, not the model's: the backbone decides, as in enhancement.py
    assert SpecConfig.from_hparams({"sr": 16000, "backbone": "ncsnpp_48k"}).sample_rate == 48000
    assert SpecConfig.from_hparams({"sr": 22050, "window": "sqrthann"}).sample_rate == 16000
    assert SpecConfig(pad_mode="zero_pad").pad_mode == "zero"  # upstream's name accepted


@pytest.mark.parametrize("changes,match", [
    (dict(window="hamming"), "hann, sqrthann"), (dict(transform="mel"), "exponent, log, none"),
    (dict(pad_mode="circular"), "zero, reflection"), (dict(n_fft=0), "positive integer"),
    (dict(hop_length=300), "at most n_fft // 2"), (dict(center=False), "centred"),
    (dict(spec_factor=0.0), "> 0"), (dict(spec_abs_exponent=float("nan")), "> 0"),
])
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        SpecConfig(**changes)


def test_normalisation():
    y = torch.tensor([0.1, -0.5, 0.25])
    scaled, factor = normalize(y)
    assert factor == 0.5 and torch.equal(scaled * factor, y)
    assert norm_factor(np.zeros(10)) == 1.0  # silence: a no-op, not 0/0
    with pytest.raises(ValueError, match="NaN"):
        norm_factor(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        norm_factor(np.zeros(0))


# ---------------------------------------------------------------- files

@pytest.mark.parametrize("suffix,subtype", [(".wav", "PCM_16"), (".wav", "PCM_24"), (".wav", "FLOAT"),
                                            (".flac", "PCM_16"), (".flac", "PCM_24")])
def test_lossless_round_trip_keeps_subtype(tmp_path, suffix, subtype):
    wave = np.clip(noise(3000, channels=2), -0.99, 0.99)
    path = tmp_path / f"a{suffix}"
    assert write_audio(path, wave, 16000, subtype=subtype) == subtype
    back, sr, info = read_audio(path)
    assert sr == 16000 and back.dtype == np.float32 and back.shape == (2, 3000)
    assert (info.subtype, info.channels, info.frames) == (subtype, 2, 3000)
    step = {"PCM_16": 2.0**-15, "PCM_24": 2.0**-23, "FLOAT": 0.0}[subtype]
    assert np.max(np.abs(back - wave)) <= 1.5 * step  # libsndfile writes ×(2^15 − 1), reads ÷2^15
    # writing it again with the read subtype gives the same kind of file
    write_audio(tmp_path / f"b{suffix}", back, sr, subtype=info.subtype)
    assert read_audio(tmp_path / f"b{suffix}")[2].subtype == subtype


def test_ogg_round_trip_and_subtype_fallback(tmp_path):
    wave = sine(440, 16000, 0.5)
    assert write_audio(tmp_path / "a.ogg", wave, 16000, subtype="PCM_24") == "VORBIS"
    back, sr, info = read_audio(tmp_path / "a.ogg")
    assert sr == 16000 and back.shape == (1, 8000) and info.format == "OGG"
    assert np.sqrt(np.mean((back[0] - wave) ** 2)) < 0.05  # lossy, but close
    assert write_audio(tmp_path / "a.flac", wave, 16000, subtype="FLOAT") == "PCM_24"
    assert write_audio(tmp_path / "d.wav", wave, 16000) == "PCM_16"  # soundfile's (and SGMSE's) default


def test_bad_inputs_give_clear_errors(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        read_audio(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("not audio at all\n" * 10)
    with pytest.raises(AudioError, match="not a readable WAV file"):
        read_audio(tmp_path / "text.wav")
    with pytest.raises(AudioError, match="cannot read"):
        read_audio(tmp_path / "missing.flac")
    with pytest.raises(AudioError, match=r"'\.mp4'.*\.wav, \.flac, \.ogg"):
        read_audio(tmp_path / "clip.mp4")
    with pytest.raises(AudioError, match="unsupported"):
        write_audio(tmp_path / "clip.mp3", np.zeros(10, np.float32), 16000)
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1)), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        read_audio(tmp_path / "zero.wav")
    with pytest.raises(AudioError, match="NaN"):
        write_audio(tmp_path / "nan.wav", np.array([0.0, np.nan]), 16000)
    with pytest.raises(AudioError, match="unknown subtype"):
        write_audio(tmp_path / "x.wav", np.zeros(10), 16000, subtype="PCM_17")
    assert isinstance(AudioError("x"), ValueError)


def test_writes_are_atomic_and_protect_the_input(tmp_path):
    path = tmp_path / "in.wav"
    write_audio(path, noise(1000), 16000)
    before = path.read_bytes()
    with pytest.raises(AudioError, match="refusing to overwrite"):
        write_audio(path, noise(1000, seed=1), 16000, source=path)
    with pytest.raises(AudioError):  # fails inside libsndfile: 1e6 channels
        write_audio(path, np.zeros((1_000_000, 1), np.float32), 16000)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["in.wav"]  # no temporary file left behind
    write_audio(path, noise(1000, seed=1), 16000, source=path, replace_source=True)
    assert path.read_bytes() != before


def test_peak_safe():
    quiet = np.array([0.1, -0.5])
    out, scaled = peak_safe(quiet)
    assert out is quiet and not scaled
    out, scaled = peak_safe(np.array([0.5, -2.0]), margin=0.01)
    assert scaled and np.isclose(np.abs(out).max(), 0.99) and np.isclose(out[0], 0.5 * 0.99 / 2)
    out, scaled = peak_safe(torch.tensor([1.5]))
    assert scaled and isinstance(out, torch.Tensor)


# ---------------------------------------------------------------- resampling

def test_resample_passthrough_lengths_and_frequency():
    wave = sine(1000, 16000, 0.5)
    assert resample(wave, 16000, 16000) is wave
    for sr_in, sr_out in [(16000, 48000), (48000, 16000), (16000, 44100), (44100, 16000), (48000, 44100)]:
        x = sine(1000, sr_in, 0.5)
        y = resample(x, sr_in, sr_out)
        assert y.shape == (round(x.size * sr_out / sr_in),) and y.dtype == np.float32
        spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
        peak_hz = np.argmax(spectrum) * sr_out / y.size
        assert abs(peak_hz - 1000) <= sr_out / y.size
        mid = slice(y.size // 4, 3 * y.size // 4)
        assert np.isclose(np.sqrt(2 * np.mean(y[mid] ** 2)), 0.5, rtol=1e-2)  # amplitude kept
    stereo = resample(noise(1600, channels=2), 16000, 48000)
    assert stereo.shape == (2, 4800)




def test_a_wav_whose_header_promises_more_than_it_holds_is_refused(tmp_path):
    for subtype, channels in (("PCM_16", 1), ("PCM_24", 2), ("FLOAT", 1)):
        whole = tmp_path / f"whole_{subtype}.wav"
        write_audio(whole, noise(16000, channels=channels) * 0.5, 16000, subtype=subtype)
        data = whole.read_bytes()
        cut = tmp_path / f"cut_{subtype}.wav"
        cut.write_bytes(data[:len(data) // 2 + 1])
        for reader in (read_audio, probe_audio):
            with pytest.raises(AudioError, match=r"the WAV file is cut short: its header promises 16000 frames "
                                                 r"\(1\.00 s\) but it holds only \d+ \(0\.\d\d s\)"):
                reader(cut)
        assert probe_audio(whole).frames == 16000  # whole files, with a chunk after the data too
        with open(whole, "ab") as f:
            f.write(b"LIST" + (4).to_bytes(4, "little") + b"INFO")
        assert read_audio(whole)[0].shape == (channels, 16000)


def test_nan_samples_are_refused_when_read(tmp_path):
    wave = noise(100)
    wave[40] = np.inf
    sf.write(str(tmp_path / "inf.wav"), wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="the audio holds NaN or infinite samples"):
        read_audio(tmp_path / "inf.wav")

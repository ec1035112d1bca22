"""SGMSE+'s spectral features: STFT, amplitude compression, frame padding and max-abs normalisation.

The forward pipeline of a speech-enhancement model is ``wave / norm_factor → stft → compress → pad_frames``
and the way back is ``decompress → istft(length=N) → · norm_factor``. Both directions are exact
inverses of each other (the iSTFT with a Hann window, hop ≤ n_fft/2 and ``center=True`` reconstructs
perfectly and compression is a bijection), so a model that returns its input gives back the waveform
to float precision. Settings follow sp-uhh/sgmse (``data_module.py``, ``util/other.py``,
``enhancement.py``); ``SGMSE_16K`` and ``EARS_48K`` are its two published configurations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

WINDOWS = ("hann", "sqrthann")
TRANSFORMS = ("exponent", "log", "none")
PAD_MODES = ("zero", "reflection", "replication")
_PAD_ALIASES = {"zero_pad": "zero", "reflect": "reflection", "replicate": "replication"}
# Backbones whose checkpoints enhance.py pads with reflection and runs at 48 kHz.
_REFLECTION_BACKBONES = ("ncsnpp_48k", "ncsnpp_v2")
_48K_BACKBONES = ("ncsnpp_48k",)


@dataclass(frozen=True)
class SpecConfig:
    """How a waveform becomes a model's complex spectrogram ``[B, 1, F, T]`` with ``F = n_fft // 2 + 1``.

    ``transform``: ``exponent`` (``β|c|^α e^{j∠c}``, α = ``spec_abs_exponent``, β = ``spec_factor``),
    ``log`` (``β log(1 + |c|) e^{j∠c}``) or ``none``. ``pad_multiple``/``pad_mode``: the frame axis is
    right-padded to a multiple of ``pad_multiple`` frames (``zero``, ``reflection`` or ``replication``).
    """

    sample_rate: int = 16000
    n_fft: int = 510
    hop_length: int = 128
    window: str = "hann"
    center: bool = True
    transform: str = "exponent"
    spec_factor: float = 0.15
    spec_abs_exponent: float = 0.5
    pad_multiple: int = 64
    pad_mode: str = "zero"

    def __post_init__(self):
        object.__setattr__(self, "pad_mode", _PAD_ALIASES.get(self.pad_mode, self.pad_mode))
        for name in ("sample_rate", "n_fft", "hop_length", "pad_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"SpecConfig.{name} must be a positive integer (got {value!r})")
        if self.n_fft < 2:
            raise ValueError(f"SpecConfig.n_fft must be at least 2 (got {self.n_fft})")
        if self.hop_length > self.n_fft // 2:
            raise ValueError(f"SpecConfig.hop_length must be at most n_fft // 2 = {self.n_fft // 2} for a "
                             f"Hann window to overlap-add back exactly (got {self.hop_length})")
        if self.window not in WINDOWS:
            raise ValueError(f"SpecConfig.window must be one of {', '.join(WINDOWS)} (got {self.window!r})")
        if self.center is not True:
            raise ValueError("SpecConfig.center must be True: SGMSE asserts a centred STFT, and without it the "
                             "Hann window's zero first sample makes the iSTFT non-invertible at the edges")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"SpecConfig.transform must be one of {', '.join(TRANSFORMS)} "
                             f"(got {self.transform!r})")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"SpecConfig.pad_mode must be one of {', '.join(PAD_MODES)} (got {self.pad_mode!r})")
        for name in ("spec_factor", "spec_abs_exponent"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SpecConfig.{name} must be a finite number > 0 (got {value!r})")

    @property
    def n_freqs(self) -> int:
        """Frequency bins ``F = n_fft // 2 + 1`` (256 for SGMSE's 510, 768 for EARS' 1534)."""
        return self.n_fft // 2 + 1

    def n_frames(self, n_samples: int) -> int:
        """STFT frames of an ``n_samples`` waveform (centred STFT: ``n_samples // hop + 1``)."""
        return n_samples // self.hop_length + 1

    def samples_for_frames(self, n_frames: int) -> int:
        """A waveform length that gives exactly ``n_frames`` frames: ``(n_frames − 1) · hop``, SGMSE's
        training-crop formula (256 frames → 32640 samples at 16 kHz). Up to ``hop − 1`` more still fit."""
        return (n_frames - 1) * self.hop_length

    def window_tensor(self, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """``torch.hann_window(n_fft, periodic=True)``, or its square root for ``sqrthann``."""
        window = torch.hann_window(self.n_fft, periodic=True, dtype=dtype, device=device)
        return window.sqrt() if self.window == "sqrthann" else window

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], **overrides) -> "SpecConfig":
        """The configuration of an SGMSE checkpoint from its ``hyper_parameters`` dict.

        Reads ``n_fft``, ``hop_length``, ``window``, ``spec_factor``, ``spec_abs_exponent`` and
        ``transform_type`` (missing keys take SGMSE's argparse defaults). The sample rate and padding
        follow ``enhancement.py``: backbone ``ncsnpp_48k`` → 48 kHz with reflection padding,
        ``ncsnpp_v2`` → 16 kHz with reflection, anything else 16 kHz with zero padding. A ``sr``
        hyper-parameter is *not* the model's rate (recent SGMSE uses it for the PESQ loss, default 16000,
        even in 48 kHz models) and is ignored; ``overrides`` win over everything.
        """
        hp = dict(hparams)
        backbone = hp.get("backbone", "ncsnpp")
        sample_rate = 48000 if backbone in _48K_BACKBONES else 16000
        fields = dict(
            sample_rate=sample_rate,
            n_fft=int(hp.get("n_fft", 510)),
            hop_length=int(hp.get("hop_length", 128)),
            window=hp.get("window", "hann"),
            transform=hp.get("transform_type", "exponent"),
            spec_factor=float(hp.get("spec_factor", 0.15)),
            spec_abs_exponent=float(hp.get("spec_abs_exponent", 0.5)),
            pad_mode="reflection" if backbone in _REFLECTION_BACKBONES else "zero",
        )
        fields.update(overrides)
        return cls(**fields)


SGMSE_16K = SpecConfig()
EARS_48K = SpecConfig(sample_rate=48000, n_fft=1534, hop_length=384, spec_factor=0.065,
                      spec_abs_exponent=0.667, pad_mode="reflection")


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def stft(wave, config: SpecConfig = SGMSE_16K) -> torch.Tensor:
    """Complex STFT ``[..., N] → [..., F, T]`` (``torch.stft``: centred, reflect-padded, not normalised)."""
    wave = _as_tensor(wave)
    if not wave.is_floating_point():
        raise ValueError(f"stft needs a floating-point waveform (got {wave.dtype})")
    if wave.shape[-1] <= config.n_fft // 2:
        raise ValueError(f"waveform too short for the STFT: {wave.shape[-1]} samples; the centred STFT's "
                         f"reflect padding needs more than n_fft // 2 = {config.n_fft // 2}")
    lead = wave.shape[:-1]
    window = config.window_tensor(dtype=wave.dtype, device=wave.device)
    spec = torch.stft(wave.reshape(-1, wave.shape[-1]), config.n_fft, config.hop_length, window=window,
                      center=True, pad_mode="reflect", normalized=False, return_complex=True)
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: torch.Tensor, length: int, config: SpecConfig = SGMSE_16K) -> torch.Tensor:
    """Inverse of ``stft``: ``[..., F, T] → [..., length]`` (frames beyond ``length`` are cropped away)."""
    if not spec.is_complex():
        raise ValueError(f"istft needs a complex spectrogram (got {spec.dtype})")
    if spec.shape[-2] != config.n_freqs:
        raise ValueError(f"spectrogram has {spec.shape[-2]} frequency bins; n_fft={config.n_fft} gives "
                         f"{config.n_freqs}")
    lead = spec.shape[:-2]
    window = config.window_tensor(dtype=spec.real.dtype, device=spec.device)
    wave = torch.istft(spec.reshape(-1, *spec.shape[-2:]), config.n_fft, config.hop_length, window=window,
                       center=True, normalized=False, length=length)
    return wave.reshape(*lead, length)


def compress(spec: torch.Tensor, config: SpecConfig = SGMSE_16K) -> torch.Tensor:
    """SGMSE's ``spec_fwd``: ``β|c|^α e^{j∠c}`` (exponent), ``β log(1+|c|) e^{j∠c}`` (log) or ``c`` (none)."""
    if config.transform == "exponent":
        if config.spec_abs_exponent != 1:  # as upstream: skip the power (and its rounding) when α = 1
            spec = spec.abs() ** config.spec_abs_exponent * torch.exp(1j * spec.angle())
        return spec * config.spec_factor
    if config.transform == "log":
        return torch.log1p(spec.abs()) * torch.exp(1j * spec.angle()) * config.spec_factor
    return spec


def decompress(spec: torch.Tensor, config: SpecConfig = SGMSE_16K) -> torch.Tensor:
    """SGMSE's ``spec_back``, the inverse of ``compress``."""
    if config.transform == "exponent":
        spec = spec / config.spec_factor
        if config.spec_abs_exponent != 1:
            spec = spec.abs() ** (1 / config.spec_abs_exponent) * torch.exp(1j * spec.angle())
        return spec
    if config.transform == "log":
        spec = spec / config.spec_factor
        return torch.expm1(spec.abs()) * torch.exp(1j * spec.angle())
    return spec


def _batch_wave(wave) -> torch.Tensor:
    wave = _as_tensor(wave)
    if wave.ndim == 1:
        return wave[None]
    if wave.ndim == 3 and wave.shape[1] == 1:
        return wave[:, 0]
    if wave.ndim == 2:
        return wave
    raise ValueError(f"to_spec takes a waveform [N], [B, N] or [B, 1, N] (got shape {tuple(wave.shape)}); "
                     "channels of a [C, N] file are separate batch items")


def to_spec(wave, config: SpecConfig = SGMSE_16K) -> torch.Tensor:
    """Waveform ``[N]``, ``[B, N]`` or ``[B, 1, N]`` → compressed complex spectrogram ``[B, 1, F, T]``.

    Rows of a ``[C, N]`` multichannel file become independent batch items (SGMSE's network is mono).
    No normalisation and no frame padding: see ``normalize`` and ``pad_frames``.
    """
    return compress(stft(_batch_wave(wave), config), config)[:, None]


def from_spec(spec: torch.Tensor, length: int, config: SpecConfig = SGMSE_16K, *,
              drop_padding: bool = True) -> torch.Tensor:
    """Compressed spectrogram ``[B, 1, F, T]`` (padded or not) → waveform ``[B, length]``.

    ``drop_padding`` (default): frames beyond the ``n_frames(length)`` of the waveform are cut before
    the iSTFT, so the pipeline inverts exactly. Upstream (``False``) overlap-adds the padding frames too:
    their windows enter the iSTFT's normalisation, so the last ~n_fft/2 samples are blended with
    whatever the model wrote into the padding (with zero padding and an identity model: attenuated).
    """
    if spec.ndim != 4 or spec.shape[1] != 1:
        raise ValueError(f"from_spec takes a spectrogram [B, 1, F, T] (got shape {tuple(spec.shape)})")
    if drop_padding:
        spec = spec[..., :config.n_frames(length)]
    return istft(decompress(spec[:, 0], config), length, config)


def pad_amount(n_frames: int, multiple: int) -> int:
    """Frames to append so that ``n_frames`` becomes a multiple of ``multiple``."""
    return -n_frames % multiple


def _reflected_index(n_frames: int, n_pad: int, device) -> torch.Tensor:
    # Frame indices of [x, reflect(x)] continued periodically with period 2(T − 1): the same frames
    # as F.pad(mode="reflect") whenever n_pad < T, and a repeated back-and-forth reflection beyond.
    if n_frames == 1:
        return torch.zeros(n_frames + n_pad, dtype=torch.long, device=device)
    period = 2 * (n_frames - 1)
    phase = torch.arange(n_frames + n_pad, device=device) % period
    return torch.where(phase < n_frames, phase, period - phase)


def pad_frames(spec: torch.Tensor, config: SpecConfig = SGMSE_16K, *, multiple: int | None = None,
               mode: str | None = None) -> torch.Tensor:
    """Right-pad the last (frame) axis to a multiple of ``multiple`` frames (default ``config``'s).

    ``zero`` appends zeros; ``replication`` repeats the last frame; ``reflection`` mirrors the last
    frames about the final one, exactly like upstream's ``ReflectionPad2d`` when the pad is shorter
    than the spectrogram. Upstream crashes when it is not (fewer frames than the pad, e.g. a
    0.1-s file); here the reflection then keeps going back and forth (x0 x1 x2 x1 x0 x1 x2 ...),
    and a single frame is repeated. The iSTFT's ``length`` crops the padding away afterwards.
    """
    multiple = config.pad_multiple if multiple is None else multiple
    mode = _PAD_ALIASES.get(mode, mode) if mode is not None else config.pad_mode
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {', '.join(PAD_MODES)} (got {mode!r})")
    if multiple < 1:
        raise ValueError(f"pad multiple must be a positive integer (got {multiple})")
    n_frames = spec.shape[-1]
    n_pad = pad_amount(n_frames, multiple)
    if n_pad == 0:
        return spec
    if n_frames == 0:
        raise ValueError("cannot pad a spectrogram with no frames")
    if mode == "zero":
        return torch.cat([spec, spec.new_zeros(*spec.shape[:-1], n_pad)], dim=-1)
    if mode == "replication":
        return torch.cat([spec, spec[..., -1:].expand(*spec.shape[:-1], n_pad)], dim=-1)
    return spec.index_select(-1, _reflected_index(n_frames, n_pad, spec.device))


def norm_factor(wave, *, eps: float = 0.0) -> float:
    """SGMSE's normalisation factor ``max|y|`` of the noisy waveform; 1.0 for silence (peak ≤ ``eps``),
    so that dividing by it is a no-op instead of 0/0.

    Raises ``ValueError`` for an empty waveform or one holding NaN or ±inf.
    """
    values = _as_tensor(wave).detach()
    if values.numel() == 0:
        raise ValueError("cannot normalise an empty waveform")
    peak = float(values.abs().max())
    if not math.isfinite(peak):
        raise ValueError("the waveform holds NaN or infinite samples")
    return peak if peak > eps else 1.0


def normalize(wave, *, eps: float = 0.0):
    """``(wave / norm_factor(wave), norm_factor)``; multiply the model's output by the factor to undo it."""
    factor = norm_factor(wave, eps=eps)
    return wave / factor, factor

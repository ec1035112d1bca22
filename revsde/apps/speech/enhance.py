"""``revsde enhance``: SGMSE+-style speech enhancement of files, folders and globs, in bounded memory.

Each channel of a file is enhanced on its own (one batched network call for all channels): the file
is resampled to the model's rate, divided by its peak (SGMSE's ``max|y|`` normalisation, per channel
over the whole file), cut into overlapping windows (``chunk_seconds``, ``overlap_seconds``) that are
turned into compressed spectrograms, padded to the network's frame multiple and sampled from the
OUVE prior ``y + σ(1) z`` with any revsde sampler; the enhanced windows are cross-faded, scaled back,
resampled to the file's own rate and written atomically (peak-safe: scaled down only if they would
clip) in the input's format and subtype. Memory holds one window whatever the file's length.

Digital silence stays silent: stretches of exact zeros at least ``audio.stream.SILENCE_SECONDS`` (10 ms)
long, and a file or channel of nothing but zeros, come back as exact zeros (``scan`` finds them in the
first pass, ``keep_silence`` restores them at the file's own rate). The model alone cannot give zeros:
sampling starts from ``y + σ(1) z`` with ``y = 0`` and the network removes that noise only up to its
error (about 0.01 in the compressed spectrogram for the built-in model), which the decompression
``|X| = (|X̃| / 0.15)²`` turns into a hiss near −60 dBFS; a silent file also gets no normalisation
gain (its peak is 0) that would scale the hiss away. Other samples are untouched by this rule.

``--sampler sgmse`` reproduces SGMSE+'s PC sampler exactly: ``N = nfe / 2`` points
``linspace(1, t_eps, N)`` and a last step from ``t_eps`` to 0, reverse diffusion + annealed Langevin
(snr 0.5), noise-free last step. The other samplers integrate from 1 to ``t_eps`` on their own grid
(``mrs``: the MR Sampler on OUVE, log-SNR grid).
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from revsde.audio.features import SpecConfig, from_spec, pad_frames, to_spec
from revsde.audio.io import SUFFIXES, AudioError
from revsde.audio.stream import (ArraySource, FileSource, collect, keep_silence, process_stream, scan, windows_count,
                            write_peak_safe)
from revsde.model import ScoreModel
from revsde.philox import PhiloxGenerator, as_keys
from revsde.sde.ouve import OUVESDE
from revsde.grids import sgmse_grid
from revsde.solve import sample
from revsde.io.batch import MAX_NFE, BatchReport, check_nfe, fixed_step_sampler, plan_batch, run_batch
from revsde.io.batch import run_settings as batch_run_settings

BUILTIN = "speech_enhance.safetensors"


def builtin_path() -> Path:
    """Where the built-in model lives (``revsde/weights/speech_enhance.safetensors``)."""
    return Path(__file__).resolve().parents[2] / "weights" / BUILTIN


@dataclass
class SpeechModel:
    """A score model on OUVE with the feature settings it was trained with."""

    model: ScoreModel
    spec: SpecConfig
    description: str
    #: the MR Sampler setting its model card found best, ``{"nfe": N, "options": {...}}`` (None: no card)
    recommended: dict | None = None

    @property
    def sample_rate(self) -> int:
        return self.spec.sample_rate


DEFAULT_NFE = {"mrs": 10, "sgmse": 60}
#: the network's memory budget per call when none is given (as ``revsde restore``'s): channels of a window
#: beyond it are enhanced in groups, and a window longer than it allows is shortened
DEFAULT_MAX_MEMORY = 768 * 2**20


def bytes_per_bin(speech: SpeechModel) -> int:
    """The network's working memory per spectrogram bin (frequency × frame) of one channel, an upper
    estimate: the built-in NCSN++ (nf 16) measured 1891 B (marginal peak RSS between 256 and 512 frames on
    CPU), bounded here by ``128·nf``; a network of another kind is taken to be SGMSE+'s nf = 128."""
    from revsde.nets.ncsnpp import NCSNpp

    net = getattr(speech.model, "net", None)
    nf = next((m.nf for m in net.modules() if isinstance(m, NCSNpp)), 128) if isinstance(net, torch.nn.Module) else 128
    return 128 * nf


def window_bytes(speech: SpeechModel, chunk: int) -> int:
    """One channel's network memory for a window of ``chunk`` samples (frames padded as the model pads)."""
    spec = speech.spec
    frames = -(-(chunk // spec.hop_length + 1) // spec.pad_multiple) * spec.pad_multiple
    return (spec.n_fft // 2 + 1) * frames * bytes_per_bin(speech)


def run_settings(speech: SpeechModel, sampler: str | None = None, nfe: int | None = None,
                 options: dict | None = None) -> tuple[str, int, dict, str]:
    """``(sampler, nfe, options, origin)`` of a run. What the caller gives wins; with no sampler (or
    ``mrs``), no NFE and no options, the model's ``recommended`` MR Sampler setting (its card's best);
    otherwise 10 NFE (60 for ``sgmse``, its published setting). ``origin`` says which, for the log."""
    recommended = {"sampler": "mrs", **speech.recommended} if speech.recommended else None
    return batch_run_settings(recommended, sampler, nfe, options, default_nfe=DEFAULT_NFE,
                              card="the model card's best MR Sampler setting")


def load_speech_model(model: str = "builtin", *, device=None, weights: str = "ema") -> SpeechModel:
    """``--model``: ``"builtin"``, a ``.safetensors`` exported by ``revsde train speech``, or an official
    SGMSE+ Lightning ``.ckpt`` (read without running pickled code; EMA weights unless ``weights="raw"``)."""
    device = torch.device(device or "cpu")
    if model == "builtin":
        path = builtin_path()
        if not path.is_file():
            raise ValueError(f"this install has no built-in speech model ({path}); give --model PATH")
    else:
        path = Path(model)
        if not path.is_file():
            raise ValueError(f"--model {model!r} is neither 'builtin' nor a file")
    if path.suffix == ".safetensors":
        from revsde.apps.speech.model import load_weights, steps_text

        score, spec, config = load_weights(path)
        score.net.to(device)
        net = config["net"]
        description = (f"{path.name}: NCSN++ nf {net.get('nf')} ch_mult {tuple(net.get('ch_mult', ()))}, "
                       f"{config['prediction']} prediction, {steps_text(config)}")
        return SpeechModel(score, spec, description, config.get("recommended"))
    if path.suffix != ".ckpt":
        raise ValueError(f"--model {path}: expected a revsde .safetensors export or an SGMSE+ .ckpt")
    from revsde.nets.sgmse import load_sgmse_checkpoint

    ckpt = load_sgmse_checkpoint(path, weights=weights, map_location=device)
    return SpeechModel(ckpt.score_model(), ckpt.spec, f"{path.name}: {ckpt.describe()}")


class Enhancer:
    """Enhances normalised waveform windows with a ``SpeechModel``; ``nfe`` counts network calls.

    ``final_denoise`` (default True; not for ``sgmse``, whose last step already goes noise-free to 0):
    the sampler runs to ``t_eps`` with ``nfe − 1`` evaluations and one more gives the data prediction
    x̂₀ there, removing the ``σ(t_eps) z`` (0.019 for SGMSE+'s OUVE) the state still carries, as
    SGMSE+'s last step and Song et al.'s final denoising do.
    """

    def __init__(self, speech: SpeechModel, *, sampler: str = "mrs", nfe: int = 10, seed: int = 0,
                 options: dict | None = None, device=None, progress: bool = False, final_denoise: bool = True,
                 max_memory: int | None = None):
        smp = fixed_step_sampler(sampler, options)
        self.final_denoise = bool(final_denoise) and smp.name != "sgmse"
        k, extra = smp.evals_per_step, int(self.final_denoise)
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe - extra < k or (nfe - extra) % k:
            if not extra:
                rule = f"a positive multiple of {k} for sampler {sampler!r}, which evaluates the network {k} time(s) per step"
            elif k == 1:
                rule = f"an integer >= 2 for sampler {sampler!r}: one evaluation per step plus the final denoising one"
            else:
                rule = (f"1 + a positive multiple of {k} for sampler {sampler!r}: {k} evaluations per step plus the "
                        "final denoising one")
            raise ValueError(f"--nfe must be {rule} (got {nfe!r})")
        check_nfe(nfe)
        self.speech, self.sampler, self.seed = speech, smp, seed
        self.steps = (nfe - extra) // k
        self.device = torch.device(device or "cpu")
        self.model, self.grid = speech.model, None
        if smp.name == "sgmse":
            sde = speech.model.sde
            if not isinstance(sde, OUVESDE):
                raise ValueError("sampler 'sgmse' runs on the OUVE SDE")
            self.model = copy.copy(speech.model)  # the same net on the SDE continued to t = 0
            self.model.sde = OUVESDE(sde.theta, sde.sigma_min, sde.sigma_max, t_min=0.0)
            self.grid = sgmse_grid(self.steps, sde.t_min, sde.t_max)
        self.progress, self.nfe, self.max_memory = progress, 0, max_memory

    def generators(self, index: int, channels: int) -> PhiloxGenerator:
        """One Philox stream per channel of window ``index``, keyed by (seed, index, channel) without
        collisions between windows and channels (up to 4099 channels); on the CPU, so that results repeat
        on any device."""
        return PhiloxGenerator(as_keys((self.seed * 1_000_003 + index) * 4099 + b for b in range(channels)))

    def spectrogram(self, y: torch.Tensor, generators: PhiloxGenerator) -> torch.Tensor:
        """Sample the clean spectrogram ``[B, 1, F, T]`` given the noisy one ``y`` (frames padded)."""
        with torch.no_grad():
            return self.unrolled(y, generators)

    def unrolled(self, y: torch.Tensor, generator) -> torch.Tensor:
        """``spectrogram`` with autograd on: the whole sampling run is differentiable in the network's
        weights (``train_speech``'s ``crp`` loss trains through it). ``generator``: a ``torch.Generator``, one
        per item, or a ``PhiloxGenerator``."""
        sol = sample(self.model, y.shape, mu=y, sampler=self.sampler, steps=None if self.grid is not None else self.steps,
                     grid=self.grid, generator=generator, device=self.device, progress=self.progress)
        self.nfe += sol.nfe
        if not self.final_denoise:
            return sol.x
        t_eps = torch.full((y.shape[0],), self.model.sde.t_min, dtype=torch.float64, device=self.device)
        self.nfe += 1
        return self.model(sol.x, t_eps, y).data

    def window(self, wave: np.ndarray, index: int) -> np.ndarray:
        """Enhance a ``(C, n)`` window of normalised samples at the model's rate: channels batched, in
        groups whose network memory fits ``max_memory`` (each channel's noise is its own either way)."""
        spec = self.speech.spec
        n = wave.shape[1]
        short = max(0, spec.n_fft - n)  # the STFT's reflect padding needs more than n_fft/2 samples
        y = torch.from_numpy(np.pad(wave, ((0, 0), (0, short)))).to(self.device)
        Y = pad_frames(to_spec(y, spec), spec)
        generators = self.generators(index, wave.shape[0])
        group = len(generators) if self.max_memory is None else max(1, self.max_memory // window_bytes(self.speech, n))
        X = torch.cat([self.spectrogram(Y[i:i + group], generators[i:i + group]) for i in range(0, len(Y), group)])
        x = from_spec(X, n + short, spec)[:, :n]
        return x.float().cpu().numpy()


def check_seconds(chunk_seconds: float, overlap_seconds: float) -> None:
    """The window settings' own rules (``chunking`` then fits them to a model's frames)."""
    if not (isinstance(chunk_seconds, (int, float)) and math.isfinite(chunk_seconds) and chunk_seconds > 0):
        raise ValueError(f"--chunk-seconds must be a positive number (got {chunk_seconds!r})")
    if not (isinstance(overlap_seconds, (int, float)) and 0 <= 2 * overlap_seconds < chunk_seconds):
        raise ValueError(f"--overlap-seconds must lie in [0, chunk/2) = [0, {chunk_seconds / 2:g}) "
                         f"(got {overlap_seconds!r})")


def check_run(*, sampler: str | None = None, nfe: int | None = None, options: dict | None = None,
              chunk_seconds: float = 8.0, overlap_seconds: float = 0.5) -> None:
    """What can be checked of a run before its model is loaded: the sampler and its options, ``nfe`` (when
    given) at most ``batch.MAX_NFE``, and the window settings (``Enhancer`` checks the rest)."""
    fixed_step_sampler(sampler or "mrs", options)
    if isinstance(nfe, int) and nfe > MAX_NFE:
        check_nfe(nfe)
    check_seconds(chunk_seconds, overlap_seconds)


def chunking(speech: SpeechModel, chunk_seconds: float, overlap_seconds: float,
             max_memory: int | None = None) -> tuple[int, int]:
    """``(chunk, overlap)`` in samples at the model's rate: the chunk a whole number of frame multiples
    (``(64k − 1)·hop`` samples make exactly ``64k`` frames, so no frame is padding), the overlap whole hops.
    With ``max_memory`` (bytes) a window whose one channel would need more is shortened to the longest that
    fits (``window_bytes``); ``ValueError`` if not even one frame multiple fits."""
    spec = speech.spec
    check_seconds(chunk_seconds, overlap_seconds)
    frames = chunk_seconds * spec.sample_rate / spec.hop_length
    k = max(1, round(frames / spec.pad_multiple))
    if max_memory is not None:
        per_multiple = window_bytes(speech, (spec.pad_multiple - 1) * spec.hop_length)
        if per_multiple > max_memory:
            raise ValueError(f"--max-memory {max_memory} bytes is below one window of {spec.pad_multiple} frames "
                             f"of this model ({per_multiple} bytes)")
        k = min(k, max_memory // per_multiple)
    chunk = (k * spec.pad_multiple - 1) * spec.hop_length
    overlap = round(overlap_seconds * spec.sample_rate / spec.hop_length) * spec.hop_length
    if 2 * overlap >= chunk:
        raise ValueError(f"--overlap-seconds {overlap_seconds:g} is too long for chunks of {chunk / spec.sample_rate:.2f} s")
    return chunk, overlap


def _normalised(enhancer: Enhancer, norms: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    scale = np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]
    return lambda w, i: enhancer.window(w / scale, i) * scale


def enhance_array(enhancer: Enhancer, wave: np.ndarray, sample_rate: int, *, chunk_seconds: float = 8.0,
                  overlap_seconds: float = 0.5) -> np.ndarray:
    """Enhance a ``(C, N)`` (or ``(N,)``) waveform at ``sample_rate``; returns the same shape (not peak-limited)."""
    wave = np.asarray(wave, dtype=np.float32)
    source = ArraySource(wave, sample_rate)
    chunk, overlap = chunking(enhancer.speech, chunk_seconds, overlap_seconds, enhancer.max_memory)
    top, silences = scan(source)
    blocks = process_stream(source, _normalised(enhancer, top), enhancer.speech.sample_rate, chunk, overlap)
    out = collect(keep_silence(blocks, silences), source.channels)
    return out[0] if wave.ndim == 1 else out


def enhance_file(enhancer: Enhancer, src, dst, *, chunk_seconds: float = 8.0, overlap_seconds: float = 0.5,
                 progress: bool = False) -> int:
    """Enhance one file into ``dst`` (format from its suffix, the input's subtype kept where it fits),
    streamed; returns the network evaluations spent."""
    from tqdm.auto import tqdm

    source = FileSource(src)
    chunk, overlap = chunking(enhancer.speech, chunk_seconds, overlap_seconds, enhancer.max_memory)
    top, silences = scan(source)  # AudioError for NaN or infinite samples
    fn = _normalised(enhancer, top)
    frames = math.ceil(source.frames * enhancer.speech.sample_rate / source.samplerate)
    nfe_before = enhancer.nfe
    with tqdm(total=windows_count(frames, chunk, overlap), desc=Path(src).name, unit="window", leave=False,
              disable=not progress) as bar:
        blocks = process_stream(source, fn, enhancer.speech.sample_rate, chunk, overlap,
                                on_window=lambda i: bar.update(1))
        write_peak_safe(dst, keep_silence(blocks, silences), source.samplerate, source.channels,
                        subtype=source.subtype)
    return enhancer.nfe - nfe_before


def plan(inputs: list[str], out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """The ``(input, output)`` pairs of an enhance run (``batch.plan_batch``: ``out_dir`` usable, inputs
    found, no input overwritten)."""
    return plan_batch(inputs, out_dir, set(SUFFIXES), "audio files")


def enhance_files(inputs: list[str], out_dir: str | os.PathLike, speech: SpeechModel, *, sampler: str = "mrs",
                  nfe: int = 10, seed: int = 0, options: dict | None = None, chunk_seconds: float = 8.0,
                  overlap_seconds: float = 0.5, max_memory: int | None = DEFAULT_MAX_MEMORY, skip_existing: bool = False,
                  device=None, progress: bool = False, log: Callable[[str], None] | None = None) -> BatchReport:
    """Enhance every audio file of ``inputs`` into ``out_dir`` (same relative names and formats); everything
    that can be checked is checked before the first file (``chunking``, ``Enhancer``, ``plan``).
    ``max_memory``: the network's budget per call (``chunking`` shortens longer windows, ``Enhancer``
    groups channels); ``None``: no limit."""
    chunking(speech, chunk_seconds, overlap_seconds, max_memory)
    enhancer = Enhancer(speech, sampler=sampler, nfe=nfe, seed=seed, options=options, device=device,
                        max_memory=max_memory)
    pairs = plan(inputs, out_dir)

    def process(path: Path, target: Path) -> int:
        return enhance_file(enhancer, path, target, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                            progress=progress)

    return run_batch(pairs, process, BatchReport("enhanced"), expected=(AudioError, OSError),
                     skip_existing=skip_existing, progress=progress, log=log, desc="enhance", unit="file")

"""Training the built-in speech-enhancement model: SGMSE+ (Richter et al. 2023) scaled to a CPU.

Data: clean espeak-ng speech and noisy mixtures from ``speech_data`` (``SpeechPairs``: random crops of
``frames`` STFT frames, SNR −5…15 dB), each pair divided by the noisy crop's ``max|y|`` and turned
into SGMSE+'s compressed complex spectrograms (``revsde.audio``: n_fft 510, hop 128, ``0.15·|c|^0.5``).
SDE: OUVE (θ 1.5, σ_min 0.05, σ_max 0.5). Per example ``t ~ U[t_eps, 1]`` and
``x_t = e^{−θt} x_0 + (1 − e^{−θt}) y + σ_t z`` with ``z`` circular complex normal (E|z|² = 1).
Loss (``LOSSES``): ``sgmse`` is SGMSE+'s ``½ Σ |σ_t s_θ(x_t, y, t) + z|²`` per example (mean over the
batch), i.e. ``½ Σ |ε̂ − z|²`` with ``ε̂ = −σ_t s_θ``; ``denoiser`` is SGMSE's denoiser objective
``½ Σ |D − μ_t|²`` with ``D = x_t + σ_t² s_θ`` (weighting 1); ``data`` is SGMSE's data-prediction MSE
``½ Σ |x̂_0 − x_0|²`` (without its optional L1 and PESQ terms), ``x̂_0`` read from the same score;
``crp`` trains through the sampler instead (Lay et al. 2023's second stage, "correcting the reverse
process"): ``revsde enhance``'s whole run (``CRP_DEFAULT``: the MR Sampler's SDE at 2 NFE, the step from
t = 1 and the final data prediction) is unrolled from the prior with autograd on and its output compared
with the clean crop, by ``−SI-SDR`` of the waveforms (``sisdr``) or ``½ Σ |x̂ − x_0|²`` (``data``).
Whatever the loss, the network may output the score (SGMSE+'s choice, with its ``÷t`` output
scaling), or noise / data / velocity, converted exactly by ``Prediction``, so every model samples alike.

The network is NCSN++ (``revsde.nets.ncsnpp.NCSNpp``, SGMSE+'s backbone) at a small width.
Optimiser Adam as SGMSE+ (no gradient clipping), with a cosine learning-rate decay for the short
run and SGMSE+'s EMA 0.999; checkpoints resume bit for bit (``trainer.fit``). ``speech_weights``
exports the EMA weights and loads them back.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from revsde.audio.features import SGMSE_16K, SpecConfig, to_spec
from revsde.model import ScoreModel
from revsde.sde.ouve import OUVESDE
from revsde.apps.exports import checkpoint_config, load_checkpoint, read_export_config
from revsde.apps.speech.model import (DEFAULT_NOISES, FORMAT, RESUME_DEFAULTS, SMALL_NET, SpeechNet,  # noqa: F401
                                      build_net, build_sde, score_model)
from revsde.apps.trainer import TrainResult, check_positive_ints, fit, init_provenance

PREDICTIONS = ("score", "noise", "data", "velocity")
LOSSES = ("sgmse", "denoiser", "data", "crp")
#: what the ``crp`` loss compares: the output's waveform by SI-SDR, or its spectrogram by squared error
CRP_OBJECTIVES = ("sisdr", "data")
#: the ``crp`` loss's run: ``revsde enhance``'s sampler, NFE (final data prediction included) and options
CRP_DEFAULT = {"sampler": "mrs", "nfe": 2, "options": {"stochastic": True}, "objective": "sisdr"}
RESUME_KEYS = ("loss", "prediction", "net", "batch", "frames", "lr", "ema", "seed", "sde", "spec", "corpus", "t_eps",
               "t_high", "init", "noises", "crp")
#: ``t_high``'s examples have t ~ U[T_HIGH_FROM·t_max, t_max]
T_HIGH_FROM = 0.9
#: what ``init_from`` must share with the run it starts (the rest of its config is kept as provenance)
INIT_MATCH = ("prediction", "arch", "net", "sde", "spec")
INIT_KEPT = ("loss", "batch", "frames", "lr", "lr_floor", "steps", "lr_history", "t_high", "corpus", "noises", "crp",
             "seed", "init")


def spectrogram_pair(clean: torch.Tensor, noisy: torch.Tensor, spec: SpecConfig = SGMSE_16K):
    """``(x0, y)`` complex ``[B, 1, F, T]`` from ``(B, N)`` waveforms, each pair divided by max|noisy|."""
    norm = noisy.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
    return to_spec(clean / norm, spec), to_spec(noisy / norm, spec)


def check_t_high(t_high: float) -> float:
    if isinstance(t_high, bool) or not isinstance(t_high, (int, float)) or not 0 <= t_high <= 1:
        raise ValueError(f"t_high is the fraction of examples drawn near t = 1: a number in [0, 1] (got {t_high!r})")
    return float(t_high)


def sample_times(b: int, generator: torch.Generator, t_eps: float, t_max: float, t_high: float = 0.0) -> torch.Tensor:
    """``b`` float64 times ``~ U[t_eps, t_max]``; with ``t_high > 0`` each is drawn instead, with that
    probability, from ``U[T_HIGH_FROM·t_max, t_max]``, where the few-NFE samplers take their first and
    largest step (``t_high = 0`` draws exactly what a run without it drew)."""
    t = t_eps + (t_max - t_eps) * torch.rand(b, generator=generator, dtype=torch.float64)
    if t_high > 0:
        near = torch.rand(b, generator=generator, dtype=torch.float64) < t_high
        high = t_max * (T_HIGH_FROM + (1 - T_HIGH_FROM) * torch.rand(b, generator=generator, dtype=torch.float64))
        t = torch.where(near, high, t)
    return t


def sgmse_loss(model: ScoreModel, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
               t_eps: float, loss: str = "sgmse", t_high: float = 0.0) -> torch.Tensor:
    """The training loss at ``t ~ U[t_eps, 1]`` (``t_high``: see ``sample_times``), mean over the batch
    of a per-example sum: ``sgmse`` ``½ Σ |σ_t s_θ + z|²`` (= ``½ Σ |ε̂ − z|²``), ``denoiser``
    ``½ Σ |D − μ_t|²`` (``D = x_t + σ_t² s_θ``), ``data`` ``½ Σ |x̂_0 − x_0|²``. The noise is drawn
    from ``generator`` (a CPU one) and moved to the data's device."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)} (got {loss!r})")
    sde = model.sde
    b = x0.shape[0]
    t = sample_times(b, generator, t_eps, sde.t_max, t_high).to(x0.device)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)  # complex: E|z|² = 1
    mean, std = sde.marginal(x0, t, y)
    x_t = mean + std * z
    pred = model(x_t, t, y)
    if loss == "sgmse":
        err = pred.noise - z
    elif loss == "denoiser":  # D − μ_t = (x_t − σ_t ε̂) − (x_t − σ_t z)
        err = std * (z - pred.noise)
    else:
        err = pred.data - x0
    return 0.5 * err.abs().pow(2).reshape(b, -1).sum(1).mean()


def si_sdr_db(ref: torch.Tensor, est: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SI-SDR in dB per row of ``(B, N)`` waveforms, differentiable (``metrics.speech.si_sdr``'s formula,
    ``eps`` keeping a silent row finite)."""
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * ref
    return 10 * torch.log10(target.pow(2).sum(-1) + eps) - 10 * torch.log10((target - est).pow(2).sum(-1) + eps)


def waveform(x: torch.Tensor, spec: SpecConfig) -> torch.Tensor:
    """``(B, N)`` waveforms of compressed spectrograms ``[B, 1, F, T]`` (``N = (T − 1)·hop``, a training
    crop's length), with a decompression whose gradient stays finite at ``c = 0`` (``c·|c|^(1/α − 1)``
    for SGMSE+'s α ≤ 1 instead of ``|c|^(1/α) e^{j∠c}``)."""
    from revsde.audio.features import decompress, istft

    c = x[:, 0]
    if spec.transform == "exponent" and spec.spec_abs_exponent <= 1:
        c = c / spec.spec_factor
        c = c * c.abs() ** (1 / spec.spec_abs_exponent - 1)
    else:
        c = decompress(c, spec)
    return istft(c, (x.shape[-1] - 1) * spec.hop_length, spec)


def check_crp_objective(objective: str) -> str:
    if objective not in CRP_OBJECTIVES:
        raise ValueError(f"the crp objective must be one of {', '.join(CRP_OBJECTIVES)} (got {objective!r})")
    return objective


def check_crp(crp: dict | None) -> dict:
    """The ``crp`` loss's settings: ``CRP_DEFAULT`` updated with ``crp``'s (sampler, nfe, options, objective)."""
    if crp is not None and not isinstance(crp, dict):
        raise ValueError(f"crp must be a dict with keys {', '.join(CRP_DEFAULT)} (got {crp!r})")
    unknown = sorted(set(crp or {}) - set(CRP_DEFAULT))
    if unknown:
        raise ValueError(f"crp has unknown setting(s) {', '.join(unknown)}: valid are {', '.join(CRP_DEFAULT)}")
    crp = {**CRP_DEFAULT, **(crp or {})}
    check_crp_objective(crp["objective"])
    if not isinstance(crp["options"], dict):
        raise ValueError(f"the crp sampler options must be a dict (got {crp['options']!r})")
    return {**crp, "options": dict(crp["options"])}


def crp_enhancer(model: ScoreModel, spec: SpecConfig, crp: dict, device):
    """The ``Enhancer`` the ``crp`` loss unrolls (its checks name a bad sampler, NFE or option)."""
    from revsde.apps.speech.enhance import Enhancer, SpeechModel

    return Enhancer(SpeechModel(model, spec, "training"), sampler=crp["sampler"], nfe=crp["nfe"],
                    options=crp["options"], device=device)


def crp_loss(enhancer, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator, objective: str,
             spec: SpecConfig) -> torch.Tensor:
    """The ``crp`` loss: the enhancer's run from the prior at ``y`` (noise from ``generator``), with
    gradients through every network call, against the clean ``x0``: mean over the batch of ``−SI-SDR``
    (dB) of the waveforms (``sisdr``) or of ``½ Σ |x̂ − x_0|²`` (``data``)."""
    check_crp_objective(objective)
    x_hat = enhancer.unrolled(y, generator)
    if objective == "data":
        return 0.5 * (x_hat - x0).abs().pow(2).reshape(x0.shape[0], -1).sum(1).mean()
    return -si_sdr_db(waveform(x0, spec), waveform(x_hat, spec)).mean()


class _NumpyRng:
    """A numpy Generator's state for a checkpoint (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, rng):
        self.rng = rng

    def state_dict(self) -> dict:
        return {"state": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["state"])


def train_speech(out_dir="out/train/speech", steps: int = 10000, *, batch: int = 8, frames: int = 128,
                 lr: float = 5e-4, lr_floor: float = 1e-6, prediction: str = "velocity", loss: str = "sgmse",
                 net_config: dict | None = None,
                 corpus_size: int = 600, corpus_root=None, ema: float = 0.999, threads: int | None = 1,
                 checkpoint_every: int = 250, log_every: int = 50, seed: int = 0, progress: bool = True,
                 resume: bool = True, stop_at: int | None = None, net: nn.Module | None = None,
                 corpus=None, sde: OUVESDE | None = None, spec: SpecConfig = SGMSE_16K, t_high: float = 0.0,
                 init_from=None, device: str | torch.device = "cpu", noises=DEFAULT_NOISES,
                 crp: dict | None = None) -> TrainResult:
    """Train (or resume) the speech model for ``steps`` steps in total; see the module docstring.

    ``net_config`` are ``NCSNpp`` arguments (default ``SMALL_NET``); ``net`` replaces the network
    (any module called ``net(x, time, mu=y)``). ``corpus`` replaces the espeak-ng training corpus of
    ``corpus_size`` utterances (synthesised into ``corpus_root`` on first use). ``t_high``: the
    fraction of examples trained near t = 1 (``sample_times``). ``init_from``: a training checkpoint
    (its EMA weights) or an exported ``.safetensors`` to start from, i.e. a fine-tune with a fresh
    optimiser and schedule; it must share ``INIT_MATCH`` with this run, and its settings are kept in
    the config under ``init``. ``device``: where the network trains (the data and the random draws
    are made on the CPU, so a run's examples are the same on every device). ``noises``: the noise
    kinds of the training mixtures, each as often (names or a comma-separated string; the default mix
    ``DEFAULT_NOISES`` and ``speech_noise.EXTRA_TRAIN_NOISES`` may be used, the test-only ones not).
    ``crp``: the ``crp`` loss's settings over ``CRP_DEFAULT`` (only with ``loss="crp"``, which trains
    through the sampler: meant as a fine-tune, ``init_from`` a model trained with another loss).
    """
    from revsde.apps.speech.data import SpeechPairs, crop_length, load_corpus

    check_positive_ints(steps=steps, batch=batch, frames=frames, corpus_size=corpus_size)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)} (got {prediction!r})")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)} (got {loss!r})")
    if frames % spec.pad_multiple:
        raise ValueError(f"frames must be a multiple of {spec.pad_multiple} (the network's size step; got {frames})")
    t_high = check_t_high(t_high)
    noises = check_noises(noises)
    if loss != "crp" and crp is not None:
        raise ValueError(f"crp settings are for loss='crp' (got loss={loss!r})")
    crp = check_crp(crp) if loss == "crp" else None
    device = check_device(device)
    if threads is not None:
        torch.set_num_threads(int(threads))
    sde = build_sde() if sde is None else sde
    net_config = dict(SMALL_NET if net_config is None else net_config)
    torch.manual_seed(seed)  # the network's initialisation
    if net is None:
        net = SpeechNet(build_net(net_config))
        arch = "NCSNpp"
    else:
        arch, net_config = type(net).__name__, {}
    config = {"format": FORMAT, "loss": loss, "prediction": prediction, "arch": arch,
              "net": {k: list(v) if isinstance(v, tuple) else v for k, v in net_config.items()},
              "batch": batch, "frames": frames, "lr": lr, "lr_floor": lr_floor, "ema": ema, "seed": seed,
              "steps": steps, "sde": sde.config(), "t_eps": sde.t_min, "spec": asdict(spec),
              "corpus": corpus_size if corpus is None else f"custom:{len(corpus)}", "t_high": t_high, "init": None,
              "noises": list(noises), "crp": crp}
    if init_from is not None:
        weights, config["init"] = load_init(init_from, config)
        net.load_state_dict(weights)  # a resumed run then replaces them with its checkpoint's
    net.to(device)
    model = score_model(net, sde, prediction)
    enhancer = crp_enhancer(model, spec, crp, device) if crp else None  # checks its settings before any work

    corpus = load_corpus("train", corpus_size, corpus_root, progress=progress) if corpus is None else corpus
    pairs = SpeechPairs(corpus, crop_length(frames, spec.hop_length), batch, noises=noises, seed=seed, output="torch")
    generator = torch.Generator().manual_seed(seed)

    def batch_loss():
        clean, noisy = next(pairs)
        x0, y = spectrogram_pair(clean.to(device), noisy.to(device), spec)
        if enhancer is not None:
            return crp_loss(enhancer, x0, y, generator, crp["objective"], spec)
        return sgmse_loss(model, x0, y, generator, sde.t_min, loss, t_high)

    return fit(net, batch_loss, config, out_dir, steps, generator=generator, lr=lr, lr_floor=lr_floor, ema=ema,
               optimizer="adam", clip=None, checkpoint_every=checkpoint_every, log_every=log_every,
               progress=progress, resume=resume, resume_keys=RESUME_KEYS, config_defaults=RESUME_DEFAULTS,
               stop_at=stop_at, extra={"pairs": _NumpyRng(pairs.rng)}, desc="train speech")


def check_noises(noises) -> tuple[str, ...]:
    """The training noise kinds as a tuple: known, trainable (no test-only kind), no repeats."""
    from revsde.apps.speech.noise import EXTRA_TRAIN_NOISES, NOISES, TRAIN_NOISES

    names = tuple(k.strip() for k in noises.split(",")) if isinstance(noises, str) else tuple(noises)
    allowed = TRAIN_NOISES + EXTRA_TRAIN_NOISES
    bad = [k for k in names if k not in allowed]
    if bad:
        why = "is held out for the test set" if all(k in NOISES for k in bad) else "is unknown"
        problem = f"{', '.join(map(repr, bad))} {why}"
    elif not names:
        problem = "is empty"
    elif len(set(names)) != len(names):
        problem = "repeats a kind"
    else:
        return names
    raise ValueError(f"noises {problem}: give distinct names from {', '.join(allowed)} (got {noises!r})")


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device`` (``sample._device``'s checks: a device name this torch can
    use), and one training can run on: cpu or an existing ``cuda[:N]``."""
    from revsde.apps.mixture.sample import _device

    device = _device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N] (got {device}): the OUVE marginals are float64")
    if device.index is not None and device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def read_model(path, what: str = "init_from") -> tuple[dict, dict]:
    """``(config, weights)`` of a speech model file: an exported ``.safetensors`` (its config and weights) or
    a training checkpoint ``last.pt`` (its config as saved, and its EMA weights); ``ValueError`` naming
    ``what`` (the option it came from) when the file is missing, unreadable or not a speech model."""

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file (a training checkpoint last.pt or an exported .safetensors)")
    if path.suffix == ".safetensors":
        from revsde.nets.model_files import ModelFileError, load_tensors

        try:
            return read_export_config(path, FORMAT, "speech model"), load_tensors(path)
        except ModelFileError as err:
            raise ValueError(f"{what} {path} is not a readable .safetensors: {err.reason}") from None
    try:
        state = load_checkpoint(path)
        base, weights = checkpoint_config(state), state["ema"]  # as saved (gaps: training_stages)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{what} {path} is not a training checkpoint (a last.pt) or a .safetensors: {err}") from err
    if base.get("format") != FORMAT:
        raise ValueError(f"{what} {path} is a {base.get('format')!r} checkpoint, not a speech model ({FORMAT})")
    return base, weights


def load_init(path, config: dict) -> tuple[dict, dict]:
    """``(weights, provenance)`` of the model a fine-tune starts from (``read_model``); ``ValueError``
    unless it matches ``config`` on ``INIT_MATCH``."""
    path = Path(path)
    base, weights = read_model(path)
    return weights, init_provenance(path, base, config, INIT_MATCH, INIT_KEPT)

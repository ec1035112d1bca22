"""SGMSE+ (Richter et al., TASLP 2023) in revsde: its score parameterisation and its official checkpoints.

``SGMSEScore`` is SGMSE's ``ScoreModel.forward`` as a revsde network, ``net(x, t, mu=y)``: for ``ncsnpp``
and ``ncsnpp_48k`` the score is ``−dnn(x, y, t)``; for ``ncsnpp_v2`` the output is preconditioned as the
"Investigating training objectives" code does (``c_in``, ``c_out``, ``c_skip``, ``network_scaling``) and
is a score (``score_matching``, ``denoiser``) or the clean spectrogram (``data_prediction``). Its state
dict keys are the Lightning checkpoint's (``dnn.…``); the backbone alone is ``.dnn``.

``load_sgmse_checkpoint`` reads a Lightning ``.ckpt`` with ``restricted_load`` (no pickled code runs, the
``sgmse`` package is not needed), builds backbone, SDE and feature settings from ``hyper_parameters`` and
loads the EMA weights that official inference uses (``ema.shadow_params``, positional in
``dnn.parameters()`` order), strictly.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..audio.features import SpecConfig
from ..model import ScoreModel
from ..sde.ouve import OUVESDE
from .checkpoints import mismatch
from .model_files import reading
from .ncsnpp import BACKBONES, NCSNpp, ncsnpp_backbone
from .restricted_pickle import inert, restricted_load

LOSS_TYPES = {"score_matching": "score", "denoiser": "score", "data_prediction": "data"}  # → prediction kind
PRECONDITIONING = {"c_in": ("1", "edm"), "c_out": ("1", "sigma", "1/sigma", "edm"), "c_skip": ("0", "edm"),
                   "network_scaling": (None, "1/sigma", "1/t")}
V2_DEFAULTS = {"loss_type": "score_matching", "c_in": "1", "c_out": "1", "c_skip": "0", "network_scaling": None,
               "sigma_data": 0.1}
# ScoreModel and backbone constructor arguments a checkpoint's hyper_parameters may carry
BACKBONE_HPARAMS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "centered", "progressive",
                    "progressive_input", "progressive_combine", "image_size", "fourier_scale", "skip_rescale")


class SGMSEScore(nn.Module):
    """SGMSE's ``ScoreModel.forward`` around a backbone: ``forward(x, time, mu)`` with ``mu`` the noisy y."""

    def __init__(self, dnn: NCSNpp, sde: OUVESDE | None = None, *, backbone: str = "ncsnpp", **v2_options):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"SGMSE backbone must be one of {', '.join(BACKBONES)} (got {backbone!r})")
        unknown = sorted(set(v2_options) - set(V2_DEFAULTS))
        if unknown:
            raise ValueError(f"SGMSEScore options are {', '.join(V2_DEFAULTS)} (got {', '.join(unknown)})")
        options = {**V2_DEFAULTS, **v2_options}
        if backbone != "ncsnpp_v2" and options != V2_DEFAULTS:
            raise ValueError(f"loss_type / c_in / c_out / c_skip / network_scaling apply to ncsnpp_v2 only; "
                             f"{backbone} always returns score = −dnn(x, y, t)")
        if options["loss_type"] not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)} (got {options['loss_type']!r})")
        for key, valid in PRECONDITIONING.items():
            if options[key] not in valid:
                raise ValueError(f"{key} must be one of {', '.join(map(repr, valid))} (got {options[key]!r})")
        uses_sigma = (options["loss_type"] == "denoiser" or options["network_scaling"] == "1/sigma"
                      or "edm" in (options["c_in"], options["c_skip"]) or options["c_out"] != "1")
        if uses_sigma and not isinstance(sde, OUVESDE):
            raise ValueError(f"these ncsnpp_v2 settings use σ(t): pass the OUVESDE (got sde={sde!r})")
        self.dnn, self.sde, self.backbone = dnn, sde, backbone
        self.options = options
        self.prediction = "score" if backbone != "ncsnpp_v2" else LOSS_TYPES[options["loss_type"]]

    def forward(self, x: torch.Tensor, time, mu: torch.Tensor | None = None) -> torch.Tensor:
        if mu is None:
            raise ValueError("SGMSE nets are conditioned on the noisy spectrogram: call net(x, time, mu=y)")
        if self.backbone != "ncsnpp_v2":
            return -self.dnn(x, mu, time)
        t = torch.as_tensor(time, device=x.device, dtype=x.real.dtype).expand(x.shape[0])
        o, sd = self.options, self.options["sigma_data"]
        sigma = None if self.sde is None else self.sde.sigma(t).to(t.dtype)[:, None, None, None]
        c_in = 1.0 if o["c_in"] == "1" else 1 / torch.sqrt(sigma**2 + sd**2)
        out = self.dnn(c_in * x, c_in * mu, t)
        if o["network_scaling"] == "1/sigma":
            out = out / sigma
        elif o["network_scaling"] == "1/t":
            out = out / t[:, None, None, None]
        if o["loss_type"] == "denoiser":
            return (out - x) / sigma**2
        c_out = {"1": lambda: 1.0, "sigma": lambda: sigma, "1/sigma": lambda: 1 / sigma,
                 "edm": lambda: sigma * sd / torch.sqrt(sd**2 + sigma**2)}[o["c_out"]]()
        c_skip = 0.0 if o["c_skip"] == "0" else sd**2 / (sigma**2 + sd**2)
        return c_skip * x + c_out * out


def sgmse_score_model(dnn: NCSNpp, sde: OUVESDE, *, backbone: str = "ncsnpp", **v2_options) -> ScoreModel:
    """``dnn`` as a revsde ``ScoreModel`` on SGMSE's OUVE SDE; the net is called at the diffusion time t."""
    if not isinstance(sde, OUVESDE):
        raise ValueError(f"SGMSE+ nets are trained on the OUVE SDE: sde must be an OUVESDE (got {type(sde).__name__})")
    net = SGMSEScore(dnn, sde, backbone=backbone, **v2_options)
    return ScoreModel(net, sde, prediction=net.prediction)


# ---------------------------------------------------------------- checkpoints


def describe(net: NCSNpp) -> str:
    return (f"NCSNpp(nf={net.nf}, ch_mult={net.ch_mult}, num_res_blocks={net.num_res_blocks}, "
            f"attn_resolutions={net.attn_resolutions}, progressive={net.progressive!r}, "
            f"progressive_input={net.progressive_input!r})")


def check_backbone_state(net: NCSNpp, state: dict, source: str = "checkpoint") -> None:
    """Raise a ValueError naming the missing, unexpected and mis-shaped keys of ``state`` for ``net``."""
    expected = net.state_dict()
    problems = mismatch(expected, state)
    if not problems:
        return
    total = sum(v.numel() for v in expected.values())
    lines = [f"{source} does not match {describe(net)}, which expects {len(expected)} tensors "
             f"({total:,} parameters); the checkpoint has {len(state)}:"] + problems
    indices = {int(k.split(".")[1]) for k in state if k.startswith("all_modules.") and k.split(".")[1].isdigit()}
    if "all_modules.3.weight" in state and indices:
        lines.append(f"  the checkpoint looks like nf={state['all_modules.3.weight'].shape[0]} with "
                     f"{max(indices) + 1} modules (this net: nf={net.nf}, {len(net.all_modules)} modules)")
    raise ValueError("\n".join(lines))


def _ema_state(shadow, net: NCSNpp, raw: dict, source: str) -> dict:
    """The EMA list mapped by position onto ``net``'s parameter names (all of them, as torch-ema 0.3
    keeps; or only the trainable ones, as torch-ema 0.2 kept, the fixed Fourier W then from ``raw``)."""
    params = list(net.named_parameters())
    trainable = [name for name, p in params if p.requires_grad]
    if not isinstance(shadow, (list, tuple)) or not all(torch.is_tensor(s) for s in shadow):
        raise ValueError(f"{source}: ema.shadow_params is not a list of tensors")
    if len(shadow) == len(params):
        names = [name for name, _ in params]
    elif len(shadow) == len(trainable):
        names = trainable
    else:
        raise ValueError(f"{source}: the EMA holds {len(shadow)} tensors, but {describe(net)} has {len(params)} "
                         f"parameters ({len(trainable)} trainable); the checkpoint is for another configuration "
                         f"(or load its raw weights with weights='raw')")
    state = dict(zip(names, shadow))
    return {**{k: v for k, v in raw.items() if k not in state}, **state}


@dataclass(frozen=True)
class SGMSECheckpoint:
    """An official SGMSE+ checkpoint: backbone with weights, SDE, STFT/feature settings, hyper-parameters."""

    backbone_name: str
    backbone: NCSNpp
    sde: OUVESDE
    spec: SpecConfig                     # STFT, compression, rate and padding as enhancement.py applies them
    num_steps: int                       # the SDE's N: SGMSE's default number of reverse steps
    weights: str                         # "ema" or "raw": what was loaded
    hparams: dict = field(repr=False)    # every hyper-parameter; class references as "module.name" strings
    v2_options: dict = field(default_factory=dict)

    def describe(self) -> str:
        s = self.sde
        return (f"SGMSE+ {self.backbone_name} {describe(self.backbone)}, {self.weights} weights, OUVE θ={s.theta:g} "
                f"σ {s.sigma_min:g}→{s.sigma_max:g}, t_eps {s.t_min:g}, N={self.num_steps}")

    def network(self) -> SGMSEScore:
        return SGMSEScore(self.backbone, self.sde, backbone=self.backbone_name, **self.v2_options)

    def score_model(self) -> ScoreModel:
        return sgmse_score_model(self.backbone, self.sde, backbone=self.backbone_name, **self.v2_options)


def load_sgmse_checkpoint(path, *, weights: str = "ema", map_location="cpu") -> SGMSECheckpoint:
    """An official SGMSE+ Lightning checkpoint, read without running pickled code, loaded strictly.

    ``weights="ema"`` (the default, what official inference runs on) takes ``ema.shadow_params`` and falls
    back to ``state_dict`` with a warning when the file has no EMA; ``weights="raw"`` takes ``state_dict``.
    ``pesq_loss.*`` entries (training-only) are dropped; any other key outside ``dnn.`` is an error.
    ``map_location`` is a device; the file is memory-mapped, so only the weights used are read.
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw' (got {weights!r})")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"SGMSE+ checkpoint {str(path)!r} is not a file")
    with reading(path, "SGMSE+ checkpoint"):
        ckpt = restricted_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("hyper_parameters"), dict) \
            or not isinstance(ckpt.get("state_dict"), dict):
        keys = sorted(map(str, ckpt))[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a Lightning checkpoint with hyper_parameters and state_dict (found {keys})")
    hp = inert(ckpt["hyper_parameters"])

    backbone = hp.get("backbone", "ncsnpp")
    if backbone not in BACKBONES:
        raise ValueError(f"{path}: backbone {backbone!r} is not implemented (revsde has {', '.join(BACKBONES)})")
    if hp.get("sde", "ouve") != "ouve":
        raise ValueError(f"{path}: sde {hp.get('sde')!r} is not available in revsde (SGMSE+ nets use 'ouve')")
    kwargs = {k: hp[k] for k in BACKBONE_HPARAMS if k in hp}
    if backbone == "ncsnpp_v2":
        kwargs.pop("centered", None)  # not an argument of the v2 class: officially ignored
    net = ncsnpp_backbone(backbone, **kwargs)

    raw = {k.removeprefix("dnn."): v for k, v in ckpt["state_dict"].items() if not k.startswith("pesq_loss.")}
    ema = ckpt.get("ema")
    source = str(path)
    if weights == "ema" and not (isinstance(ema, dict) and ema.get("shadow_params") is not None):
        warnings.warn(f"{path} has no EMA weights; loading its raw state_dict (official inference would too)",
                      stacklevel=2)
        weights = "raw"
    if weights == "ema":
        check_backbone_state(net, raw, source=f"{source} (state_dict)")
        state = _ema_state(ema["shadow_params"], net, raw, source)
        source += " (EMA)"
    else:
        state = raw
    check_backbone_state(net, state, source=source)
    net.load_state_dict(state, strict=True)

    sde = OUVESDE(hp.get("theta", 1.5), hp.get("sigma_min", 0.05), hp.get("sigma_max", 0.5),
                  t_min=hp.get("t_eps", 0.03))
    v2_options = {k: hp.get(k, v) for k, v in V2_DEFAULTS.items()} if backbone == "ncsnpp_v2" else {}
    loaded = SGMSECheckpoint(backbone, net.to(map_location).eval(), sde, SpecConfig.from_hparams(hp),
                             int(hp.get("N", 30)), weights, hp, v2_options)
    loaded.network()  # validates the v2 preconditioning settings now, not at the first sample
    return loaded

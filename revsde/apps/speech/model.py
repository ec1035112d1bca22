"""The built-in speech model: SGMSE+'s OUVE SDE, the NCSN++ backbone called the revsde way
(``SpeechNet``), its ``ScoreModel``, the settings its checkpoints record, and the model as a file.
Shared by inference (``enhance``) and training (``train``), so inference never imports training.

``export_weights`` writes a training checkpoint's EMA weights as safetensors with the network, SDE and
feature settings (and the stages it was fine-tuned from) in the metadata; ``load_weights`` rebuilds the
``ScoreModel`` and ``SpecConfig`` from them; ``recommend`` stores the MR Sampler setting the model card
found best, which ``revsde enhance`` then uses by default; ``training_stages`` and ``steps_text`` read
the chain of runs behind a model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from revsde.apps.exports import export_ema, read_export_config, rewrite_config
from revsde.audio.features import SpecConfig
from revsde.model import ScoreModel
from revsde.nets.ncsnpp import NCSNpp
from revsde.sde.ouve import OUVESDE

FORMAT = "revsde.speech/1"
#: the built-in network: NCSN++ with SGMSE+'s block types at a CPU-sized width and depth
SMALL_NET = {"nf": 16, "ch_mult": (1, 2, 2, 2, 2), "num_res_blocks": 1, "attn_resolutions": (16,),
             "image_size": 256, "time_scaling": "none"}
#: the default training mix of noises: ``speech_noise.TRAIN_NOISES``, spelled out so that importing this
#: module (the CLI does) does not import scipy.signal; a test keeps the two equal
DEFAULT_NOISES = ("white", "pink", "brown", "babble", "hum", "bursts", "hvac")
#: what checkpoints written before these settings existed trained with
RESUME_DEFAULTS = {"t_high": 0.0, "init": None, "noises": list(DEFAULT_NOISES), "crp": None, "seed": 0}


def build_sde(config: dict | None = None) -> OUVESDE:
    """SGMSE+'s OUVE SDE (θ 1.5, σ 0.05 → 0.5, t_eps 0.03) or the one a config names."""
    return OUVESDE(**(config or {}))


def build_net(config: dict) -> NCSNpp:
    return NCSNpp(**config)


class SpeechNet(nn.Module):
    """An NCSN++ backbone called the revsde way, ``net(x, time, mu=y) = dnn(x, y, t)``: its raw output
    is what the model's ``prediction`` says (score, noise, data or velocity)."""

    def __init__(self, dnn: NCSNpp):
        super().__init__()
        self.dnn = dnn

    def forward(self, x: torch.Tensor, time, mu: torch.Tensor | None = None) -> torch.Tensor:
        if mu is None:
            raise ValueError("speech nets are conditioned on the noisy spectrogram: call net(x, time, mu=y)")
        t = torch.as_tensor(time, device=x.device, dtype=x.real.dtype).reshape(-1).expand(x.shape[0])
        return self.dnn(x, mu, t)


def score_model(net: nn.Module, sde: OUVESDE, prediction: str = "velocity") -> ScoreModel:
    return ScoreModel(net, sde, prediction=prediction)


def export_weights(checkpoint, path) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors with its config."""
    return export_ema(checkpoint, path, FORMAT, flat_keys=("prediction", "arch", "net", "sde", "trained_steps"))


def recommend(path, nfe: int, options: dict | None = None) -> Path:
    """Store in an exported file the MR Sampler setting its model card found best: ``revsde enhance``
    then uses it when given no ``--nfe`` and no ``--option`` (``config["recommended"]``)."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 2:
        raise ValueError(f"the recommended NFE must be an integer >= 2 (got {nfe!r})")
    if not isinstance(options, (dict, type(None))):
        raise ValueError(f"the recommended options must be a dict (got {options!r})")
    return rewrite_config(path, {**read_config(path), "recommended": {"nfe": nfe, "options": dict(options or {})}})


#: an earlier stage's settings where its provenance has none: ``RESUME_DEFAULTS``, and no ``lr_history``
#: (kept only by a run resumed with another total; the last run's must not pass for an earlier one's)
STAGE_DEFAULTS = {**RESUME_DEFAULTS, "lr_history": None}


def training_stages(config: dict) -> list[dict]:
    """The runs behind a model's config, first run first: the ``init`` chain of its fine-tunes, each
    stage's own settings over the config's (a start keeps only ``INIT_KEPT`` of its own; one trained
    before a setting existed had its ``STAGE_DEFAULTS`` value)."""
    chain = [config]
    while chain[-1].get("init"):
        chain.append({**config, **STAGE_DEFAULTS, **chain[-1]["init"]})
    return chain[::-1]


def steps_text(config: dict) -> str:
    """The training steps of an exported model's config, fine-tunes included:
    ``"16500 steps (11500, then a 5000-step fine-tune)"`` or ``"11500 steps"``."""
    first, *tunes = [int(stage["trained_steps"]) for stage in training_stages(config)]
    if not tunes:
        return f"{first} steps"
    return (f"{first + sum(tunes)} steps ({first}, then "
            + ", then ".join(f"a {n}-step fine-tune" for n in tunes) + ")")


def read_config(path) -> dict:
    """The config stored in an exported ``.safetensors`` file (``ValueError`` if it is not ours)."""
    return read_export_config(path, FORMAT, "speech model")


def load_weights(path, net: nn.Module | None = None) -> tuple[ScoreModel, SpecConfig, dict]:
    """``(ScoreModel, SpecConfig, config)`` of an exported file, the net in eval mode."""
    from revsde.nets.checkpoints import load_state
    from revsde.nets.model_files import load_tensors

    config = read_config(path)
    if net is None:
        if config["arch"] != "NCSNpp":
            raise ValueError(f"{path} holds a {config['arch']}: pass the network to load it into as net=")
        net = SpeechNet(build_net(config["net"]))
    load_state(net, load_tensors(path), str(path))
    spec = SpecConfig(**config["spec"])
    return score_model(net.eval(), build_sde(config["sde"]), config["prediction"]), spec, config

"""The built-in speech model's definition: SGMSE+'s OUVE SDE, the NCSN++ backbone called the revsde
way (``SpeechNet``), its ``ScoreModel``, and the settings its checkpoints record. Shared by inference
(``speech_weights``, ``enhance``) and training (``train_speech``), so inference never imports training.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model import ScoreModel
from ..nets.ncsnpp import NCSNpp
from ..sde.ouve import OUVESDE

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

"""The built-in restoration models as files and networks: IR-SDE's ``ConditionalUNet`` under the MR SDE,
its ``ScoreModel``, export of a training checkpoint's EMA weights with their config, the card's
recommended setting, and loading (``load_weights``). ``revsde restore`` and the evaluation read models
through this module and never import training (``train``)."""
from __future__ import annotations

from pathlib import Path

import torch

from revsde.apps.exports import export_ema, read_export_config, rewrite_config
from revsde.model import Prediction, ScoreModel

PREDICTIONS = ("noise", "velocity", "data")
FORMAT = "revsde.restore/1"
#: for checkpoints written before a key existed
CONFIG_DEFAULTS = {"prediction": "noise", "data_weight": 0.0, "init": None}


def build_net(nf: int, depth: int) -> torch.nn.Module:
    """IR-SDE's ``ConditionalUNet(in_nc=3, out_nc=3, nf, depth)``, called as ``net(x, time, mu)``."""
    from revsde.nets.irsde_unet import ConditionalUNet

    return ConditionalUNet(in_nc=3, out_nc=3, nf=nf, depth=depth)


def build_sde(config: dict | None = None):
    """The MR SDE from a checkpoint's ``sde`` config (IR-SDE's defaults without one)."""
    from revsde.sde import MRSDE

    return MRSDE(**(config or {}))


def score_model(net, sde, prediction: str = "noise") -> ScoreModel:
    """The ``ScoreModel`` of a restoration network (time input: IR-SDE's index t·T)."""
    return ScoreModel(net, sde, prediction=prediction)


class NoiseOutput(torch.nn.Module):
    """A network trained with another ``prediction`` seen as an ε-predictor, IR-SDE's contract:
    ``forward(x, time, mu)`` converts the inner net's output exactly (``Prediction``), ``time`` being
    the SDE's ``model_time`` (IR-SDE's index t·T)."""

    def __init__(self, net: torch.nn.Module, sde, prediction: str):
        super().__init__()
        self.net, self.sde, self.prediction = net, sde, prediction

    def forward(self, x, time, mu):
        t = torch.as_tensor(time, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        out = self.net(x, time, mu)
        return Prediction(self.prediction, out, x, t / self.sde.steps, self.sde, mu).noise.to(out.dtype)


def training_stages(config: dict) -> list[dict]:
    """The runs behind a model's config, first run first: the ``init`` chain of its fine-tunes, each
    stage's own settings (``INIT_KEPT``) over the config's."""
    chain = [config]
    while chain[-1].get("init"):
        chain.append({**config, "lr_history": None, "data_weight": 0.0, "init": None, "degradation": None,
                      **chain[-1]["init"]})
    return chain[::-1]


def export_weights(checkpoint, path) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors, its config (nf, depth,
    task, loss, SDE, steps trained, wall time) in the metadata: ``config`` as JSON, and flat keys."""
    return export_ema(checkpoint, path, FORMAT, defaults=CONFIG_DEFAULTS,
                      flat_keys=("sde", "task", "loss", "prediction", "arch", "nf", "depth", "trained_steps"))


def recommend(path, nfe: int, validated_nfe: tuple[int, int], *, sampler: str = "mrs",
              options: dict | None = None) -> Path:
    """Store in an exported file the setting its model card found best (``sampler``, ``nfe``, ``options``)
    and the NFE range ``validated_nfe`` = ``(lo, hi)`` the card measured an improvement over the input at
    (``config["recommended"]``): ``revsde restore`` uses the first when given no ``--sampler``, ``--nfe``
    or ``--option``, and warns when a run leaves the second (or uses another sampler or options)."""
    def nfe_ok(n):
        return not isinstance(n, bool) and isinstance(n, int) and n >= 1

    if not nfe_ok(nfe):
        raise ValueError(f"the recommended NFE must be an integer >= 1 (got {nfe!r})")
    lo, hi = validated_nfe
    if not (nfe_ok(lo) and nfe_ok(hi) and lo <= nfe <= hi):
        raise ValueError(f"the validated NFE range must be integers lo <= {nfe} <= hi (got {validated_nfe!r})")
    if not isinstance(options, (dict, type(None))):
        raise ValueError(f"the recommended options must be a dict (got {options!r})")
    rec = {"sampler": sampler, "nfe": nfe, "options": dict(options or {}), "validated_nfe": [lo, hi]}
    return rewrite_config(path, {**read_config(path), "recommended": rec})


def read_config(path) -> dict:
    """The config stored in an exported ``.safetensors`` file."""
    return read_export_config(path, FORMAT, "restoration model", CONFIG_DEFAULTS)


def load_weights(path, net: torch.nn.Module | None = None):
    """``(net, sde, config)`` from an exported file; ``net`` (else a ``ConditionalUNet`` of the stored
    size) receives the weights and is put in eval mode. The returned net always predicts ε (a
    velocity/data net comes wrapped in ``NoiseOutput``), so ``score_model(net, sde)`` serves it."""
    from revsde.nets.checkpoints import load_state
    from revsde.nets.model_files import load_tensors

    config = read_config(path)
    if net is None:
        if config["arch"] != "ConditionalUNet":
            raise ValueError(f"{path} holds a {config['arch']}: pass the network to load it into as net=")
        net = build_net(config["nf"], config["depth"])
    load_state(net, load_tensors(path), str(path))
    sde = build_sde(config["sde"])
    if config["prediction"] != "noise":
        net = NoiseOutput(net, sde, config["prediction"])
    return net.eval(), sde, config

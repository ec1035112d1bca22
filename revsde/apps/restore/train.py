"""Training the built-in MR-diffusion restoration models (IR-SDE, Luo et al. 2023) and measuring them.

``train_restore`` fits IR-SDE's ``ConditionalUNet`` on random patches of the training photos
(``restore_data``), degraded on the fly, as an ε-predictor (IR-SDE's choice) or a velocity / data
predictor (``prediction``; its ε, converted exactly by ``Prediction``, enters the same losses),
under the MR SDE (``MRSDE()``: IR-SDE's cosine schedule, T = 100, eps = 0.005, stationary std 50/255).
Per sample an index ``k ~ U{1..T}`` gives the time ``t = k/T`` and ``x_t = α_t x_0 + (1 − α_t) μ + σ_t z``.
Losses:

- ``"matching"`` — IR-SDE's maximum-likelihood loss: the L1 distance between the Euler reverse mean
  ``x_t − [f (x_t − μ) + g² ε̂/σ_t] Δ`` (Δ = 1/T) and the exact posterior mean of ``x_{t−Δ}`` given
  ``x_t`` and the true ``x_0``;
- ``"noise"`` — the plain ε-MSE ``‖ε̂ − z‖²``;
- ``"data"`` — the L1 distance ``mean |x̂_0 − x_0|`` of the clean-image estimate (``Prediction.data``),
  the loss of a supervised restoration network asked at every noise level: it weights the fine detail a
  deblurrer must restore as much at t = T as near t = 0, where the ε-losses see it only through noise.

``data_weight`` adds ``data_weight ·`` the data loss to the matching loss. The matching loss sees the
clean-image estimate x̂₀ at step t only through the posterior mean's coefficient on it, which falls from
≈ 1 at t = 1/T to ≈ 0.001 at t = T: x̂₀ near the prior is barely trained, yet a 1-step run returns
x̂₀(T) and every few-step run leans on it. ``init_from`` starts a fine-tune from an exported model or a
``last.pt`` (its EMA weights; its config kept under ``init``, the provenance of the stages).

AdamW with cosine decay, gradient clipping at 1.0 and an EMA of the weights (``trainer.fit``:
``out_dir/last.pt`` is written atomically every ``checkpoint_every`` steps and on Ctrl-C / SIGTERM, and
a later call resumes from it, bit for bit). ``export_weights`` writes the EMA weights as safetensors
with their config; ``restore_eval.evaluate_restore`` measures them on the held-out photos.
"""
from __future__ import annotations

from pathlib import Path

import torch

from revsde.model import Prediction, ScoreModel
from revsde.samplers.updates import euler_maruyama, posterior
from revsde.apps.restore.data import DEGRADATIONS, PatchSampler, load_split
from revsde.apps.exports import checkpoint_config, load_checkpoint
from revsde.apps.restore.model import (CONFIG_DEFAULTS, FORMAT, PREDICTIONS, build_net, build_sde, read_config,
                                       score_model)
from revsde.apps.trainer import TrainResult, check_positive_ints, fit, init_provenance

LOSSES = ("matching", "noise", "data")
#: config keys a resumed run must share with its checkpoint (``steps`` may grow)
RESUME_KEYS = ("task", "loss", "prediction", "arch", "nf", "depth", "batch", "patch", "lr", "ema", "seed", "sde",
               "data_weight", "init")
#: what a fine-tune (``init_from``) must share with the model it starts from
INIT_MATCH = ("task", "prediction", "arch", "nf", "depth", "sde")
#: what a fine-tune keeps of the model it starts from (with its steps and wall time): its own settings
INIT_KEPT = ("loss", "data_weight", "batch", "patch", "lr", "lr_floor", "steps", "lr_history", "seed", "init",
             "degradation")


# --- the losses ----------------------------------------------------------------------------------
def matching_loss(sde, eps_hat, x_t, x0, mu, t, dt) -> torch.Tensor:
    """IR-SDE's loss: ``mean |Euler reverse mean(ε̂) − posterior mean(x_0)|`` for the step ``t → t − dt``."""
    t_prev = t - dt
    mean_euler, _ = euler_maruyama(sde, x_t, t, t_prev, Prediction("noise", eps_hat, x_t, t, sde, mu), mu)
    mean_opt, _ = posterior(sde, x_t, t, t_prev, Prediction("data", x0, x_t, t, sde, mu), mu)
    return (mean_euler - mean_opt).abs().mean()


def training_loss(model: ScoreModel, x0, mu, generator, loss: str = "matching",
                  data_weight: float = 0.0) -> torch.Tensor:
    """One batch's loss: per sample ``k ~ U{1..T}``, ``t = k/T``, ``x_t`` drawn from the marginal; with
    ``data_weight`` the ``"matching"`` loss plus ``data_weight`` times the ``"data"`` loss."""
    sde = model.sde
    steps = sde.steps
    k = torch.randint(1, steps + 1, (x0.shape[0],), generator=generator)
    t = k.to(torch.float64) / steps
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_t = sde.perturb(x0, t, z, mu)
    pred = model(x_t, t, mu)
    if loss == "data":
        return (pred.data - x0).abs().mean()
    eps_hat = pred.noise
    if loss == "noise":
        return torch.mean((eps_hat - z) ** 2)
    value = matching_loss(sde, eps_hat, x_t, x0, mu, t, 1.0 / steps)
    return value + data_weight * (pred.data - x0).abs().mean() if data_weight else value


# --- training ------------------------------------------------------------------------------------
def train_restore(task: str = "denoise", out_dir="out/train/denoise", steps: int = 10000, *, batch: int = 8,
                  patch: int = 64, lr: float = 2e-4, loss: str = "matching", nf: int = 16, depth: int = 3,
                  ema: float = 0.999, threads: int | None = 1, checkpoint_every: int = 500, log_every: int = 50,
                  seed: int = 0, progress: bool = True, resume: bool = True, sde=None, net=None,
                  images=None, stop_at: int | None = None, lr_floor: float = 1e-6,
                  prediction: str = "noise", data_weight: float = 0.0, init_from=None) -> TrainResult:
    """Train (or resume training) a restoration network for ``task`` for ``steps`` steps in total.

    ``prediction``: what the network's output means — ``"noise"`` (IR-SDE's ε), or ``"velocity"`` /
    ``"data"``, whose ε (``Prediction``'s exact conversion) enters the same losses; near ``t = T``
    an ε-net must reproduce ``(x − μ)/σ_t`` to within ``α_T/σ_T ≈ 2.5 %`` of the data error it
    may make, which a velocity net gets for free. ``net`` replaces ``ConditionalUNet(nf, depth)`` (any module called as ``net(x, time, mu)``);
    ``images`` replaces the training split; ``sde`` replaces ``MRSDE()``; ``threads`` sets torch's
    intra-op threads (None: leave as is). ``stop_at`` stops (with a checkpoint) at that step, for a
    later call to resume. The learning rate decays from ``lr`` to ``lr_floor`` over ``steps``.
    ``data_weight`` (``"matching"`` only): the weight of the added data loss. ``init_from``: an exported
    ``.safetensors`` or a ``last.pt`` whose (EMA) weights the run starts from, with a fresh optimiser.
    """
    if task not in DEGRADATIONS:
        raise ValueError(f"unknown restoration task {task!r}; available: {', '.join(DEGRADATIONS)}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)} (got {loss!r})")
    check_positive_ints(steps=steps, batch=batch, patch=patch, checkpoint_every=checkpoint_every, log_every=log_every)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)} (got {prediction!r})")
    if not 0 <= ema < 1:
        raise ValueError(f"ema must lie in [0, 1) (got {ema!r})")
    if isinstance(data_weight, bool) or not isinstance(data_weight, (int, float)) or not data_weight >= 0:
        raise ValueError(f"data_weight must be a number >= 0 (got {data_weight!r})")
    if data_weight and loss != "matching":
        raise ValueError(f"data_weight adds the data loss to the matching loss (got loss {loss!r})")
    if threads is not None:
        torch.set_num_threads(int(threads))
    sde = build_sde() if sde is None else sde
    arch = "ConditionalUNet" if net is None else type(net).__name__
    torch.manual_seed(seed)  # the network's initialisation
    if net is None:
        net = build_net(nf, depth)
    config = {"format": FORMAT, "task": task, "loss": loss, "prediction": prediction, "arch": arch, "nf": nf, "depth": depth,
              "batch": batch, "patch": patch, "lr": lr, "lr_floor": lr_floor, "ema": ema, "seed": seed,
              "steps": steps, "sde": sde.config(), "data_weight": float(data_weight), "init": None,
              "degradation": DEGRADATIONS[task].description}
    if init_from is not None:
        weights, config["init"] = load_init(init_from, config)
        net.load_state_dict(weights)

    generator = torch.Generator().manual_seed(seed)
    patches = PatchSampler(load_split("train") if images is None else images, patch, batch, task, generator)
    model = score_model(net, sde, prediction)

    def batch_loss():
        x0, mu = next(patches)
        return training_loss(model, x0, mu, generator, loss, data_weight)

    return fit(net, batch_loss, config, out_dir, steps, generator=generator, lr=lr, lr_floor=lr_floor, ema=ema,
               checkpoint_every=checkpoint_every, log_every=log_every, progress=progress, resume=resume,
               resume_keys=RESUME_KEYS, config_defaults=CONFIG_DEFAULTS, stop_at=stop_at, desc=f"train {task}")


def load_init(path, config: dict) -> tuple[dict, dict]:
    """``(weights, provenance)`` of the model a fine-tune starts from: an exported ``.safetensors`` (its
    weights) or a ``last.pt`` (its EMA weights); ``ValueError`` unless it is a restoration model that
    matches ``config`` on ``INIT_MATCH``."""
    from revsde.nets.model_files import load_tensors

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"init_from {path}: no such file (an exported .safetensors or a training checkpoint last.pt)")
    if path.suffix == ".safetensors":
        base, weights = read_config(path), load_tensors(path)
    else:
        state = load_checkpoint(path)
        base, weights = {**CONFIG_DEFAULTS, **checkpoint_config(state)}, state["ema"]
        if base.get("format") != FORMAT:
            raise ValueError(f"init_from {path} is a {base.get('format')!r} checkpoint, not a restoration model")
    base = {**base, "sde": build_sde(base["sde"]).config()}  # with the keys added since it was saved
    return weights, init_provenance(path, base, config, INIT_MATCH, INIT_KEPT)

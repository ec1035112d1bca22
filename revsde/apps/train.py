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
- ``"noise"`` — the plain ε-MSE ``‖ε̂ − z‖²``.

AdamW with cosine decay, gradient clipping at 1.0 and an EMA of the weights; ``out_dir/last.pt`` is
written atomically every ``checkpoint_every`` steps (and on Ctrl-C / SIGTERM) and a later call
resumes from it, bit for bit. ``export_weights`` writes the EMA weights as safetensors with their
config; ``evaluate_restore`` restores the held-out photos with ``revsde.sample`` and reports PSNR/SSIM.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics
from ..model import Prediction, ScoreModel
from ..samplers.updates import euler_maruyama, posterior
from .files import atomic_output
from .restore_data import DEGRADATIONS, HELD_OUT, PatchSampler, degrade, load_split, photos

LOSSES = ("matching", "noise")
PREDICTIONS = ("noise", "velocity", "data")
FORMAT = "revsde.restore/1"
#: config keys a resumed run must share with its checkpoint (``steps`` may grow)
RESUME_KEYS = ("task", "loss", "prediction", "arch", "nf", "depth", "batch", "patch", "lr", "ema", "seed", "sde")
CONFIG_DEFAULTS = {"prediction": "noise"}  # for checkpoints written before the key existed


def build_net(nf: int, depth: int) -> torch.nn.Module:
    """IR-SDE's ``ConditionalUNet(in_nc=3, out_nc=3, nf, depth)``, called as ``net(x, time, mu)``."""
    from ..nets.irsde_unet import ConditionalUNet

    return ConditionalUNet(in_nc=3, out_nc=3, nf=nf, depth=depth)


def build_sde(config: dict | None = None):
    """The MR SDE from a checkpoint's ``sde`` config (IR-SDE's defaults without one)."""
    from ..sde import MRSDE

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


# --- the losses ----------------------------------------------------------------------------------
def matching_loss(sde, eps_hat, x_t, x0, mu, t, dt) -> torch.Tensor:
    """IR-SDE's loss: ``mean |Euler reverse mean(ε̂) − posterior mean(x_0)|`` for the step ``t → t − dt``."""
    t_prev = t - dt
    mean_euler, _ = euler_maruyama(sde, x_t, t, t_prev, Prediction("noise", eps_hat, x_t, t, sde, mu), mu)
    mean_opt, _ = posterior(sde, x_t, t, t_prev, Prediction("data", x0, x_t, t, sde, mu), mu)
    return (mean_euler - mean_opt).abs().mean()


def training_loss(model: ScoreModel, x0, mu, generator, loss: str = "matching") -> torch.Tensor:
    """One batch's loss: per sample ``k ~ U{1..T}``, ``t = k/T``, ``x_t`` drawn from the marginal."""
    sde = model.sde
    steps = sde.steps
    k = torch.randint(1, steps + 1, (x0.shape[0],), generator=generator)
    t = k.to(torch.float64) / steps
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_t = sde.perturb(x0, t, z, mu)
    eps_hat = model(x_t, t, mu).noise
    if loss == "noise":
        return torch.mean((eps_hat - z) ** 2)
    return matching_loss(sde, eps_hat, x_t, x0, mu, t, 1.0 / steps)


# --- checkpoints ---------------------------------------------------------------------------------
def _cosine(total: int, floor: float):
    def factor(step: int) -> float:
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return factor


def _save(path: Path, obj: dict) -> None:
    with atomic_output(path) as f:
        torch.save(obj, f)


def load_checkpoint(path) -> dict:
    """A training checkpoint (``torch.load(weights_only=True)``: tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _stop_requests():
    """A flag set by SIGINT/SIGTERM (main thread only), so the loop can finish its step and checkpoint."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class TrainResult:
    """Where training stopped: ``checkpoint`` path, ``step`` reached, wall time ``elapsed_s`` over all
    runs, the last logged ``loss``, and whether it was ``interrupted`` (Ctrl-C / SIGTERM / ``stop_at``)."""

    checkpoint: Path
    step: int
    steps: int
    elapsed_s: float
    loss: float | None
    interrupted: bool


def train_restore(task: str = "denoise", out_dir="out/train/denoise", steps: int = 10000, *, batch: int = 8,
                  patch: int = 64, lr: float = 2e-4, loss: str = "matching", nf: int = 16, depth: int = 3,
                  ema: float = 0.999, threads: int | None = 1, checkpoint_every: int = 500, log_every: int = 50,
                  seed: int = 0, progress: bool = True, resume: bool = True, sde=None, net=None,
                  images=None, stop_at: int | None = None, lr_floor: float = 1e-6,
                  prediction: str = "noise") -> TrainResult:
    """Train (or resume training) a restoration network for ``task`` for ``steps`` steps in total.

    ``prediction``: what the network's output means — ``"noise"`` (IR-SDE's ε), or ``"velocity"`` /
    ``"data"``, whose ε (``Prediction``'s exact conversion) enters the same losses; near ``t = T``
    an ε-net must reproduce ``(x − μ)/σ_t`` to within ``α_T/σ_T ≈ 2.5 %`` of the data error it
    may make, which a velocity net gets for free. ``net`` replaces ``ConditionalUNet(nf, depth)`` (any module called as ``net(x, time, mu)``);
    ``images`` replaces the training split; ``sde`` replaces ``MRSDE()``; ``threads`` sets torch's
    intra-op threads (None: leave as is). ``stop_at`` stops (with a checkpoint) at that step, for a
    later call to resume. The learning rate decays from ``lr`` to ``lr_floor`` over ``steps``.
    """
    if task not in DEGRADATIONS:
        raise ValueError(f"unknown restoration task {task!r}; available: {', '.join(DEGRADATIONS)}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)} (got {loss!r})")
    for name, value in (("steps", steps), ("batch", batch), ("patch", patch), ("checkpoint_every", checkpoint_every),
                        ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer (got {value!r})")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)} (got {prediction!r})")
    if not 0 <= ema < 1:
        raise ValueError(f"ema must lie in [0, 1) (got {ema!r})")
    if threads is not None:
        torch.set_num_threads(int(threads))
    sde = build_sde() if sde is None else sde
    arch = "ConditionalUNet" if net is None else type(net).__name__
    torch.manual_seed(seed)  # the network's initialisation
    if net is None:
        net = build_net(nf, depth)
    config = {"format": FORMAT, "task": task, "loss": loss, "prediction": prediction, "arch": arch, "nf": nf, "depth": depth,
              "batch": batch, "patch": patch, "lr": lr, "lr_floor": lr_floor, "ema": ema, "seed": seed,
              "steps": steps, "sde": sde.config()}

    generator = torch.Generator().manual_seed(seed)
    patches = PatchSampler(load_split("train") if images is None else images, patch, batch, task, generator)
    model = score_model(net, sde, prediction)
    ema_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(steps, lr_floor / lr))

    out_dir = Path(out_dir)
    ckpt_path, log_path = out_dir / "last.pt", out_dir / "train_log.jsonl"
    step, elapsed = 0, 0.0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        saved = {**CONFIG_DEFAULTS, **state["config"]}
        diff = {k: (saved.get(k), config[k]) for k in RESUME_KEYS if saved.get(k) != config[k]}
        if diff:
            raise ValueError(f"{ckpt_path} was trained with other settings {diff} (checkpoint, now); use "
                             "another output folder or resume=False (--no-resume) to start afresh")
        net.load_state_dict(state["model"])
        ema_state = state["ema"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        _truncate_log(log_path, step)
    elif log_path.exists():
        log_path.unlink()

    def checkpoint():
        _save(ckpt_path, {"config": config, "step": step, "elapsed_s": elapsed, "model": net.state_dict(),
                          "ema": ema_state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()}})

    from tqdm.auto import tqdm

    end = steps if stop_at is None else min(steps, stop_at)
    bar = tqdm(total=steps, initial=step, desc=f"train {task}", disable=not progress, dynamic_ncols=True)
    window, last_loss, interrupted = [], None, False
    net.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _stop_requests() as stop:
        t_run, logged = time.perf_counter(), (step, elapsed)  # (step, elapsed) at the last log line
        while step < end:
            x0, mu = next(patches)
            value = training_loss(model, x0, mu, generator, loss)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            decay = min(ema, (1 + step) / (10 + step))  # short runs: the EMA forgets its random start
            with torch.no_grad():
                for k, v in net.state_dict().items():
                    if v.is_floating_point():
                        ema_state[k].lerp_(v, 1 - decay)
                    else:
                        ema_state[k].copy_(v)
            window.append(float(value.detach()))
            now = time.perf_counter()
            elapsed += now - t_run
            t_run = now
            bar.update(1)
            if step % 10 == 0 or step == end:
                bar.set_postfix(loss=f"{sum(window[-50:]) / len(window[-50:]):.4g}")
            if step % log_every == 0 or step == end:
                last_loss = sum(window) / len(window)
                rate = (step - logged[0]) / max(elapsed - logged[1], 1e-9)
                logged = (step, elapsed)
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                                        "elapsed_s": round(elapsed, 2), "it_per_s": round(rate, 3)}) + "\n")
                window = []
            if stop["stop"]:
                interrupted = True
                break
            if step % checkpoint_every == 0 and step < end:
                checkpoint()
        checkpoint()
    bar.close()
    interrupted = interrupted or step < steps
    return TrainResult(ckpt_path, step, steps, elapsed, last_loss, interrupted)


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
    if not log_path.exists():
        return
    keep = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_output(log_path) as f:
        f.write("".join(line + "\n" for line in keep).encode())


# --- export / load -------------------------------------------------------------------------------
def export_weights(checkpoint, path) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors, its config (nf, depth,
    task, loss, SDE, steps trained, wall time) in the metadata: ``config`` as JSON, and flat keys."""
    from safetensors.torch import save

    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    config = {**CONFIG_DEFAULTS, **state["config"], "trained_steps": int(state["step"]),
              "elapsed_s": float(state["elapsed_s"])}
    tensors = {k: v.detach().contiguous().clone() for k, v in state["ema"].items()}
    meta = {"format": FORMAT, "config": json.dumps(config, sort_keys=True), "sde": json.dumps(config["sde"])}
    meta.update({k: str(config[k]) for k in ("task", "loss", "prediction", "arch", "nf", "depth", "trained_steps")})
    path = Path(path)
    with atomic_output(path) as f:
        f.write(save(tensors, metadata=meta))
    return path


def read_config(path) -> dict:
    """The config stored in an exported ``.safetensors`` file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a revsde restoration model (metadata format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return {**CONFIG_DEFAULTS, **json.loads(meta["config"])}


def load_weights(path, net: torch.nn.Module | None = None):
    """``(net, sde, config)`` from an exported file; ``net`` (else a ``ConditionalUNet`` of the stored
    size) receives the weights and is put in eval mode. The returned net always predicts ε (a
    velocity/data net comes wrapped in ``NoiseOutput``), so ``score_model(net, sde)`` serves it."""
    from safetensors.torch import load_file

    config = read_config(path)
    if net is None:
        if config["arch"] != "ConditionalUNet":
            raise ValueError(f"{path} holds a {config['arch']}: pass the network to load it into as net=")
        net = build_net(config["nf"], config["depth"])
    net.load_state_dict(load_file(str(path)))
    sde = build_sde(config["sde"])
    if config["prediction"] != "noise":
        net = NoiseOutput(net, sde, config["prediction"])
    return net.eval(), sde, config


# --- evaluation ----------------------------------------------------------------------------------
def _hwc(x: torch.Tensor):
    return x.detach().double().permute(1, 2, 0).cpu().numpy()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``revsde.metrics.psnr`` of ``(3, H, W)`` images in [0, 1]."""
    return metrics.psnr(_hwc(x), _hwc(ref))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``revsde.metrics.ssim`` (scikit-image, 7×7 windows, per channel) of ``(3, H, W)`` images in [0, 1]."""
    return metrics.ssim(_hwc(x), _hwc(ref))


def image_seed(name: str, seed: int) -> int:
    """The degradation seed of a named test image: fixed per name, independent of which images run."""
    return seed + zlib.crc32(name.encode())


def evaluate_restore(model, task: str | None = None, nfe: int = 10, sampler: str = "mrs", images=HELD_OUT, *,
                     seed: int = 0, sde=None, grid=None, progress: bool = False, return_images: bool = False,
                     net_prediction: str = "noise", **options) -> dict:
    """Restore the held-out photos (degraded with fixed seeds) and score them.

    ``model``: an exported ``.safetensors`` path, a network ``net(x, time, mu)`` (with ``sde``, default
    ``MRSDE()``, and its output type ``net_prediction``), or a ``ScoreModel``; other keywords are sampler options. ``images``: names or a ``{name: (3, H, W)}`` dict. Each image is
    degraded with ``image_seed(name, seed)``, started from the prior ``μ + λ z`` and sampled with
    ``revsde.sample(sampler, steps=nfe, **options)``. PSNR and SSIM compare the clean image with the
    degraded input and with the restoration, both clipped to [0, 1]. Returns ``{"rows": [...], "mean": {...},
    "nfe", "task", "sampler", "options"}`` (and ``"images"``: name → (degraded, restored) if asked).
    """
    from ..solve import sample

    if isinstance(model, (str, Path)):
        net, sde_, config = load_weights(model)
        task = task or config["task"]
        model = score_model(net, sde_)
    elif not isinstance(model, ScoreModel):
        model = score_model(model.eval(), build_sde() if sde is None else sde, net_prediction)
    if task not in DEGRADATIONS:
        raise ValueError(f"unknown restoration task {task!r}; available: {', '.join(DEGRADATIONS)}")
    images = images if isinstance(images, dict) else photos(images)
    rows, outputs, nfe_counted = [], {}, 0
    for name, x0 in images.items():
        mu = degrade(task, x0[None], seed=image_seed(name, seed))
        with torch.no_grad():
            sol = sample(model, mu.shape, mu=mu, sampler=sampler, steps=nfe, grid=grid, seed=seed,
                         progress=progress, **options)
        restored, shown = sol.x[0].clamp(0, 1), mu[0].clamp(0, 1)
        nfe_counted = sol.nfe
        rows.append({"image": name, "psnr_in": psnr(shown, x0), "ssim_in": ssim(shown, x0),
                     "psnr": psnr(restored, x0), "ssim": ssim(restored, x0)})
        if return_images:
            outputs[name] = (shown, restored)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr_in", "ssim_in", "psnr", "ssim")}
    result = {"task": task, "sampler": sampler, "options": options, "nfe": nfe_counted, "rows": rows, "mean": mean}
    if return_images:
        result["images"] = outputs
    return result


# --- command line --------------------------------------------------------------------------------
TRAIN_DESCRIPTION = """\
Train a built-in model. 'restore': IR-SDE's ConditionalUNet as an MR-diffusion restorer for --task on
random patches of the photos that ship with scikit-image and scikit-learn (the held-out test photos
are never used), degraded on the fly. Checkpoints go to OUT/last.pt (atomically, every
--checkpoint-every steps and on Ctrl-C) and a rerun with the same OUT resumes from them; the losses
go to OUT/train_log.jsonl. --export writes the EMA weights as safetensors when training ends."""


def add_train_parser(commands) -> None:
    """Register ``revsde train restore …`` on the CLI's subparsers."""
    import argparse

    p = commands.add_parser("train", help="train the small built-in models", description=TRAIN_DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["restore"], help="what to train: restore (MR-diffusion image restoration)")
    p.add_argument("--task", choices=list(DEGRADATIONS), default="denoise", help="the degradation (default: denoise)")
    p.add_argument("--steps", type=int, required=True, metavar="N", help="total training steps")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for last.pt and train_log.jsonl")
    p.add_argument("--nf", type=int, default=16, help="base channel width of the UNet (default: 16)")
    p.add_argument("--depth", type=int, default=3, help="UNet levels (default: 3)")
    p.add_argument("--batch", type=int, default=8, help="patches per step (default: 8)")
    p.add_argument("--patch", type=int, default=64, help="patch side in pixels (default: 64)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate, cosine-decayed (default: 2e-4)")
    p.add_argument("--loss", choices=list(LOSSES), default="matching",
                   help="matching: IR-SDE's maximum-likelihood L1 loss (default); noise: plain eps-MSE")
    p.add_argument("--prediction", choices=list(PREDICTIONS), default="noise",
                   help="what the net outputs: noise (IR-SDE's eps, default), velocity or data")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights (default: 0.999)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0, help="seed of the patches, times and noise (default: 0)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start afresh even if OUT/last.pt exists")
    p.add_argument("--export", default=None, metavar="FILE.safetensors", help="write the EMA weights here at the end")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=_run)


def _run(args) -> int:
    import sys

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = train_restore(args.task, args.output, args.steps, batch=args.batch, patch=args.patch, lr=args.lr,
                           loss=args.loss, prediction=args.prediction, nf=args.nf, depth=args.depth, ema=args.ema, threads=args.threads,
                           checkpoint_every=args.checkpoint_every, seed=args.seed, progress=progress,
                           resume=args.resume)
    state = "stopped" if result.interrupted else "finished"
    loss = "n/a" if result.loss is None else f"{result.loss:.4g}"
    print(f"{state} at step {result.step}/{result.steps} ({result.elapsed_s / 60:.1f} min, loss {loss}); "
          f"checkpoint {result.checkpoint}")
    if args.export and not result.interrupted:
        print(f"wrote {export_weights(result.checkpoint, args.export)}")
    return 130 if result.interrupted else 0

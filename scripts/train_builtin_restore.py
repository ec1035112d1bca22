"""Train the built-in MR-diffusion restoration models, export them and write their model cards.

    python scripts/train_builtin_restore.py                 # denoise, the chosen defaults
    python scripts/train_builtin_restore.py --task deblur --steps 6000

Training resumes from ``OUT/<task>/last.pt`` (rerun the same command after an interruption). When it
reaches its steps, the EMA weights go to ``revsde/weights/restore_<task>.safetensors`` and a model card
``restore_<task>.md`` beside them reports the data, the settings, the wall time and the held-out
PSNR/SSIM of the degraded inputs and of the restorations at each NFE.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revsde.apps import restore_data, restore_eval, train  # noqa: E402
from revsde.apps.files import atomic_output  # noqa: E402
from revsde.sde import MRSDE  # noqa: E402

# Chosen from measurements on this CPU (one thread, batch 8, 64 px patches): nf=16 runs ~1.5 it/s and
# nf=32 ~0.5 it/s, so nf=16 gets 3x the steps in the hour (5000 steps ≈ 55 min). At 500 steps the
# held-out 128 px crops restore (mrs, 10 NFE) to 15.1 dB with ε-prediction at lr 1e-3 (13.9 dB at lr
# 2e-4 after 1000 steps) but to 24.4 dB with velocity prediction (input: 20.7 dB): an ε-net must learn
# ε = (x − μ)/σ_t near t = T almost exactly, which a velocity net gets for free.
#
# The SDE's stationary std λ (in /255) follows IR-SDE's configs where its value matters: a deblurring
# model on λ = 50/255 (the denoiser's) learned to denoise but not to deblur (the sampling noise it must
# remove dwarfs a mild blur), so deblurring uses IR-SDE's deblurring λ = 10/255, and the data loss (L1 of
# x̂₀), which teaches the restoration at every t where the ε-losses see it only through noise.
# Blind deblurring of a mix of Gaussian and motion blur did not learn at this size on CPU: nf 16 / depth 3
# for 4000 steps gained +0.31 dB on the held-out photos at 1 NFE, nf 24 / depth 4 was at +0.13 dB after
# 2250 steps. Gaussian blur alone learns fast (+2.05 dB at step 750), so the built-in deblurrer is a
# Gaussian deblurrer; motion_deblur is a task to train (its defaults: the larger net, more steps).
DEFAULTS = {
    "denoise": {"steps": 5000, "nf": 16, "depth": 3, "lr": 1e-3, "prediction": "velocity", "sigma": 50},
    "deblur": {"steps": 2500, "nf": 16, "depth": 3, "lr": 1e-3, "prediction": "velocity", "sigma": 10, "loss": "data"},
    "motion_deblur": {"steps": 10000, "nf": 24, "depth": 4, "lr": 1e-3, "prediction": "velocity", "sigma": 10,
                      "loss": "data"},
    "inpaint": {"steps": 5000, "nf": 16, "depth": 3, "lr": 1e-3, "prediction": "velocity", "sigma": 50},
}
LOSS_NAMES = {"matching": "IR-SDE maximum-likelihood L1", "noise": "ε-MSE", "data": "L1 of the clean-image estimate x̂₀"}


def card(task: str, config: dict, result, evals: list[dict], command: str, weights: Path) -> str:
    sde = config["sde"]
    lines = [
        f"# revsde built-in model: restore_{task}",
        "",
        f"IR-SDE's `ConditionalUNet` (nf={config['nf']}, depth={config['depth']}, "
        f"{config['n_params'] / 1e6:.2f} M parameters) trained by revsde for MR-diffusion "
        f"**{task}**: {restore_data.get_degradation(task).description}.",
        "",
        "## Use",
        "",
        "```python",
        "from revsde.apps.train import load_weights, score_model",
        f"net, sde, config = load_weights('revsde/weights/{weights.name}')",
        "model = score_model(net, sde)   # revsde.sample(model, mu.shape, mu=mu, sampler='mrs', steps=10)",
        "```",
        "",
        "## Training",
        "",
        f"- command: `{command}`",
        f"- data: random {config['patch']}×{config['patch']} crops (8 flips/rotations) of the photos shipped in "
        f"scikit-image and scikit-learn, degraded on the fly; {len(restore_data.split_names('train'))} training "
        f"photos: {', '.join(restore_data.split_names('train'))}. Held out (never trained on): "
        f"{', '.join(restore_data.HELD_OUT)} (`skimage.data.cat` is `chelsea` and is excluded).",
        f"- SDE: MRSDE(stationary_std={sde['stationary_std']:.5f} (= {sde['stationary_std'] * 255:.0f}/255), "
        f"schedule={sde['schedule']}, steps={sde['steps']}, eps={sde['eps']}, convention={sde['convention']})",
        f"- loss: {config['loss']} ({LOSS_NAMES[config['loss']]}); "
        f"t = k/T with k ~ U{{1..T}}",
        f"- network output: {config['prediction']} prediction (`load_weights` wraps it as an ε-predictor, "
        f"IR-SDE's contract; `Prediction` converts exactly)",
        f"- {result.step} steps, batch {config['batch']}, AdamW lr {config['lr']:g} cosine to {config['lr_floor']:g}, "
        f"gradient clip 1.0, EMA {config['ema']} (exported)",
        f"- wall time: {result.elapsed_s / 60:.1f} min on {config['threads']} CPU thread(s) "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}); "
        f"{result.step / max(result.elapsed_s, 1e-9):.2f} it/s",
        "",
        "## Held-out results",
        "",
        "Each held-out photo, full size, degraded with a fixed seed, restored from the prior μ + λz. "
        "PSNR (dB) / SSIM against the clean photo, both images clipped to [0, 1].",
        "",
        "| sampler | NFE | image | input PSNR | input SSIM | restored PSNR | restored SSIM |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for ev in evals:
        label = ev["sampler"] + ("" if not ev["options"] else " " + ", ".join(f"{k}={v}" for k, v in ev["options"].items()))
        for row in ev["rows"] + [{"image": "**mean**", **ev["mean"]}]:
            lines.append(f"| {label} | {ev['nfe']} | {row['image']} | {row['psnr_in']:.2f} | {row['ssim_in']:.4f} | "
                         f"{row['psnr']:.2f} | {row['ssim']:.4f} |")
    best = max(evals, key=lambda ev: ev["mean"]["psnr"])
    lines += ["", "mrs is the MR Sampler's default here: ODE, data prediction, order 2, log-SNR grid. Few steps "
              "land near the posterior mean E[x0 | μ] (smooth, highest PSNR/SSIM); more steps follow the learned "
              "distribution more closely and draw a sample of p(x0 | μ), with plausible texture that PSNR and SSIM "
              "count as error.", "",
              f"The highest mean PSNR is at **{best['nfe']} NFE** ({best['mean']['psnr']:.2f} dB, "
              f"{best['mean']['psnr'] - best['mean']['psnr_in']:+.2f} dB over the input): "
              f"`revsde restore … --task {task} --nfe {best['nfe']}`.", "",
              f"Evaluation took {sum(ev['seconds'] for ev in evals) / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=list(DEFAULTS), default="denoise")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--nf", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--out", default=str(ROOT / "out" / "train"), help="folder holding <task>/last.pt")
    parser.add_argument("--weights", default=str(ROOT / "revsde" / "weights"))
    parser.add_argument("--nfe", default="5,10,20", help="comma-separated NFEs of the held-out evaluation")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    settings = {**DEFAULTS[args.task], **{k: v for k, v in (("steps", args.steps), ("nf", args.nf),
                                                               ("depth", args.depth)) if v is not None}}
    command = "python scripts/train_builtin_restore.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.out) / args.task
    result = train.train_restore(args.task, out_dir, settings["steps"], nf=settings["nf"], depth=settings["depth"],
                                 lr=settings["lr"], prediction=settings["prediction"],
                                 loss=settings.get("loss", "matching"), sde=MRSDE(stationary_std=settings["sigma"] / 255), threads=args.threads,
                                 checkpoint_every=args.checkpoint_every, progress=args.progress)
    if result.interrupted:
        print(f"stopped at step {result.step}/{result.steps}; rerun the same command to resume")
        return 130
    weights = Path(args.weights) / f"restore_{args.task}.safetensors"
    train.export_weights(result.checkpoint, weights)
    print(f"wrote {weights}")

    net, sde, config = train.load_weights(weights)
    config = {**config, "threads": args.threads, "n_params": sum(p.numel() for p in net.parameters())}
    evals = []
    for nfe in (int(n) for n in args.nfe.split(",") if n.strip()):
        start = time.perf_counter()
        ev = restore_eval.evaluate_restore(train.score_model(net, sde), args.task, nfe=nfe, sampler="mrs")
        ev["seconds"] = time.perf_counter() - start
        evals.append(ev)
        print(f"mrs NFE {ev['nfe']}: input {ev['mean']['psnr_in']:.2f} dB / {ev['mean']['ssim_in']:.4f}, "
              f"restored {ev['mean']['psnr']:.2f} dB / {ev['mean']['ssim']:.4f} ({ev['seconds']:.0f} s)", flush=True)
    with atomic_output(out_dir / "eval.json") as f:
        f.write(json.dumps(evals, indent=1).encode())
    card_path = weights.with_suffix(".md")
    with atomic_output(card_path) as f:
        f.write(card(args.task, config, result, evals, command, weights).encode())
    print(f"wrote {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

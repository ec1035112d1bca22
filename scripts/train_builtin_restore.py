"""Train the built-in MR-diffusion restoration models, export them and write their model cards.

    python scripts/train_builtin_restore.py                 # denoise, the chosen defaults
    python scripts/train_builtin_restore.py --task deblur --steps 6000

Training resumes from ``OUT/<task>/last.pt`` (rerun the same command after an interruption). A task with
fine-tunes (``FINE_TUNES``) then runs each from the previous stage's EMA weights, in ``OUT/<task>_<name>``;
``--start-from FILE`` (e.g. a copy of the committed weights) starts the fine-tunes from that model instead
of training stage 1. When the last stage reaches its steps, the EMA weights go to
``revsde/weights/restore_<task>.safetensors`` and a model card ``restore_<task>.md`` beside them reports
the data, the stages, the wall time and the held-out PSNR/SSIM of the degraded inputs and of the
restorations at each NFE; the best setting and the NFEs that improved on the input are stored in the
file (``restore_model.recommend``), so ``revsde restore`` uses the one and warns outside the others.
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

from revsde.apps.restore import data as restore_data

from revsde.apps.restore import eval as restore_eval

from revsde.apps.restore import train
from revsde.apps.restore import model as restore_model  # noqa: E402
from revsde.files import atomic_output  # noqa: E402
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
# Fine-tunes, each from the previous stage's EMA weights with a fresh optimiser: (name, what, settings).
# Denoise, stage 2: the matching loss weights the error of x̂₀ at step t by the posterior mean's coefficient
# on it, ≈ 1 at t = 1/T but 0.044 at t = T/2 and 0.001 at t = T, so x̂₀ near the prior was never learned:
# on a 128 px crop of `camera` (input 20.9 dB) x̂₀(T) scored 6.8 dB and mrs 6.8 / 18.0 / 15.1 dB at 1 / 2 / 3
# NFE (31.0 at 5). Adding 0.1 × the data loss (L1 of x̂₀) trains x̂₀ at every t and leaves small t to the
# matching loss, where its coefficient is above 0.1. (The committed run began as 1200 steps and was resumed at
# step 169 with 1000 and at step 490 with 650, to leave the session time for the inpainter on a shared CPU:
# its config's lr_history says so.)
FINE_TUNES = {
    "denoise": [("lownfe", "adds 0.1 × the data loss, so that x̂₀ is learned near t = T: the matching loss weights "
                           "its error at t by the posterior mean's coefficient on it, 0.001 at t = T, and 1-3 NFE "
                           "runs that rest on x̂₀(T) gave colour noise: stage 1 scored 7.00 / 19.58 / 13.52 / 30.53 / "
                           "28.49 dB on the photos below at 1 / 2 / 3 / 5 / 10 NFE",
                 {"steps": 650, "lr": 2e-4, "data_weight": 0.1, "seed": 1})],
    # Inpaint, stage 2: stage 1 learned rectangles of 6-19 px and strokes 2-5 px on 64 px crops, and 20-60 px
    # holes stayed white or filled with coloured speckle. The masks a user draws (restore_data.inpaint_mask:
    # rectangles up to a quarter of the 128 px crop, strokes up to 20 px wide) on 128 px crops, batch 4 (the
    # pixels of two old batches), with the data term that trains x̂₀ near t = T as for the denoiser.
    "inpaint": [("masks", "masks as a user draws them: rectangles up to a quarter of the 128 px crop, strokes up "
                          "to 20 px wide; and 0.1 × the data loss, as the denoiser's stage 2. Stage 1 scored "
                          "7.12 / 16.37 / 14.82 / 19.59 / 19.96 dB on the photos below at 1 / 2 / 3 / 5 / 10 NFE, "
                          "and at 5 NFE 18.39 / 15.98 / 7.45 / 5.23 dB inside 8 / 16 / 32 / 64 px squares, "
                          "18.46 / 14.94 / 7.02 dB inside 5 / 10 / 20 px strokes (the table below)",
                 {"steps": 900, "lr": 2e-4, "data_weight": 0.1, "seed": 1, "patch": 128, "batch": 4})],
}
#: what a task's degradation was before configs recorded it, where it has changed since
EARLIER_DEGRADATIONS = {"inpaint": "random strokes (2–5 px thick, 13–38 px long) and rectangles (6–19 px sides) "
                                   "over 15–30 % of the pixels, filled with 1.0"}
LOSS_NAMES = {"matching": "IR-SDE maximum-likelihood L1", "noise": "ε-MSE", "data": "L1 of the clean-image estimate x̂₀"}


def schedule_changes(stage: dict) -> str:
    """The totals a resumed run switched its cosine between (``lr_history``), if it did."""
    history = stage.get("lr_history")
    if not history:
        return ""
    return (" (resumed with other totals to fit its session: the cosine ran "
            + ", then ".join(f"over {total} steps from step {start}" for start, total in history) + ")")


def stage_lines(config: dict) -> list[str]:
    """The card's lines on the training stages: the run itself and the runs it was fine-tuned from."""
    chain = restore_model.training_stages(config)
    lines = []
    for k, stage in enumerate(chain, 1):
        name = f"stage {k}" if len(chain) > 1 else "training"
        tunes = FINE_TUNES.get(config["task"], [])
        start = "" if k == 1 else f", a fine-tune of stage {k - 1}'s EMA weights with a fresh optimiser"
        if 2 <= k <= len(tunes) + 1:
            start += f" ({tunes[k - 2][1]})"
        loss = f"{stage['loss']} ({LOSS_NAMES[stage['loss']]})"
        if stage.get("data_weight"):
            loss = f"matching + {stage['data_weight']:g} × data ({LOSS_NAMES['matching']} plus {stage['data_weight']:g} × the L1 of x̂₀)"
        draws = f", examples drawn from seed {stage['seed']}" if stage.get("seed") else ""
        degradation = stage.get("degradation") or EARLIER_DEGRADATIONS.get(config["task"])
        if degradation and degradation != restore_data.get_degradation(config["task"]).description:
            draws += f", degradation: {degradation}"
        lines.append(f"  - {name}{start}: {stage['trained_steps']} steps, loss {loss}, batch {stage['batch']} of "
                     f"{stage['patch']}×{stage['patch']} crops{draws}, AdamW lr {stage['lr']:g} cosine to "
                     f"{stage['lr_floor']:g}{schedule_changes(stage)}; {stage['elapsed_s'] / 60:.1f} min, "
                     f"{stage['trained_steps'] / max(stage['elapsed_s'], 1e-9):.2f} it/s")
    return lines


def best_and_validated(evals: list[dict]) -> tuple[dict, tuple[int, int]]:
    """The evaluation with the highest mean PSNR (the fewer NFE on a tie), and the range of evaluated NFEs
    around it that all improved on the input's mean PSNR: what ``restore_model.recommend`` stores."""
    evals = sorted(evals, key=lambda ev: ev["nfe"])
    best = max(evals, key=lambda ev: (ev["mean"]["psnr"], -ev["nfe"]))
    i = j = evals.index(best)
    while i > 0 and evals[i - 1]["mean"]["psnr"] > evals[i - 1]["mean"]["psnr_in"]:
        i -= 1
    while j + 1 < len(evals) and evals[j + 1]["mean"]["psnr"] > evals[j + 1]["mean"]["psnr_in"]:
        j += 1
    return best, (evals[i]["nfe"], evals[j]["nfe"])


def hole_table(rows: list[dict]) -> list[str]:
    lines = ["| hole | size (px) | NFE | PSNR in the holes | biharmonic fill, in the holes | PSNR of the crop "
             "(input) | restored SSIM |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['size']} | {r['nfe']} | {r['psnr_hole']:.2f} | "
                     f"{r['psnr_hole_biharmonic']:.2f} | {r['psnr']:.2f} ({r['psnr_in']:.2f}) | {r['ssim']:.4f} |")
    return lines


def card(task: str, config: dict, evals: list[dict], command: str, weights: Path, holes: list[dict] | None = None,
         eval_seconds: float = 0.0) -> str:
    sde = config["sde"]
    best, (lo, hi) = best_and_validated(evals)
    total = sum(int(stage["trained_steps"]) for stage in restore_model.training_stages(config))
    lines = [
        f"# revsde built-in model: restore_{task}",
        "",
        f"IR-SDE's `ConditionalUNet` (nf={config['nf']}, depth={config['depth']}, "
        f"{config['n_params'] / 1e6:.2f} M parameters) trained by revsde for MR-diffusion "
        f"**{task}**: {restore_data.get_degradation(task).description}.",
        "",
        "## Use",
        "",
        f"`revsde restore … --task {task}` uses **mrs at {best['nfe']} NFE** (the highest mean PSNR below), stored in "
        f"the file's metadata (`config[\"recommended\"]`); a run outside mrs at {lo}"
        + (f"–{hi}" if hi > lo else "") + " NFE (the evaluated NFEs that improved on the input) warns on stderr.",
        "",
        "```python",
        "from revsde.apps.restore.model import load_weights, score_model",
        f"net, sde, config = load_weights('revsde/weights/{weights.name}')",
        f"model = score_model(net, sde)   # revsde.sample(model, mu.shape, mu=mu, sampler='mrs', steps={best['nfe']})",
        "```",
        "",
        "## Training",
        "",
        f"- command: `{command}`",
        f"- data: random crops (8 flips/rotations) of the photos shipped in "
        f"scikit-image and scikit-learn, degraded on the fly; {len(restore_data.split_names('train'))} training "
        f"photos: {', '.join(restore_data.split_names('train'))}. Held out (never trained on): "
        f"{', '.join(restore_data.HELD_OUT)} (`skimage.data.cat` is `chelsea` and is excluded).",
        f"- SDE: MRSDE(stationary_std={sde['stationary_std']:.5f} (= {sde['stationary_std'] * 255:.0f}/255), "
        f"schedule={sde['schedule']}, steps={sde['steps']}, eps={sde['eps']}, convention={sde['convention']}); "
        f"t = k/T with k ~ U{{1..T}}",
        f"- network output: {config['prediction']} prediction (`load_weights` wraps it as an ε-predictor, "
        f"IR-SDE's contract; `Prediction` converts exactly)",
        f"- {total} steps in all, gradient clip 1.0, EMA {config['ema']} (exported), {config['threads']} CPU thread "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}):",
        *stage_lines(config),
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
    lines += ["", "mrs is the MR Sampler's default here: ODE, data prediction, order 2, log-SNR grid. Few steps "
              "land near the posterior mean E[x0 | μ] (smooth, highest PSNR/SSIM); more steps follow the learned "
              "distribution more closely and draw a sample of p(x0 | μ), with plausible texture that PSNR and SSIM "
              "count as error.", "",
              f"The highest mean PSNR is at **{best['nfe']} NFE** ({best['mean']['psnr']:.2f} dB, "
              f"{best['mean']['psnr'] - best['mean']['psnr_in']:+.2f} dB over the input): `revsde restore` uses it "
              f"when given no --sampler, --nfe or --option.", ""]
    if holes:
        biggest = {kind: max(r["size"] for r in holes if r["kind"] == kind) for kind in ("rectangle", "stroke")}

        def rect(size):
            return next(r for r in holes if r["kind"] == "rectangle" and r["size"] == size)
        lines += ["## Limits: holes by size", "",
                  f"Trained on rectangles of {restore_data.INPAINT_RECT[0]}–{restore_data.INPAINT_RECT[1]} px "
                  f"(up to a quarter of its {restore_data.INPAINT_SCALE} px training crops) and brush strokes "
                  f"{restore_data.INPAINT_STROKE[0]}–{restore_data.INPAINT_STROKE[1]} px wide. Measured on the "
                  "central 256 px square of each held-out photo with 10 % of its pixels missing in holes of one "
                  "kind and size (`restore_eval.evaluate_inpaint_sizes`, mean over the photos); PSNR inside the "
                  "holes is what the model filled in.", "", *hole_table(holes), "",
                  f"Inside the holes the PSNR falls from {holes[0]['psnr_hole']:.1f} dB at {holes[0]['size']} px "
                  f"squares to {rect(biggest['rectangle'])['psnr_hole']:.1f} dB at {biggest['rectangle']} px "
                  f"(the white input: about 5 dB there). What the eye sees (held-out `coffee`, 256 px): holes up to "
                  "16 px and thin strokes are filled with the surrounding colours but grainy; 32 px squares and "
                  "20 px strokes get grey or coloured speckle rather than texture; 64 px squares, beyond the "
                  "training sizes, stay mostly white. Scikit-image's biharmonic interpolation, a smooth fill, "
                  f"scores higher inside the holes at {sum(r['psnr_hole_biharmonic'] > r['psnr_hole'] for r in holes)} "
                  f"of the {len(holes)} sizes. The network is not told where the holes are: it takes white (1.0) "
                  "for missing, so white highlights of a photo can get speckled too. It is a 2.4 M-parameter model "
                  "trained on CPU: use it for scratches and small holes, not to remove objects.", ""]
    lines += [f"Evaluation took {eval_seconds / 60:.1f} min (`{command.split(' --')[0]} --task {task} --card-only` "
              "evaluates the committed weights again and writes this card).", ""]
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
    parser.add_argument("--nfe", default="1,2,3,5,10", help="comma-separated NFEs of the held-out evaluation")
    parser.add_argument("--start-from", default=None, metavar="FILE",
                        help="start the fine-tunes from this exported model or last.pt instead of training stage 1")
    for task, tunes in FINE_TUNES.items():
        for name, _, stage in tunes:
            parser.add_argument(f"--{name}-steps", type=int, default=None,
                                help=f"steps of the {task} model's {name!r} fine-tune (default: {stage['steps']}; "
                                     "0 skips it)")
    parser.add_argument("--train-only", action="store_true", help="export the weights, without the evaluation and card")
    parser.add_argument("--card-only", action="store_true",
                        help="no training: evaluate the weights in --weights, store their recommendation, write the card")
    parser.add_argument("--reuse-eval", action="store_true",
                        help="with --card-only: the evaluation saved in OUT/<task>/eval.json instead of a new one")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    settings = {**DEFAULTS[args.task], **{k: v for k, v in (("steps", args.steps), ("nf", args.nf),
                                                               ("depth", args.depth)) if v is not None}}
    command = "python scripts/train_builtin_restore.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.out) / args.task
    base = {"nf": settings["nf"], "depth": settings["depth"], "prediction": settings["prediction"],
            "sde": MRSDE(stationary_std=settings["sigma"] / 255), "threads": args.threads,
            "checkpoint_every": args.checkpoint_every, "progress": args.progress}
    tunes = [(name, {**stage, **({"steps": getattr(args, f"{name}_steps")}
                                 if getattr(args, f"{name}_steps") is not None else {})})
             for name, _, stage in FINE_TUNES.get(args.task, ())]
    tunes = [(name, stage) for name, stage in tunes if stage["steps"] > 0]
    if args.card_only:
        command = f"python scripts/train_builtin_restore.py --task {args.task}"
    elif args.start_from is not None:
        if not tunes:
            raise SystemExit(f"--start-from: task {args.task} has no fine-tune to start")
        init = Path(args.start_from)
    else:
        result = train.train_restore(args.task, out_dir, settings["steps"], lr=settings["lr"],
                                     loss=settings.get("loss", "matching"), patch=settings.get("patch", 64), **base)
        if result.interrupted:
            print(f"stopped at step {result.step}/{result.steps}; rerun the same command to resume")
            return 130
        init = result.checkpoint
    for name, stage in ([] if args.card_only else tunes):
        out_dir = Path(args.out) / f"{args.task}_{name}"
        result = train.train_restore(args.task, out_dir, stage["steps"], lr=stage["lr"],
                                     loss=stage.get("loss", "matching"), data_weight=stage.get("data_weight", 0.0),
                                     patch=stage.get("patch", 64), batch=stage.get("batch", 8),
                                     seed=stage.get("seed", 0), init_from=init, **base)
        if result.interrupted:
            print(f"stopped at step {result.step}/{result.steps} of fine-tune {name}; rerun the same command to resume")
            return 130
        init = result.checkpoint
    weights = Path(args.weights) / f"restore_{args.task}.safetensors"
    if not args.card_only:
        restore_model.export_weights(result.checkpoint, weights)
        print(f"wrote {weights}")
    if args.train_only:
        return 0

    net, sde, config = restore_model.load_weights(weights)
    config = {**config, "threads": args.threads, "n_params": sum(p.numel() for p in net.parameters())}
    eval_path = Path(args.out) / args.task / "eval.json"
    if args.reuse_eval:  # the card again from the last evaluation of these weights (e.g. after a wording change)
        saved = json.loads(eval_path.read_text())
        evals, holes, seconds = saved["evals"], saved["holes"], saved["seconds"]
    else:
        evals, start = [], time.perf_counter()
        for nfe in (int(n) for n in args.nfe.split(",") if n.strip()):
            ev = restore_eval.evaluate_restore(restore_model.score_model(net, sde), args.task, nfe=nfe, sampler="mrs")
            evals.append(ev)
            print(f"mrs NFE {ev['nfe']}: input {ev['mean']['psnr_in']:.2f} dB / {ev['mean']['ssim_in']:.4f}, "
                  f"restored {ev['mean']['psnr']:.2f} dB / {ev['mean']['ssim']:.4f}", flush=True)
        holes = None
        if args.task == "inpaint":
            holes = restore_eval.evaluate_inpaint_sizes(restore_model.score_model(net, sde),
                                                        nfe=best_and_validated(evals)[0]["nfe"])
            for row in holes:
                print(f"{row['kind']} {row['size']} px: {row['psnr_hole']:.2f} dB in the holes", flush=True)
        seconds = time.perf_counter() - start
        eval_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(eval_path) as f:
            f.write(json.dumps({"evals": evals, "holes": holes, "seconds": seconds}, indent=1).encode())
    best, validated = best_and_validated(evals)
    restore_model.recommend(weights, best["nfe"], validated)
    print(f"recommended: mrs at {best['nfe']} NFE; validated {validated[0]}-{validated[1]} NFE")
    card_path = weights.with_suffix(".md")
    with atomic_output(card_path) as f:
        f.write(card(args.task, config, evals, command, weights, holes, seconds).encode())
    print(f"wrote {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``revsde train restore|speech|image|noise-classifier``: the command line of the built-in models' training.

Both train in the background-friendly way of ``trainer.fit``: checkpoints in OUT/last.pt (atomically,
every --checkpoint-every steps and on Ctrl-C / SIGTERM), a rerun with the same OUT resumes from them,
losses in OUT/train_log.jsonl, and --export writes the EMA weights as safetensors at the end.
"""
from __future__ import annotations

import argparse
import sys

TRAIN_DESCRIPTION = """\
Train a built-in model.
  restore  IR-SDE's ConditionalUNet as an MR-diffusion restorer for --task on random patches of the
           photos that ship with scikit-image and scikit-learn (the held-out photos are never used),
           degraded on the fly.
  speech   SGMSE+ (NCSN++ on the OUVE SDE, SGMSE+'s loss) on clean speech spoken by espeak-ng mixed
           with synthetic noises at -5...15 dB SNR (held-out voices, sentences and noises never used).
  image    a small DDPM (diffusers UNet2DModel, eps-prediction, the default 1000-step linear schedule)
           on scikit-learn's 8x8 digits upsampled to 16x16, with the constant or the debiased
           (Yu et al. 2023, 1/sqrt(SNR)) loss weighting; --diffusers-folder also writes a DDPMPipeline.
  noise-classifier
           Denoising MCMC's noise-level classifier for the image model: a small CNN (the reference's
           SimpleCNN) telling which of --levels noise levels (uniform in log-SNR) a digit was noised to.
Checkpoints go to OUT/last.pt (atomically, every --checkpoint-every steps and on Ctrl-C) and a rerun
with the same OUT resumes from them; the losses go to OUT/train_log.jsonl. --export writes the EMA
weights as safetensors when training ends."""


def _common(p) -> None:
    p.add_argument("--steps", type=int, required=True, metavar="N", help="total training steps")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for last.pt and train_log.jsonl")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights (default: 0.999)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, times and noise (default: 0)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start afresh even if OUT/last.pt exists")
    p.add_argument("--export", default=None, metavar="FILE.safetensors", help="write the EMA weights here at the end")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: when stderr is a terminal)")


def add_train_parser(commands) -> None:
    """Register ``revsde train restore …`` and ``revsde train speech …`` on the CLI's subparsers (their
    arguments, which name the training modules' choices, are added when ``train`` is parsed)."""
    commands.add_parser("train", help="train the small built-in models", description=TRAIN_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter, populate=_train_arguments)


def _train_arguments(p) -> None:
    from ..apps.restore.data import DEGRADATIONS
    from ..apps.restore.model import PREDICTIONS
    from ..apps.restore.train import LOSSES
    from .common import parse_option
    from ..apps.speech.train import CRP_OBJECTIVES, DEFAULT_NOISES as SPEECH_NOISES, LOSSES as SPEECH_LOSSES, \
        PREDICTIONS as SPEECH_PREDICTIONS

    what = p.add_subparsers(dest="what", required=True, metavar="restore|speech|image|noise-classifier")
    r = what.add_parser("restore", help="MR-diffusion image restoration (IR-SDE)")
    r.add_argument("--task", choices=list(DEGRADATIONS), default="denoise", help="the degradation (default: denoise)")
    r.add_argument("--nf", type=int, default=16, help="base channel width of the UNet (default: 16)")
    r.add_argument("--depth", type=int, default=3, help="UNet levels (default: 3)")
    r.add_argument("--batch", type=int, default=8, help="patches per step (default: 8)")
    r.add_argument("--patch", type=int, default=64, help="patch side in pixels (default: 64)")
    r.add_argument("--lr", type=float, default=2e-4, help="peak learning rate, cosine-decayed (default: 2e-4)")
    r.add_argument("--loss", choices=list(LOSSES), default="matching",
                   help="matching: IR-SDE's maximum-likelihood L1 loss (default); noise: plain eps-MSE; data: L1 of "
                        "the clean-image estimate x0_hat")
    r.add_argument("--prediction", choices=list(PREDICTIONS), default="noise",
                   help="what the net outputs: noise (IR-SDE's eps, default), velocity or data")
    r.add_argument("--data-weight", type=float, default=0.0, metavar="W",
                   help="with --loss matching: add W x the data loss, which trains x0_hat near the prior "
                        "(few-NFE runs rest on it; the built-ins' fine-tunes use 0.1; default: 0)")
    r.add_argument("--init-from", default=None, metavar="FILE",
                   help="fine-tune: start from this exported .safetensors or last.pt (its EMA weights)")
    r.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="steps between checkpoints")
    _common(r)
    r.set_defaults(run=_run_restore)

    s = what.add_parser("speech", help="SGMSE+ speech enhancement (NCSN++ on OUVE)")
    s.add_argument("--nf", type=int, default=16, help="NCSN++ base width (default: 16)")
    s.add_argument("--ch-mult", default="1,2,2,2,2", help="NCSN++ width multipliers per level (default: 1,2,2,2,2)")
    s.add_argument("--res-blocks", type=int, default=1, help="residual blocks per level (default: 1)")
    s.add_argument("--batch", type=int, default=8, help="crops per step (default: 8)")
    s.add_argument("--frames", type=int, default=128, help="STFT frames per crop, a multiple of 64 (default: 128)")
    s.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of Adam, cosine-decayed (default: 5e-4)")
    s.add_argument("--prediction", choices=list(SPEECH_PREDICTIONS), default="velocity",
                   help="what the net outputs: velocity (default), score (SGMSE+'s), noise or data")
    s.add_argument("--loss", choices=list(SPEECH_LOSSES), default="sgmse",
                   help="sgmse: SGMSE+'s 1/2 sum|sigma*s + z|^2 (default); denoiser: 1/2 sum|D - mu_t|^2; "
                        "data: 1/2 sum|x0_hat - x0|^2 (SGMSE's data-prediction MSE); crp: through the sampler "
                        "(Lay et al. 2023's CRP fine-tune: the --crp-* run unrolled from the prior, its output "
                        "against the clean crop; use with --init-from)")
    s.add_argument("--crp-sampler", default=None, metavar="NAME",
                   help="with --loss crp: the sampler trained through, as revsde enhance's --sampler (default: mrs)")
    s.add_argument("--crp-nfe", type=int, default=None, metavar="N",
                   help="with --loss crp: its NFE, as revsde enhance's --nfe (default: 2)")
    s.add_argument("--crp-option", type=parse_option, action="append", default=None, metavar="NAME=VALUE",
                   help="with --loss crp: a sampler option, repeatable (default: stochastic=True)")
    s.add_argument("--crp-objective", choices=list(CRP_OBJECTIVES), default=None,
                   help="with --loss crp: sisdr (-SI-SDR of the waveforms, default) or data (1/2 sum|x_hat - x0|^2)")
    s.add_argument("--corpus", type=int, default=600, metavar="N", help="training utterances spoken (default: 600)")
    s.add_argument("--corpus-root", default=None, metavar="DIR", help="the speech cache (default: out/speech)")
    s.add_argument("--t-high", type=float, default=0.0, metavar="P",
                   help="fraction of examples at t ~ U[0.9, 1], where few-NFE samplers start (default: 0, t uniform)")
    s.add_argument("--init-from", default=None, metavar="FILE",
                   help="fine-tune: start from a training checkpoint's EMA weights (last.pt) or an exported "
                        ".safetensors with the same network, SDE and features; fresh optimiser and schedule")
    s.add_argument("--noises", default=",".join(SPEECH_NOISES), metavar="KIND,...",
                   help=f"the noise kinds of the training mix, each as often (default: {','.join(SPEECH_NOISES)}; "
                        "add tones for whistles, beeps and buzzers; the test-only engine is refused)")
    s.add_argument("--device", default="cpu", help="where the network trains: cpu (default) or cuda[:N]")
    s.add_argument("--checkpoint-every", type=int, default=250, metavar="N", help="steps between checkpoints")
    _common(s)
    s.set_defaults(run=_run_speech)

    _add_image_parser(what)
    _add_noise_classifier_parser(what)


def _finish(result, export) -> int:
    state = "stopped" if result.interrupted else "finished"
    loss = "n/a" if result.loss is None else f"{result.loss:.4g}"
    print(f"{state} at step {result.step}/{result.steps} ({result.elapsed_s / 60:.1f} min, loss {loss}); "
          f"checkpoint {result.checkpoint}")
    if export is not None and not result.interrupted:
        print(f"wrote {export(result.checkpoint)}")
    return 130 if result.interrupted else 0


def _progress(args) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


def _run_restore(args) -> int:
    from ..apps.restore.model import export_weights
    from ..apps.restore.train import train_restore

    result = train_restore(args.task, args.output, args.steps, batch=args.batch, patch=args.patch, lr=args.lr,
                           loss=args.loss, prediction=args.prediction, nf=args.nf, depth=args.depth, ema=args.ema,
                           data_weight=args.data_weight, init_from=args.init_from,
                           threads=args.threads, checkpoint_every=args.checkpoint_every, seed=args.seed,
                           progress=_progress(args), resume=args.resume)
    return _finish(result, args.export and (lambda ckpt: export_weights(ckpt, args.export)))


def _run_speech(args) -> int:
    from .common import option_dict
    from ..apps.speech.model import export_weights
    from ..apps.speech.train import SMALL_NET, train_speech

    try:
        ch_mult = tuple(int(v) for v in args.ch_mult.split(","))
    except ValueError:
        raise ValueError(f"--ch-mult must be comma-separated integers (got {args.ch_mult!r})") from None
    net = {**SMALL_NET, "nf": args.nf, "ch_mult": ch_mult, "num_res_blocks": args.res_blocks}
    given = {flag: value for flag, value in (("sampler", args.crp_sampler), ("nfe", args.crp_nfe),
                                             ("objective", args.crp_objective), ("option", args.crp_option))
             if value is not None}
    if given and args.loss != "crp":
        raise ValueError(f"--crp-{next(iter(given))} is for --loss crp (got --loss {args.loss})")
    crp = {key: given[key] for key in ("sampler", "nfe", "objective") if key in given}
    if "option" in given:
        crp["options"] = option_dict(given["option"], "--crp-option")
    result = train_speech(args.output, args.steps, batch=args.batch, frames=args.frames, lr=args.lr,
                          prediction=args.prediction, loss=args.loss, net_config=net, corpus_size=args.corpus,
                          corpus_root=args.corpus_root, ema=args.ema, threads=args.threads,
                          checkpoint_every=args.checkpoint_every, seed=args.seed, progress=_progress(args),
                          resume=args.resume, t_high=args.t_high, init_from=args.init_from, device=args.device,
                          noises=args.noises, crp=crp if args.loss == "crp" else None)
    return _finish(result, args.export and (lambda ckpt: export_weights(ckpt, args.export)))


def _add_image_parser(what) -> None:
    from ..apps.image.train import TIME_SAMPLINGS, WEIGHTINGS

    i = what.add_parser("image", help="unconditional DDPM (or rectified flow) on the 16x16 digits (diffusers "
                                      "UNet2DModel)")
    i.add_argument("--objective", choices=["ddpm", "flow"], default="ddpm",
                   help="ddpm: eps-prediction on diffusers' DDPM table (default); flow: rectified flow, the net "
                        "predicts eps - x0 at x_t = (1 - t) x0 + t eps, time 1000 t")
    i.add_argument("--weighting", choices=list(WEIGHTINGS), default=None,
                   help="with --objective ddpm: constant: plain eps-MSE (default); debiased: eps-MSE x 1/sqrt(SNR), "
                        "normalised to mean 1")
    i.add_argument("--time-sampling", choices=list(TIME_SAMPLINGS), default=None,
                   help="with --objective flow: the distribution of t, uniform (default) or logit_normal (SD3's)")
    i.add_argument("--batch", type=int, default=64, help="images per step (default: 64)")
    i.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of AdamW, cosine-decayed (default: 5e-4)")
    i.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="steps between checkpoints")
    i.add_argument("--diffusers-folder", default=None, metavar="DIR",
                   help="with --export, also write the model as a diffusers pipeline folder here (DDPMPipeline; "
                        "UnconditionalPipeline with a FlowMatchEulerDiscreteScheduler for --objective flow)")
    _common(i)
    i.set_defaults(run=_run_image)


def _run_image(args) -> int:
    from ..apps.image.model import export_diffusers, export_weights
    from ..apps.image.train import train_image, train_image_flow

    if args.diffusers_folder is not None and args.export is None:
        raise ValueError("--diffusers-folder needs --export FILE.safetensors (the folder is written from it)")
    other = {"ddpm": ("--time-sampling", args.time_sampling), "flow": ("--weighting", args.weighting)}[args.objective]
    if other[1] is not None:
        raise ValueError(f"{other[0]} does not apply to --objective {args.objective}")
    common = dict(batch=args.batch, lr=args.lr, ema=args.ema, threads=args.threads,
                  checkpoint_every=args.checkpoint_every, seed=args.seed, progress=_progress(args), resume=args.resume)
    if args.objective == "flow":
        result = train_image_flow(args.output, args.steps, time_sampling=args.time_sampling or "uniform", **common)
    else:
        result = train_image(args.output, args.steps, weighting=args.weighting or "constant", **common)

    def export(ckpt):
        path = export_weights(ckpt, args.export)
        if args.diffusers_folder is not None:
            print(f"wrote {export_diffusers(path, args.diffusers_folder)}")
        return path

    return _finish(result, args.export and export)


def _add_noise_classifier_parser(what) -> None:
    n = what.add_parser("noise-classifier", help="Denoising MCMC's noise-level classifier for the image model")
    n.add_argument("--levels", type=int, default=100, help="noise levels K, uniform in log-SNR (default: 100)")
    n.add_argument("--width", type=int, default=32, help="base channel width of the CNN (default: 32)")
    n.add_argument("--batch", type=int, default=100, help="noised digits per step (default: 100, the reference's)")
    n.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of Adam, cosine-decayed (default: 1e-3)")
    n.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="steps between checkpoints")
    _common(n)
    n.set_defaults(run=_run_noise_classifier)


def _run_noise_classifier(args) -> int:
    from ..apps.image.noise_classifier import export_weights
    from ..apps.image.train import train_noise_classifier

    result = train_noise_classifier(args.output, args.steps, levels=args.levels, batch=args.batch, lr=args.lr,
                                    width=args.width, ema=args.ema, threads=args.threads,
                                    checkpoint_every=args.checkpoint_every, seed=args.seed,
                                    progress=_progress(args), resume=args.resume)
    return _finish(result, args.export and (lambda ckpt: export_weights(ckpt, args.export)))

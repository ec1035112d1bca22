"""The ``revsde`` command (also ``python -m revsde``): it parses, calls the library function, and prints.

Argument errors found by argparse print as one ``revsde COMMAND: error: …`` line (not the usage block)
and those found by the library (``ValueError``) as one ``revsde: error: …`` line, both with exit status 2;
a state that became NaN/Inf, or a file that cannot be written, prints one line and exits 1. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from .common import (Parser, integer, option_dict, options_of, parse_mu, parse_option,  # noqa: F401
                     parse_value)

DESCRIPTION = """\
revsde: a diffusion sampling engine. One solver core for every linear diffusion path (VP, sub-VP,
VE, mean-reverting IR-SDE and OUVE/SGMSE, rectified flow), their reverse SDEs and probability-flow
ODEs, with the samplers of the field as plug-ins. Everything a command does is also a Python call
(revsde.sample, revsde.apps.sample_gmm)."""

SAMPLE_DESCRIPTION = """\
Draw samples from a built-in model and measure them against the exact answer.

The built-in model 'gmm' is a ring of 8 Gaussians in 2-D (radius 2, std 0.25) whose score is exact
under every SDE, so no weights are needed. The run prints the NFE (network evaluations, counted),
the Fréchet distance (FD) between the samples' mean and covariance and the exact ones of the
distribution the sampler should reach (p_t at the SDE's t_min), and the sliced Wasserstein
distance (SWD) to as many exact samples of it. It writes the samples (.npz) and a scatter plot
(.png), each replaced atomically.

With --diffusers PATH it runs a local diffusers pipeline folder (DDPM-style unconditional, or
Stable-Diffusion-style with --prompt) whose scheduler is replaced by RevSDEScheduler built from the
folder's own scheduler config: any sampler below except the adaptive ones, its options with
--option, and RevSDEScheduler's own keys too (e.g. --option final_sigmas_type=sigma_min). The folder
is only read; the images go to the --output folder."""


def _summary(doc: str | None, width: int = 100) -> str:
    """The docstring's first line if it is a sentence, else its first paragraph cut at ``width``."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "")
    first = (doc or "").strip().split("\n")[0].strip().replace("``", "")
    if first.endswith(".") or len(paragraph) <= width:
        return first if first.endswith(".") else paragraph
    return paragraph[:width].rsplit(" ", 1)[0] + " …"


def _traits(name: str) -> str:
    from .. import samplers as samplers_mod

    options = "options: " + (", ".join(samplers_mod.option_names(name)) or "none")
    try:
        smp = samplers_mod.get(name)  # with its default options
    except (TypeError, ValueError):  # a sampler without defaults for every option
        return options
    per_step = smp.evals_per_step
    evals = ("adaptive" if smp.adaptive else "evals/step per method" if per_step is None
             else f"{per_step} eval{'s' if per_step != 1 else ''}/step")
    order = f"order {smp.order:g}" if smp.order is not None else "no strong order"
    return f"{smp.kind.upper()}, {order}, {evals}; default grid {smp.default_grid}; {options}"


def _grid_names() -> list[str]:
    from .. import grids as grids_mod

    return grids_mod.available()


def _sample_epilog() -> str:
    from .. import samplers as samplers_mod

    lines = ["samplers (set their options with --option NAME=VALUE):"]
    for name in samplers_mod.available():
        lines.append(f"  {name:<18} {_summary(samplers_mod.REGISTRY[name].__doc__)}")
        lines.append(f"  {'':<18} {_traits(name)}")
    lines += [
        "",
        f"grids: {', '.join(_grid_names())} (default: the sampler's own)",
        "sdes: vp (linear beta 0.1..20), subvp, ve (sigma 0.01..50), mr (IR-SDE, stationary std 50/255),",
        "      ouve (SGMSE+, theta 1.5, sigma 0.05..0.5); mr and ouve revert to mu",
        "",
        "examples:",
        "  revsde sample --model gmm",
        "  revsde sample --sde ve --sampler pc --steps 200 --option snr=0.1 --option corrector=ald",
        "  revsde sample --sde mr --mu=-1,0.5 --sampler euler_maruyama --steps 200",
        "  revsde sample --sampler ode_rk45 --option rtol=1e-4 --option atol=1e-4",
        "  revsde sample --diffusers ./my-ddpm-pipeline --sampler mrs --option order=3 --steps 15",
        "  revsde sample --diffusers ./my-sd-pipeline --prompt 'a red house' --sampler pc --steps 30",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="revsde", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"revsde {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("sample", help="sample a built-in model and measure the result against the exact answer",
                            description=SAMPLE_DESCRIPTION, lazy_epilog=_sample_epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["gmm"], default="gmm",
                   help="the model: 'gmm', the built-in 2-D Gaussian-mixture ring with its exact score (default)")
    p.add_argument("--diffusers", default=None, metavar="PATH",
                   help="sample a local diffusers pipeline folder instead (model_index.json inside), its "
                        "scheduler replaced by RevSDEScheduler(--sampler, --option ...); writes PNGs")
    p.add_argument("--prompt", default=None, help="with --diffusers: the text of a text-to-image pipeline")
    p.add_argument("--negative-prompt", default=None, help="with --diffusers: the negative prompt")
    p.add_argument("--guidance-scale", type=float, default=None, metavar="G",
                   help="with --diffusers: classifier-free guidance scale (default: the pipeline's)")
    p.add_argument("--sde", choices=["vp", "subvp", "ve", "mr", "ouve"], default="vp",
                   help="the diffusion SDE (default: vp)")
    p.add_argument("--sampler", default=None, metavar="NAME",
                   help="a registry name, listed below (default: ode_heun; mrs with --diffusers)")
    p.add_argument("--steps", type=integer, default=None, metavar="N",
                   help="grid intervals; ignored by adaptive samplers (default: 50; 20 with --diffusers)")
    p.add_argument("--grid", default=None, metavar="NAME", help="time grid")
    p.lazy_help["grid"] = lambda: (f"time grid: {', '.join(_grid_names())} (default: the sampler's own; "
                                   "with --diffusers also 'discrete', the folder's timestep spacing, the default)")
    p.add_argument("--n", type=integer, default=None, metavar="N",
                   help="number of samples, and of exact samples to compare with (default: 2000; "
                        "4 images with --diffusers)")
    p.add_argument("--seed", type=integer, default=0,
                   help="sample b draws from its own generator seeded seed+b (default: 0)")
    p.add_argument("--mu", type=parse_mu, default=None, metavar="X,Y",
                   help="the mean mu of the mean-reverting sdes mr and ouve (default: 1.0,-0.5); "
                        "refused for the others. Write negative values as --mu=-1,0.5")
    p.add_argument("--option", type=parse_option, action="append", default=[], metavar="NAME=VALUE",
                   help="a sampler option, repeatable; VALUE is parsed as None, true/false, an int, "
                        "a float, or else kept as text (e.g. --option corrector=ald --option snr=0.1)")
    p.add_argument("--noise", choices=["gaussian", "brownian"], default="gaussian",
                   help="fresh Gaussian noise per step, or one fixed Brownian path per sample, the same "
                        "at every step count (default: gaussian)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="where to write the samples, exact moments and metadata (default: out/gmm_samples.npz); "
                        "with --diffusers a folder for sample_NNN.png, grid.png, run.json "
                        "(default: out/diffusers)")
    p.add_argument("--plot", default="out/gmm_samples.png", metavar="OUT.png",
                   help="where to write the scatter plot (default: out/gmm_samples.png)")
    p.add_argument("--no-plot", dest="plot", action="store_const", const=None, help="write no plot")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=_run_sample)

    from .media import add_enhance_parser, add_restore_parser
    from .train import add_train_parser

    add_restore_parser(commands)
    add_enhance_parser(commands)

    add_train_parser(commands)

    b = commands.add_parser(
        "bench", help="quality versus NFE on analytic problems with a known exact distribution",
        description="Run every sampler configuration (the MR Sampler in all its orders, predictions and "
                    "ODE/SDE forms, posterior sampling, Euler-Maruyama, PC, Heun, RK45, and on VP diffusers' "
                    "DPM-Solver++ 2M/3M/SDE-2M, UniPC, DDIM, Euler and Heun schedulers on the same model) at "
                    "each NFE on 2-D Gaussian-mixture problems whose score and distribution are exact: 'vp' "
                    "(DDPM's discrete schedule, a ring of 8 Gaussians) and 'mr' (IR-SDE's schedule, data near "
                    "the observation mu). Scores: Frechet distance to the exact moments and sliced Wasserstein "
                    "distance to exact samples. Writes a markdown table, JSON and a log-log PNG plot. Finished cells "
                    "are cached in the output folder, so an interrupted run resumes; under torchrun "
                    "--nproc_per_node=N -m revsde bench ... the cells are split across the N processes.")
    b.add_argument("--task", choices=["gmm", "image", "restore", "speech"], default=None,
                   help="gmm: analytic 2-D problems (default, except with --quick); image: FD-digits (or FID with "
                        "--inception-weights), KID and precision/recall of an unconditional image model, revsde's "
                        "samplers against diffusers' schedulers on the same network (the built-in digits model or "
                        "a diffusers folder; default with --quick); restore: PSNR/SSIM of an MR-diffusion restoration "
                        "model on the held-out photos vs NFE, against posterior sampling at 100 NFE; speech: "
                        "PESQ/ESTOI/SI-SDR/RTF of a speech model on the held-out test pairs vs NFE, SGMSE+'s "
                        "sampler (10-60 NFE) against the MR Sampler (2-20 NFE)")
    b.add_argument("--restore-task", default="denoise", metavar="NAME",
                   help="with --task restore: denoise, deblur, motion_deblur or inpaint (default: denoise)")
    b.add_argument("--model", default="builtin", metavar="builtin|PATH",
                   help="with --task image, restore or speech: the model (image: a diffusers pipeline folder, or "
                        "builtin-flow, the built-in rectified-flow model: diffusers' flow schedulers against "
                        "revsde's samplers, written to bench_image_flow.*; restore, speech: as in revsde restore / "
                        "enhance) (default: builtin)")
    b.add_argument("--quick", action="store_true",
                   help="a small grid that finishes in minutes on a laptop CPU: with --task image (the default "
                        "then) 5 configurations at NFE 5 and 10 on 500 samples; with --task gmm 2000 samples, "
                        "one draw, NFE 5,10,20")
    b.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="with --task image: pytorch-fid's Inception weights file (pt_inception-2015-12-05-"
                        "6726825d.pth) for real FID (default: $REVSDE_INCEPTION_WEIGHTS; without it FD-digits)")
    b.add_argument("--ref-stats", default=None, metavar="NPZ|DIR",
                   help="with --task image and Inception weights: reference statistics, an .npz with mu and sigma "
                        "or a folder of images (default: the scikit-learn digits)")
    b.add_argument("--max-batch", type=int, default=500, metavar="N",
                   help="with --task image: samples per network call (default: 500)")
    b.add_argument("--pairs", type=int, default=None, metavar="N",
                   help="with --task speech: only the first N held-out test pairs (default: all 24)")
    b.add_argument("--crop", type=int, default=128, metavar="PX",
                   help="with --task restore: centre crops of the held-out photos, 0 for whole images (default: 128)")
    b.add_argument("--speed", action="store_true",
                   help="measure speed instead: each sampler's loop overhead per step with a free network, as a "
                        "ratio to diffusers' DPMSolverMultistepScheduler.step in the same process (CPU, one "
                        "thread), and on CUDA eager vs CUDA-graph sampling of a small UNet at batch 1, 4, 16; "
                        "writes bench_speed.md and bench_speed.json")
    b.add_argument("--problems", default="vp,mr",
                   help="comma-separated problems: vp, mr, and the rectified-flow ones flow (the 2-D ring) and flow192 "
                        "(a 3x8x8 six-component mixture), run against diffusers' flow schedulers and written to "
                        "bench_flow.* when only those are given (default: vp,mr)")
    b.add_argument("--nfe", default=None, help="comma-separated target NFEs (default: 5,10,20,50,100; "
                                               "with --task restore 2,3,5,10,20; with --task speech 2,3,5,10,20 for "
                                               "mrs and 10,20,30 for sgmse, whose even values it takes)")
    b.add_argument("--n", type=int, default=None,
                   help="samples per run (default: 10000 for gmm, 2000 for image)")
    b.add_argument("--repeats", type=int, default=3, help="prior draws averaged per cell (default: 3)")
    b.add_argument("--seed", type=int, default=0, help="seed of the first prior draw (default: 0)")
    b.add_argument("--no-diffusers", dest="diffusers", action="store_false",
                   help="leave out diffusers' schedulers")
    b.add_argument("--only", action="append", metavar="LABEL",
                   help="run only this configuration (repeatable; labels as in the table)")
    b.add_argument("-o", "--output", default="out/bench", metavar="DIR",
                   help="folder for bench_gmm.md, bench_gmm.json, bench_gmm.png (default: out/bench), and for "
                        "the cache of finished cells, bench_gmm.cache.jsonl (bench_restore_TASK.*, "
                        "bench_speech.* for the other tasks): run the same command again to resume")
    b.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start afresh: ignore and overwrite the cache of an earlier run in the output folder "
                        "(by default its cells are reused; a cache written with other settings is refused)")
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: when stderr is a terminal)")
    b.set_defaults(run=_run_bench)
    return parser


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers (got {text!r})") from None
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be integers >= 1 (got {text!r})")
    return values


def _run_bench(args) -> int:
    """One small function per task (``_bench_<task>``), each returning its result and its module's ``write``;
    here the shared part: torchrun's process group, the cache, and only rank 0 printing and writing."""
    if args.speed:
        from ..apps import speed

        result = speed.run_speed()
        print(result.markdown())
        for path in speed.write(result, args.output).values():
            print(f"wrote {path}")
        return 0
    from ..apps.harness import Dist

    dist = Dist.from_env()
    try:
        if args.task is None:
            args.task = "image" if args.quick else "gmm"
        if args.quick and args.task not in ("gmm", "image"):
            raise ValueError(f"--quick applies to --task gmm or image (got --task {args.task})")
        run = {"gmm": _bench_gmm, "image": _bench_image, "restore": _bench_restore, "speech": _bench_speech}[args.task]
        common = {"progress": (sys.stderr.isatty() if args.progress is None else args.progress) and dist.main,
                  "resume": args.resume, "dist": dist, "log": print if dist.main else None}
        result, write = run(args, common)
        if dist.main:
            print(result.markdown())
            for path in write(result, args.output).values():
                print(f"wrote {path}")
        dist.barrier()
    finally:
        dist.close()
    return 0


def _cache_path(args, stem: str):
    from pathlib import Path

    return Path(args.output) / f"{stem}.cache.jsonl"


def _bench_gmm(args, common):
    from ..apps import bench

    quick = args.quick
    problems = [p for p in args.problems.split(",") if p]
    stem = "bench_flow" if problems and set(problems) <= bench.FLOW_PROBLEMS else "bench_gmm"
    result = bench.run_gmm_bench(problem_names=problems,
                                 nfes=_int_list(args.nfe or ("5,10,20" if quick else "5,10,20,50,100"), "--nfe"),
                                 n_samples=args.n or (2000 if quick else 10000),
                                 repeats=1 if quick else args.repeats, seed=args.seed, with_diffusers=args.diffusers,
                                 labels=args.only, cache_path=_cache_path(args, stem), **common)
    return result, bench.write


def _bench_image(args, common):
    from ..apps import image_bench, image_configs

    flow = image_bench.is_flow_model(args.model)
    quick = (image_configs.QUICK_FLOW if flow else image_configs.QUICK) if args.quick else {}
    nfes = _int_list(args.nfe, "--nfe") if args.nfe else list(quick.get("nfes", image_bench.NFES))
    labels = args.only or list(quick.get("labels", ())) or None
    if not args.diffusers:
        labels = [c.label for c in image_bench.default_configs(flow)
                  if image_bench.family_of(c) == "revsde" and (labels is None or c.label in labels)]
    result = image_bench.run_image_bench(
        args.model, nfes=nfes, n_samples=args.n or quick.get("n", 2000), seed=args.seed, labels=labels,
        inception_weights=args.inception_weights, ref_stats=args.ref_stats, max_batch=args.max_batch,
        cache_path=_cache_path(args, image_bench.stem_of(args.model)), **common)
    return result, image_bench.write


def _bench_restore(args, common):
    from ..apps import restore_bench

    result = restore_bench.run_restore_bench(
        args.restore_task, args.model, nfes=_int_list(args.nfe or "2,3,5,10,20", "--nfe"), crop=args.crop or None,
        seed=args.seed, cache_path=_cache_path(args, f"bench_restore_{args.restore_task}"), **common)
    return result, restore_bench.write


def _bench_speech(args, common):
    from ..apps import speech_bench
    from ..apps.speech_data import test_set

    nfes = None
    if args.nfe:
        chosen = tuple(_int_list(args.nfe, "--nfe"))
        nfes = {"sgmse": tuple(n for n in chosen if n % 2 == 0), "mrs": chosen}
    pairs = test_set()[:args.pairs] if args.pairs else None
    result = speech_bench.run_speech_bench(args.model, nfes=nfes, pairs=pairs, seed=args.seed,
                                           cache_path=_cache_path(args, "bench_speech"), **common)
    return result, speech_bench.write


def _run_sample(args) -> int:
    options = options_of(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.diffusers is not None:
        return _run_sample_diffusers(args, options, progress)
    for flag, value in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt),
                        ("--guidance-scale", args.guidance_scale)):
        if value is not None:
            raise ValueError(f"{flag} applies only with --diffusers PATH")
    from ..apps.sample import sample_gmm

    output = args.output or "out/gmm_samples.npz"
    result = sample_gmm(sde=args.sde, sampler=args.sampler or "ode_heun", steps=args.steps or 50, grid=args.grid,
                        n=args.n or 2000, seed=args.seed, mu=args.mu, options=options, noise=args.noise,
                        progress=progress, device=args.device)
    print(result.report())
    result.save_npz(output)
    print(f"wrote {output}")
    if args.plot is not None:
        result.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


def _run_sample_diffusers(args, options, progress) -> int:
    from ..apps.sample_diffusers import sample_diffusers

    if args.sde != "vp" or args.mu is not None:
        raise ValueError("--sde and --mu do not apply with --diffusers: the pipeline's scheduler config "
                         "defines its (discrete VP) SDE")
    result = sample_diffusers(args.diffusers, sampler=args.sampler or "mrs", steps=args.steps or 20, grid=args.grid,
                              options=options, n=args.n or 4, seed=args.seed, prompt=args.prompt,
                              negative_prompt=args.negative_prompt, guidance_scale=args.guidance_scale,
                              noise=args.noise, device=args.device, progress=progress)
    print(result.report())
    for path in result.save(args.output or "out/diffusers"):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and --version end here, before torch is imported
    from ..samplers import SamplingError
    from ..solve import NonFiniteStateError

    try:
        return args.run(args)
    except ValueError as error:
        print(f"revsde: error: {error}", file=sys.stderr)
        return 2
    except (NonFiniteStateError, SamplingError, OSError) as error:
        print(f"revsde: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("revsde: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

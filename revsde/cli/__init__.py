"""The ``revsde`` command (also ``python -m revsde``): it parses, calls the library function, and prints.

Argument errors found by argparse print as one ``revsde COMMAND: error: …`` line (not the usage block)
and those found by the library (``ValueError``) as one ``revsde: error: …`` line, both with exit status 2;
a state that became NaN/Inf, or a file that cannot be written, prints one line and exits 1. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from .common import (Parser, add_threads_flag, apply_threads, integer, option_dict, options_of,  # noqa: F401
                     parse_mu, parse_option, parse_value)

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
    p.add_argument("--grid", default=None, metavar="NAME|FILE.json", help="time grid")
    p.lazy_help["grid"] = lambda: (f"time grid: {', '.join(_grid_names())} (default: the sampler's own; "
                                   "with --diffusers also 'discrete', the folder's timestep spacing, the default), "
                                   "or a grid file written by `revsde tune-grid` for this model, sampler, options "
                                   "and --steps (which it sets)")
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
    add_threads_flag(p)
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
    from .bench import add_bench_parser
    from .tune import add_tune_parser

    add_restore_parser(commands)
    add_enhance_parser(commands)
    add_tune_parser(commands)

    add_train_parser(commands)

    add_bench_parser(commands)
    return parser


def _run_sample(args) -> int:
    options = options_of(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.diffusers is not None:
        return _run_sample_diffusers(args, options, progress)
    for flag, value in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt),
                        ("--guidance-scale", args.guidance_scale)):
        if value is not None:
            raise ValueError(f"{flag} applies only with --diffusers PATH")
    from ..apps.mixture.sample import sample_gmm
    from .tune import gmm_model, grid_flag, is_grid_file

    output = args.output or "out/gmm_samples.npz"
    sampler, steps, grid = args.sampler or "ode_heun", args.steps or 50, args.grid
    if is_grid_file(grid):
        grid, steps = grid_flag(grid, model=gmm_model(args.sde), sampler=sampler, options=options, steps=args.steps), None
    result = sample_gmm(sde=args.sde, sampler=sampler, steps=steps, grid=grid,
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
    if args.grid is not None and args.grid.endswith(".json"):
        raise ValueError("--grid FILE.json applies to --model gmm; with --diffusers give a grid name")
    result = sample_diffusers(args.diffusers, sampler=args.sampler or "mrs", steps=args.steps or 20, grid=args.grid,
                              options=options, n=args.n or 4, seed=args.seed, prompt=args.prompt,
                              negative_prompt=args.negative_prompt, guidance_scale=args.guidance_scale,
                              noise=args.noise, device=args.device, progress=progress)
    print(result.report())
    for path in result.save(args.output or "out/diffusers"):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .bench import old_form_error

    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: set before torch starts them
    if old_form_error(argv):
        print(old_form_error(argv), file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)  # --help and --version end here, before torch is imported
    from ..samplers import SamplingError
    from ..solve import NonFiniteStateError

    try:
        apply_threads(args)
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

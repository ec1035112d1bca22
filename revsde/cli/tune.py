"""``revsde tune-grid``: fit a time grid to a model for a sampler (``revsde.grids.fit_grid``) and write it as
a grid file; and ``grid_flag``, which reads the ``--grid FILE.json`` of the other commands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_threads_flag, integer, options_of, parse_mu, parse_option

TUNE_DESCRIPTION = """\
Fit a time grid to a model for one sampler and number of steps, from the model's own samples (LD3:
--n seeded prior draws; a teacher, mrs order 3 at 8x the steps, computes where the PF-ODE takes them;
Adam moves the grid's interior points so that the few-step sampler lands where the teacher does).
No data is read. The grid is written as JSON with the model's fingerprint, the sampler, its options
and the steps; `revsde sample --grid FILE.json` uses it (and refuses it for another model, sampler,
option or number of steps). ODE samplers only (mrs, unipc, ode_euler, ode_heun, ode_rk4).

The model 'gmm' is the built-in 2-D Gaussian-mixture ring of `revsde sample` (exact score): seconds."""


def add_tune_parser(commands) -> None:
    p = commands.add_parser("tune-grid", help="fit a time grid to a model for a sampler and write it as JSON",
                            description=TUNE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["gmm"], default="gmm",
                   help="the model: 'gmm', the built-in 2-D Gaussian-mixture ring with its exact score (default)")
    p.add_argument("--sde", choices=["vp", "subvp", "ve", "mr", "ouve"], default="vp",
                   help="the diffusion SDE of the gmm model (default: vp)")
    p.add_argument("--mu", type=parse_mu, default=None, metavar="X,Y",
                   help="the mean mu of the mean-reverting sdes mr and ouve (default: 1.0,-0.5)")
    p.add_argument("--sampler", default="mrs", metavar="NAME", help="an ODE sampler (default: mrs)")
    p.add_argument("--option", type=parse_option, action="append", default=[], metavar="NAME=VALUE",
                   help="a sampler option, repeatable (e.g. --option order=3)")
    p.add_argument("--steps", type=integer, default=5, metavar="N", help="grid intervals (default: 5)")
    p.add_argument("--n", type=integer, default=64, metavar="N", help="prior draws the grid is fitted on (default: 64)")
    p.add_argument("--seed", type=integer, default=0, help="seed of the prior draws (default: 0)")
    p.add_argument("--iterations", type=integer, default=200, metavar="K", help="Adam iterations (default: 200)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate on the increments' logits (default: 0.05)")
    p.add_argument("--teacher-steps", type=integer, default=None, metavar="M",
                   help="steps of the teacher, mrs order 3 (default: 8 x --steps, at least 40)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    add_threads_flag(p)
    p.add_argument("-o", "--output", default="out/grid.json", metavar="OUT.json",
                   help="the grid file, replaced atomically (default: out/grid.json)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=_run_tune)


def gmm_model(sde: str):
    """The built-in gmm model of ``revsde sample`` under the command-line SDE ``sde``."""
    from ..apps.mixture.sample import make_sde
    from ..nets.gmm import GaussianMixture, exact_model

    return exact_model(GaussianMixture.ring(), make_sde(sde))


def is_grid_file(value) -> bool:
    return isinstance(value, str) and (value.endswith(".json") or Path(value).is_file())


def grid_flag(value, *, model, sampler: str, options: dict, steps: int | None):
    """``--grid``'s value: a grid name as it is, or a grid file's tensor, checked against the model, the
    sampler with its options, and ``steps`` when given."""
    if not is_grid_file(value):
        return value
    from .. import grids
    from .. import samplers

    return grids.load_grid(value, model=model, sampler=samplers.get(sampler, **options), steps=steps)


def _run_tune(args) -> int:
    import torch

    from .. import grids
    from ..apps.mixture.sample import _device, resolve_mu

    options = options_of(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    model = gmm_model(args.sde)
    mu = resolve_mu(args.sde, args.mu)
    mu = None if mu is None else torch.tensor(mu, dtype=torch.float64)
    fit = grids.fit_grid(model, (2,), sampler=args.sampler, steps=args.steps, n=args.n, seed=args.seed, mu=mu,
                         iterations=args.iterations, lr=args.lr, teacher_steps=args.teacher_steps,
                         dtype=torch.float64, device=_device(args.device), progress=progress, **options)
    rms_start, rms = fit.loss_start ** 0.5, fit.loss ** 0.5
    info = {**fit.settings, "model": f"gmm ring, sde {args.sde}", "rms_to_teacher_start": rms_start,
            "rms_to_teacher": rms}
    grids.save_grid(args.output, fit.grid, model=model, sampler=args.sampler, options=options, info=info)
    shown = "".join(f", {k}={v}" for k, v in options.items())
    print(f"grid for {args.sampler}{shown}, {args.steps} steps, on {args.n} prior draws (seed {args.seed}): "
          f"RMS to the teacher {rms_start:.4g} at the start grid ({fit.settings['start']}), {rms:.4g} fitted")
    print("grid: " + ", ".join(f"{t:.6g}" for t in fit.grid.tolist()))
    print(f"wrote {args.output}")
    return 0

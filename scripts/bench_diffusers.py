"""diffusers' schedulers against RevSDEScheduler inside one diffusers pipeline, on an exact model.

Runs ``revsde.apps.mixture.pipeline_bench.run_pipeline_bench`` (UnconditionalPipeline + ExactMixtureUNet, a
6-component Gaussian mixture of 3×8×8 images) and writes ``bench_diffusers.md``, ``.json`` and ``.png``.
The default size (10000 samples, NFE 5/10/20/50, 20 configurations) takes about 2 minutes on 2 CPU cores.

    python scripts/bench_diffusers.py [-o docs] [--n 10000] [--nfe 5,10,20,50] [--only LABEL ...]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from revsde.apps.mixture import pipeline_bench as pb
from revsde.integrations.mixture_unet import ExactMixtureUNet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="docs", help="output folder (default: docs)")
    parser.add_argument("--n", type=int, default=10000, help="samples per run (default: 10000)")
    parser.add_argument("--nfe", default="5,10,20,50", help="comma-separated target NFEs (default: 5,10,20,50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared prior draw (default: 0)")
    parser.add_argument("--sample-size", type=int, default=8, help="image side of the mixture (default: 8)")
    parser.add_argument("--only", action="append", metavar="LABEL", help="run only this configuration (repeatable)")
    parser.add_argument("--no-revsde", action="store_true", help="diffusers' schedulers only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default: 1; the tensors are small and threads only add "
                             "synchronisation on a shared machine)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
    args = parser.parse_args(argv)
    try:
        nfes = tuple(int(v) for v in args.nfe.split(",") if v.strip())
    except ValueError:
        parser.error(f"--nfe must be comma-separated integers (got {args.nfe!r})")
    torch.set_num_threads(args.threads)

    configs = pb.diffusers_configs() + ([] if args.no_revsde else pb.revsde_configs())
    if args.only:
        unknown = sorted(set(args.only) - {c.label for c in configs})
        if unknown:
            parser.error(f"unknown configuration(s) {unknown}; valid: {', '.join(c.label for c in configs)}")
        configs = [c for c in configs if c.label in args.only]

    start = time.perf_counter()
    result = pb.run_pipeline_bench(configs, nfes=nfes, n_samples=args.n, seed=args.seed,
                                   progress=sys.stderr.isatty() if args.progress is None else args.progress,
                                   unet=ExactMixtureUNet.default(sample_size=args.sample_size))
    print(result.markdown())
    for path in pb.write(result, args.output).values():
        print(f"wrote {path}")
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

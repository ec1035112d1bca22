"""``revsde bench gmm|image|restore|speech|speed``: quality versus NFE per task, and speed.

Each task is a sub-command with only its own flags. The quality benches share the harness: a grid of
cells cached in the output folder (an interrupted run resumes), split across processes under
``torchrun``, with rank 0 printing the table and writing the markdown, JSON and plot.
"""
from __future__ import annotations

import argparse
import sys

from .common import add_threads_flag

BENCH_DESCRIPTION = """\
Measure samplers against their peers, per task:
  gmm      analytic Gaussian-mixture problems whose score and distribution are exact: every revsde
           sampler configuration and diffusers' schedulers on the same model, scored by Frechet distance
           to the exact moments and sliced Wasserstein distance to exact samples
  image    FD-digits (or FID), KID and precision/recall of an unconditional image model: revsde's
           samplers against diffusers' schedulers on the same network
  restore  PSNR/SSIM of an MR-diffusion restoration model on the held-out photos, against posterior
           sampling at 100 NFE
  speech   PESQ/ESTOI/SI-SDR/RTF of a speech model on the held-out test pairs, SGMSE+'s sampler against
           the MR Sampler
  speed    each sampler's loop overhead per step against its peer in the same process (diffusers,
           k-diffusion when installed, score_sde's PC), the cost of batch-invariant noise, start-up
           time, and CUDA-graph replay on a GPU
Finished cells are cached in the output folder, so an interrupted run resumes; under
torchrun --nproc_per_node=N -m revsde bench TASK ... the cells are split across the N processes."""

#: the flags of the one-command form, for the message that names the sub-command instead
OLD_FLAGS = ("--task", "--speed", "--quick", "--problems", "--restore-task")


def _harness_flags(p, stem: str, nfe_default: str) -> None:
    p.add_argument("--nfe", default=None, help=f"comma-separated target NFEs (default: {nfe_default})")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample or prior draw (default: 0)")
    p.add_argument("-o", "--output", default="out/bench", metavar="DIR",
                   help=f"folder for {stem}.md, .json and .png, and the cache of finished cells, "
                        f"{stem}.cache.jsonl: run the same command again to resume (default: out/bench)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start afresh: ignore and overwrite the cache of an earlier run in the output folder "
                        "(by default its cells are reused; a cache written with other settings is refused)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: when stderr is a terminal)")
    add_threads_flag(p)


def _selection_flags(p) -> None:
    p.add_argument("--no-diffusers", dest="diffusers", action="store_false", help="leave out diffusers' schedulers")
    p.add_argument("--only", action="append", metavar="LABEL",
                   help="run only this configuration (repeatable; labels as in the table)")


def add_bench_parser(commands) -> None:
    """Register ``revsde bench TASK …`` on the CLI's subparsers."""
    b = commands.add_parser("bench", help="quality versus NFE per task (gmm, image, restore, speech), and speed",
                            description=BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = b.add_subparsers(dest="task", required=True, metavar="gmm|image|restore|speech|speed")

    g = tasks.add_parser("gmm", help="analytic Gaussian-mixture problems with a known exact distribution",
                         description="Every sampler configuration (the MR Sampler in all its orders, predictions "
                                     "and ODE/SDE forms, posterior sampling, Euler-Maruyama, PC, Heun, RK45, and "
                                     "diffusers' DPM-Solver++ 2M/3M/SDE-2M, UniPC, DDIM, Euler and Heun schedulers "
                                     "on the same model) at each NFE on problems whose score and distribution are "
                                     "exact. Writes a markdown table, JSON and a log-log PNG plot.")
    g.add_argument("--problems", default="vp,mr",
                   help="comma-separated problems: vp (DDPM's discrete schedule, a ring of 8 Gaussians), mr "
                        "(IR-SDE's schedule, data near the observation mu), and the rectified-flow ones flow (the "
                        "2-D ring) and flow192 (a 3x8x8 six-component mixture), run against diffusers' flow "
                        "schedulers and written to bench_flow.* when only those are given (default: vp,mr)")
    g.add_argument("--n", type=int, default=None, help="samples per run (default: 10000; 2000 with --quick)")
    g.add_argument("--repeats", type=int, default=3, help="prior draws averaged per cell (default: 3; 1 with --quick)")
    g.add_argument("--quick", action="store_true", help="2000 samples, one draw, NFE 5,10,20: minutes on a laptop")
    _selection_flags(g)
    _harness_flags(g, "bench_gmm", "5,10,20,50,100")
    g.set_defaults(run=_run_harness, bench=_bench_gmm)

    i = tasks.add_parser("image", help="FD-digits (or FID), KID and precision/recall of an unconditional image model",
                         description="revsde's samplers against diffusers' schedulers on the same network: the "
                                     "built-in digits model, the built-in rectified-flow model (builtin-flow: "
                                     "diffusers' flow schedulers, written to bench_image_flow.*) or a diffusers "
                                     "pipeline folder. Sample s draws all its noise from its own generator, so a "
                                     "sample does not depend on its batch or on the number of processes.")
    i.add_argument("--model", default="builtin", metavar="builtin|builtin-flow|PATH",
                   help="the model: a built-in name or a diffusers pipeline folder (default: builtin)")
    i.add_argument("--n", type=int, default=None, help="samples per cell (default: 2000; 500 with --quick)")
    i.add_argument("--quick", action="store_true",
                   help="5 configurations at NFE 5 and 10 on 500 samples: minutes on a laptop CPU")
    i.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="pytorch-fid's Inception weights file (pt_inception-2015-12-05-6726825d.pth) for real FID "
                        "(default: $REVSDE_INCEPTION_WEIGHTS; without it FD-digits)")
    i.add_argument("--ref-stats", default=None, metavar="NPZ|DIR",
                   help="with Inception weights: reference statistics, an .npz with mu and sigma or a folder of "
                        "images (default: the scikit-learn digits)")
    i.add_argument("--max-batch", type=int, default=500, metavar="N", help="samples per network call (default: 500)")
    _selection_flags(i)
    _harness_flags(i, "bench_image", "5,10,20,50")
    i.set_defaults(run=_run_harness, bench=_bench_image)

    r = tasks.add_parser("restore", help="PSNR/SSIM of a restoration model on the held-out photos versus NFE",
                         description="Each sampler of an MR-diffusion restoration model at each NFE on the "
                                     "held-out photos, against posterior sampling at 100 NFE.")
    r.add_argument("--task", dest="restore_task", default="denoise", metavar="NAME",
                   help="denoise, deblur, motion_deblur or inpaint (default: denoise)")
    r.add_argument("--model", default="builtin", metavar="builtin|PATH",
                   help="as in revsde restore (default: builtin)")
    r.add_argument("--crop", type=int, default=128, metavar="PX",
                   help="centre crops of the held-out photos, 0 for whole images (default: 128)")
    _harness_flags(r, "bench_restore_TASK", "2,3,5,10,20")
    r.set_defaults(run=_run_harness, bench=_bench_restore)

    s = tasks.add_parser("speech", help="PESQ/ESTOI/SI-SDR/RTF of a speech model on the held-out pairs versus NFE",
                         description="SGMSE+'s sampler (10-60 NFE) against the MR Sampler (2-20 NFE) on the "
                                     "held-out test pairs of the synthetic corpus.")
    s.add_argument("--model", default="builtin", metavar="builtin|PATH", help="as in revsde enhance (default: builtin)")
    s.add_argument("--pairs", type=int, default=None, metavar="N",
                   help="only the first N held-out test pairs (default: all 24)")
    _harness_flags(s, "bench_speech", "2,3,5,10,20 for mrs and 10,20,30 for sgmse, whose even values it takes")
    s.set_defaults(run=_run_harness, bench=_bench_speech)

    v = tasks.add_parser("speed", help="loop overhead per step, start-up, and CUDA-graph replay, as ratios",
                         description="Each sampler's loop overhead per step with a free network, as a ratio to "
                                     "diffusers' DPMSolverMultistepScheduler.step in the same process (CPU, one "
                                     "thread); the start-up time of the command; and on CUDA eager against "
                                     "CUDA-graph sampling of a small UNet at batch 1, 4, 16.")
    v.add_argument("-o", "--output", default="out/bench", metavar="DIR",
                   help="folder for bench_speed.md and bench_speed.json (default: out/bench)")
    v.set_defaults(run=_run_speed)


def old_form_error(argv: list[str]) -> str | None:
    """The message for ``revsde bench --task X …`` (the one-command form), naming the sub-command."""
    if len(argv) < 2 or argv[0] != "bench" or argv[1] not in OLD_FLAGS:
        return None
    task = "speed" if "--speed" in argv else "image" if argv[1] == "--quick" and "--task" not in argv else None
    if "--task" in argv[:-1]:
        task = argv[argv.index("--task") + 1]
    hint = f" (here: revsde bench {task} ...)" if task else ""
    return (f"revsde bench: the task is a sub-command: revsde bench gmm|image|restore|speech|speed{hint}; "
            f"revsde bench TASK --help lists its flags")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers (got {text!r})") from None
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be integers >= 1 (got {text!r})")
    return values


def _run_speed(args) -> int:
    from ..apps.bench import speed

    result = speed.run_speed()
    print(result.markdown())
    for path in speed.write(result, args.output).values():
        print(f"wrote {path}")
    return 0


def _run_harness(args) -> int:
    """What the quality benches share: torchrun's process group, the cache, and only rank 0 printing and
    writing; ``args.bench`` (one small function per task) returns the result and its module's ``write``."""
    from ..apps.bench.harness import Dist

    dist = Dist.from_env()
    try:
        common = {"progress": (sys.stderr.isatty() if args.progress is None else args.progress) and dist.main,
                  "resume": args.resume, "dist": dist, "log": print if dist.main else None}
        result, write = args.bench(args, common)
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
    from ..apps.mixture import bench
    from ..apps.mixture.problems import FLOW_PROBLEMS

    quick = args.quick
    problems = [p for p in args.problems.split(",") if p]
    stem = "bench_flow" if problems and set(problems) <= FLOW_PROBLEMS else "bench_gmm"
    result = bench.run_gmm_bench(problem_names=problems,
                                 nfes=_int_list(args.nfe or ("5,10,20" if quick else "5,10,20,50,100"), "--nfe"),
                                 n_samples=args.n or (2000 if quick else 10000),
                                 repeats=1 if quick else args.repeats, seed=args.seed, with_diffusers=args.diffusers,
                                 labels=args.only, cache_path=_cache_path(args, stem), **common)
    return result, bench.write


def _bench_image(args, common):
    from ..apps.image import bench as image_bench
    from ..apps.image import configs as image_configs

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
    from ..apps.restore import bench as restore_bench

    result = restore_bench.run_restore_bench(
        args.restore_task, args.model, nfes=_int_list(args.nfe or "2,3,5,10,20", "--nfe"), crop=args.crop or None,
        seed=args.seed, cache_path=_cache_path(args, f"bench_restore_{args.restore_task}"), **common)
    return result, restore_bench.write


def _bench_speech(args, common):
    from ..apps.speech import bench as speech_bench
    from ..apps.speech.data import test_set

    nfes = None
    if args.nfe:
        chosen = tuple(_int_list(args.nfe, "--nfe"))
        nfes = {"sgmse": tuple(n for n in chosen if n % 2 == 0), "mrs": chosen}
    pairs = test_set()[:args.pairs] if args.pairs else None
    result = speech_bench.run_speech_bench(args.model, nfes=nfes, pairs=pairs, seed=args.seed,
                                           cache_path=_cache_path(args, "bench_speech"), **common)
    return result, speech_bench.write

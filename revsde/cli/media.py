"""``revsde restore`` and ``revsde enhance``: the command lines of the image and speech applications."""
from __future__ import annotations

import argparse
import sys

from .common import add_threads_flag, integer, memory_size, options_of, parse_option

RESTORE_DESCRIPTION = """\
Restore degraded images with a mean-reverting diffusion model: the image is the observation mu of
the MR SDE, sampling starts at mu + lambda z and runs the sampler for --nfe network evaluations.
PNG, JPEG and TIFF; gray, RGB and RGBA (alpha kept); 8 and 16 bits (kept). Any size, in bounded
memory: the network pads and crops, and an image that needs more than --max-memory is cut into
overlapping, blended tiles (--tile forces a size). Settings, inputs, the model file and the --output
folder are checked before any work (exit status 2). Outputs are written atomically under --output
and never over an input; a file that cannot be read is reported and skipped, the rest go on, and the
exit status is 1 if any failed. A folder is searched without the --output folder inside it and
without revsde's temporary files; a run removes the temporaries that a killed run left beside its
outputs."""

ENHANCE_DESCRIPTION = """\
Enhance noisy speech with an SGMSE+-style score model on the OUVE SDE: each channel's compressed
STFT is the observation y, sampling starts at y + sigma(1) z and runs the sampler for --nfe network
evaluations per window. WAV, FLAC and Ogg at any sample rate (resampled to the model's and back),
mono or multi-channel (each channel enhanced), any length: the file is streamed through windows of
--chunk-seconds that overlap by --overlap-seconds and are cross-faded, so memory does not grow with
the length. Digital silence (exact zeros, 10 ms or longer) comes back as exact zeros. Settings,
inputs, the model file and the --output folder are checked before any work (exit status 2).
Outputs keep the input's format, rate and sample type, are scaled down only if they would clip,
written atomically under --output and never over an input; a file that cannot be read (cut short,
NaN samples, ...) is reported and skipped, the rest go on, and the exit status is 1 if any failed.
A folder is searched without the --output folder inside it and without revsde's temporary files; a
run removes the temporaries that a killed run left beside its outputs. --sampler sgmse --nfe 60 is
SGMSE+'s own sampler (30 steps, one corrector step each)."""



def _batch_flags(p, items: str, option_example: str, bars: str) -> None:
    """The flags restore and enhance share: sampler options, seed, resuming, device, progress."""
    p.add_argument("--option", type=parse_option, action="append", default=[], metavar="NAME=VALUE",
                   help=f"a sampler option, repeatable (e.g. {option_example})")
    p.add_argument("--seed", type=integer, default=0, help="seed of the sampling noise (default: 0)")
    p.add_argument("--skip-existing", action="store_true", help=f"leave {items} whose output exists (resume a folder)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    add_threads_flag(p)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help=f"show {bars} on stderr (default: when stderr is a terminal)")


def _setup(args):
    """``(sampler options, progress, device)`` from the shared flags."""
    from ..apps.mixture.sample import _device

    return options_of(args), (sys.stderr.isatty() if args.progress is None else args.progress), _device(args.device)


def add_restore_parser(commands) -> None:
    r = commands.add_parser(
        "restore", help="restore degraded images with an MR-diffusion model (files, folders, globs)",
        description=RESTORE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    r.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder: each image under its own (relative) name and format")
    r.add_argument("--task", default="denoise",
                   help="the degradation the model undoes: denoise, deblur, motion_deblur, inpaint "
                        "(default: denoise; chooses the built-in model). The built-in inpaint model was trained on "
                        "rectangles up to 32 px and strokes up to 20 px wide, holes set to white (1.0): its fills are "
                        "grainy, 64 px holes stay mostly white, and white areas of a photo can be taken for holes "
                        "(its card gives PSNR by hole size)")
    r.add_argument("--model", default="builtin", metavar="builtin|PATH",
                   help="'builtin', a .safetensors exported by `revsde train`, or an official IR-SDE .pth "
                        "(with --irsde-config)")
    r.add_argument("--irsde-config", default=None, metavar="NAME",
                   help="the official task settings of an IR-SDE checkpoint: deraining, deblurring, sisr, "
                        "inpainting, deshadow")
    r.add_argument("--sampler", default=None, metavar="NAME",
                   help="any fixed-step sampler (default: the model card's, mrs for the built-in models)")
    r.add_argument("--nfe", type=integer, default=None,
                   help="network evaluations per image (default: the setting the model's card found best when no "
                        "--sampler other than the card's and no --option is given, the built-in's included; else 10). "
                        "A run outside the sampler and NFE range the card validated warns on stderr")
    r.add_argument("--grid", default=None, metavar="NAME|FILE.json",
                   help="time grid: a name (logsnr, uniform_t, karras, quadratic; default: the sampler's own) or a "
                        "grid file fitted to this model, sampler and NFE (revsde.grids.optimize / save_grid)")
    r.add_argument("--tile", type=integer, default=None, metavar="PX",
                   help="restore in overlapping PX x PX tiles, blended (default: tiles only when an image needs more "
                        "than --max-memory, then the largest that fit)")
    r.add_argument("--max-memory", type=memory_size, default="768M", metavar="SIZE",
                   help="the network's memory budget per image or tile, e.g. 768M or 2G (default: 768M, so a run "
                        "stays within about 2 GiB at any image size); an image that needs more is restored in the "
                        "largest overlapping tiles that fit, one that fits is restored whole; 'none': never tile "
                        "unless --tile is given")
    r.add_argument("--overlap", type=integer, default=None, metavar="PX",
                   help="tile overlap, smaller than --tile (default: 32, at most half the tile)")
    _batch_flags(r, "images", "--option order=3", "a progress bar")
    r.set_defaults(run=_run_restore)


def add_enhance_parser(commands) -> None:
    e = commands.add_parser(
        "enhance", help="enhance noisy speech with an SGMSE+-style model (files, folders, globs)",
        description=ENHANCE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files (.wav, .flac, .ogg), folders or globs")
    e.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder: each file under its own (relative) name and format")
    e.add_argument("--model", default="builtin", metavar="builtin|PATH",
                   help="'builtin', a .safetensors exported by `revsde train speech`, or an official SGMSE+ .ckpt")
    e.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="with an official .ckpt: its EMA weights (default, as SGMSE+'s inference) or the raw ones")
    e.add_argument("--sampler", default=None, metavar="NAME",
                   help="mrs (the MR Sampler, default), sgmse (SGMSE+'s PC sampler) or any fixed-step sampler")
    e.add_argument("--nfe", type=integer, default=None,
                   help="network evaluations per window (default: the MR Sampler setting the model's card "
                        "found best when no --option is given, the built-in's included; else 10, and 60 with "
                        "--sampler sgmse)")
    e.add_argument("--chunk-seconds", type=float, default=8.0, metavar="S",
                   help="window length (default: 8; rounded to whole 64-frame blocks)")
    e.add_argument("--overlap-seconds", type=float, default=0.5, metavar="S",
                   help="cross-fade between windows (default: 0.5)")
    e.add_argument("--max-memory", type=memory_size, default="768M", metavar="SIZE",
                   help="the network's memory budget per call, e.g. 768M or 2G (default: 768M): a window's channels "
                        "are enhanced in groups that fit, and a window longer than the budget allows for one channel "
                        "is shortened to the longest that fits (the banner says so); 'none': no limit")
    _batch_flags(e, "files", "--option order=1 --option snr=0.33", "progress bars")
    e.set_defaults(run=_run_enhance)


def _run_restore(args) -> int:
    from ..apps.restore.restore import (check_budget, check_settings, load_restore_model, plan, recommended_setting,
                                        restore_files, run_settings, validation_warning)

    options, progress, device = _setup(args)
    recommended = recommended_setting(args.model, args.task)  # the file's metadata only
    sampler, nfe, options, origin = run_settings(recommended, args.sampler, args.nfe, options)
    overlap = check_settings(sampler=sampler, nfe=nfe, options=options, tile=args.tile, overlap=args.overlap,
                             max_memory=args.max_memory)
    plan(args.inputs, args.output)  # inputs found, -o usable, no input overwritten: before the model loads
    model, description = load_restore_model(args.model, args.task, irsde_config=args.irsde_config, device=device)
    check_budget(model, args.tile, args.max_memory)
    grid = _restore_grid(args.grid, model, sampler, nfe, options)
    shown = "".join(f", {k}={v}" for k, v in options.items())
    grid_text = "" if args.grid is None else f", grid {args.grid}"
    print(f"model: {description}; sampler {sampler}{shown}, NFE {nfe} per image (tile) ({origin}){grid_text}, "
          f"seed {args.seed}")
    warning = validation_warning(recommended, sampler, nfe, options)
    if warning:
        print(warning, file=sys.stderr)
    report = restore_files(args.inputs, args.output, model, sampler=sampler, nfe=nfe, seed=args.seed,
                           options=options, tile=args.tile, overlap=overlap, max_memory=args.max_memory,
                           skip_existing=args.skip_existing, grid=grid, device=device, progress=progress, log=print)
    print(report.summary())
    return 1 if report.failed else 0


def _restore_grid(grid, model, sampler: str, nfe: int, options: dict):
    """``--grid``: a grid name as it is, or a fitted grid file loaded for this model, sampler and NFE
    (``tune.grid_flag``, as ``revsde sample`` reads it)."""
    from .. import grids, samplers
    from .tune import grid_flag, is_grid_file

    if grid is not None and not is_grid_file(grid) and grid not in grids.available():
        raise ValueError(f"--grid must be one of {', '.join(grids.available())} or a grid file FILE.json "
                         f"(got {grid!r})")
    steps = nfe // samplers.get(sampler, **options).evals_per_step
    return grid_flag(grid, model=model, sampler=sampler, options=options, steps=steps)


def _run_enhance(args) -> int:
    from ..apps.speech.enhance import Enhancer, check_run, chunking, enhance_files, load_speech_model, plan, run_settings

    options, progress, device = _setup(args)
    check_run(sampler=args.sampler, nfe=args.nfe, options=options, chunk_seconds=args.chunk_seconds,
              overlap_seconds=args.overlap_seconds)
    plan(args.inputs, args.output)  # inputs found, -o usable, no input overwritten: before the model loads
    speech = load_speech_model(args.model, device=device, weights=args.weights)
    sampler, nfe, options, origin = run_settings(speech, args.sampler, args.nfe, options)
    chunk, _ = chunking(speech, args.chunk_seconds, args.overlap_seconds, args.max_memory)  # before the banner
    asked, _ = chunking(speech, args.chunk_seconds, args.overlap_seconds)
    Enhancer(speech, sampler=sampler, nfe=nfe, options=options, device=device)
    shown = "".join(f", {k}={v}" for k, v in options.items())
    print(f"model: {speech.description}; {speech.sample_rate} Hz; sampler {sampler}{shown}, NFE {nfe} per window "
          f"({origin}), seed {args.seed}")
    if chunk < asked:
        print(f"windows of {chunk / speech.sample_rate:.2f} s, not {asked / speech.sample_rate:.2f} s: a longer one "
              f"needs more than --max-memory {args.max_memory} bytes")
    report = enhance_files(args.inputs, args.output, speech, sampler=sampler, nfe=nfe, seed=args.seed,
                           options=options, chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                           max_memory=args.max_memory, skip_existing=args.skip_existing, device=device, progress=progress, log=print)
    print(report.summary())
    return 1 if report.failed else 0

"""``revsde restore``: MR-diffusion image restoration of files, folders and globs.

Each image is the observation μ of the mean-reverting SDE: sampling starts from ``μ + λ z`` and the
sampler integrates to ``t_min`` with the model's ε-prediction. Images of any size are reflect-padded by
the network and cropped back; ``tile`` cuts large ones into overlapping tiles blended with linear
ramps. Outputs are written atomically and never over an input; a file that fails is reported and
the run goes on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from revsde.solve import sample
from revsde.io.batch import BatchReport, check_nfe, fixed_step_sampler, plan_batch, run_batch
from revsde.io.batch import run_settings  # noqa: F401 - the run's sampler and NFE: the card's, else mrs at 10
from revsde.io.images import SUFFIXES, ImageError, read_image, write_image
from revsde.apps.restore.data import DEGRADATIONS


TASKS = tuple(DEGRADATIONS)


def builtin_path(task: str) -> Path:
    """Where the built-in model of ``task`` lives (``revsde/weights/restore_<task>.safetensors``)."""
    return Path(__file__).resolve().parents[2] / "weights" / f"restore_{task}.safetensors"


def model_path(model: str = "builtin", task: str = "denoise") -> Path:
    """The file of ``--model`` (``"builtin"``: the built-in model of ``task``); ``ValueError`` if there is none."""
    if model == "builtin":
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
        path = builtin_path(task)
        if not path.is_file():
            have = [t for t in TASKS if builtin_path(t).is_file()]
            raise ValueError(f"no built-in model for task {task!r} in this install; built-in models: "
                             f"{', '.join(have) or 'none'} (or give --model PATH)")
        return path
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"--model {model!r} is neither 'builtin' nor a file")
    return path


def load_restore_model(model: str = "builtin", task: str = "denoise", *, irsde_config: str | None = None,
                       device=None):
    """``(ScoreModel, description)`` for ``--model``: ``"builtin"`` (the model trained by
    ``scripts/train_builtin_restore.py`` for ``task``), a ``.safetensors`` file exported by
    ``revsde train``, or an official IR-SDE checkpoint (``.pth``) with ``irsde_config`` naming its task
    settings (``revsde.nets.irsde_unet.OFFICIAL_CONFIGS``: λ, schedule, T, width)."""
    from revsde.nets.irsde_unet import OFFICIAL_CONFIGS, irsde_score_model, load_irsde_checkpoint
    from revsde.nets.model_files import read_metadata
    from revsde.apps.restore.model import FORMAT, load_weights, score_model
    from revsde.apps.exports import FORMAT_KINDS

    device = torch.device(device or "cpu")
    if irsde_config is not None and irsde_config not in OFFICIAL_CONFIGS:
        raise ValueError(f"unknown --irsde-config {irsde_config!r}; known: {', '.join(OFFICIAL_CONFIGS)}")
    path = model_path(model, task)
    found = read_metadata(path).get("format") if path.suffix == ".safetensors" else None
    if found in FORMAT_KINDS and found != FORMAT:
        raise ValueError(f"{path} is a revsde {FORMAT_KINDS[found]}, not a restoration model")
    if found == FORMAT:
        if irsde_config is not None:
            raise ValueError(f"{path} is a revsde restoration model, whose settings are in the file: "
                             "--irsde-config applies only to official IR-SDE checkpoints")
        net, sde, config = load_weights(path)
        if config.get("task") != task:
            raise ValueError(f"{path} is a {config.get('task')!r} model; run it with --task {config.get('task')}")
        description = (f"{path.name}: ConditionalUNet nf {config['nf']} depth {config['depth']}, "
                       f"{config['trained_steps']} steps, task {task}")
        return score_model(net.to(device), sde), description
    if irsde_config is None:
        raise ValueError(f"{path} is not a revsde restoration model; an official IR-SDE checkpoint needs "
                         f"--irsde-config NAME (one of {', '.join(OFFICIAL_CONFIGS)}) for its λ, schedule and T")
    settings = OFFICIAL_CONFIGS[irsde_config]
    net = load_irsde_checkpoint(path, map_location=device)
    return irsde_score_model(net, settings.sde()), f"{path.name}: official IR-SDE {irsde_config} checkpoint"


def recommended_setting(model: str = "builtin", task: str = "denoise") -> dict | None:
    """What the card of a revsde restoration model recommends (``train.recommend``: ``sampler``, ``nfe``,
    ``options``, ``validated_nfe``), read from the file's metadata without loading it; None for a file
    that stores none (older exports, official IR-SDE checkpoints)."""
    import json

    from revsde.nets.model_files import read_metadata
    from revsde.apps.restore.model import FORMAT

    path = model_path(model, task)
    if path.suffix != ".safetensors":
        return None
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        return None
    return json.loads(meta.get("config", "{}")).get("recommended")


def validation_warning(recommended: dict | None, sampler: str, nfe: int, options: dict | None = None) -> str | None:
    """One line when a run leaves what the model card validated (its sampler and options, at
    ``validated_nfe``), else None (also for a model whose file records nothing)."""
    if not recommended or "validated_nfe" not in recommended:
        return None
    lo, hi = recommended["validated_nfe"]
    rec_options = dict(recommended.get("options", {}))
    shown = "".join(f", {k}={v}" for k, v in rec_options.items())
    valid = f"{recommended['sampler']}{shown} at {lo}" + (f"-{hi}" if hi > lo else "") + " NFE"
    if sampler != recommended["sampler"] or dict(options or {}) != rec_options:
        what = f"sampler {sampler}" + "".join(f", {k}={v}" for k, v in (options or {}).items())
    elif not lo <= nfe <= hi:
        what = f"NFE {nfe}"
    else:
        return None
    return (f"warning: the model card validated this model with {valid}, and {what} is outside that; "
            f"the restoration may be poor (the card's best: {recommended['sampler']} at {recommended['nfe']} NFE)")


def tiles(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Blending weights along one axis: linear ramps over the overlaps that neighbours share."""
    w = np.ones(length, dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, overlap + 2)[1:-1] if overlap > 0 else np.array([])
    if not first and overlap:
        w[:overlap] = ramp
    if not last and overlap:
        w[length - overlap:] = ramp[::-1]
    return w


def tile_count(height: int, width: int, tile: int | None, overlap: int) -> int:
    """How many patches ``restore_tiled`` restores for an image of this size."""
    if tile is None or (height <= tile and width <= tile):
        return 1
    return len(tiles(height, tile, overlap)) * len(tiles(width, tile, overlap))


def restore_tiled(restore: Callable[[np.ndarray, int], np.ndarray], rgb: np.ndarray, tile: int | None,
                  overlap: int = 32) -> np.ndarray:
    """``restore(patch, index)`` over overlapping ``tile``×``tile`` patches of ``rgb`` (H, W, 3), blended;
    one call on the whole image when it fits in a tile (or ``tile`` is None)."""
    h, w = rgb.shape[:2]
    if tile is None or (h <= tile and w <= tile):
        return restore(rgb, 0)
    if overlap >= tile:
        raise ValueError(f"--overlap ({overlap}) must be smaller than --tile ({tile})")
    ys, xs = tiles(h, tile, overlap), tiles(w, tile, overlap)
    total = np.zeros(rgb.shape, dtype=np.float64)
    weight = np.zeros((h, w, 1), dtype=np.float64)
    index = 0
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            th, tw = min(tile, h), min(tile, w)
            patch = restore(rgb[y:y + th, x:x + tw], index)
            wy = _ramp(th, min(overlap, th), i == 0, i == len(ys) - 1)
            wx = _ramp(tw, min(overlap, tw), j == 0, j == len(xs) - 1)
            wgt = (wy[:, None] * wx[None, :])[:, :, None]
            total[y:y + th, x:x + tw] += patch * wgt
            weight[y:y + th, x:x + tw] += wgt
            index += 1
    return (total / weight).astype(np.float32)


#: the tile overlap when none is given: 32 pixels, at most half the tile
DEFAULT_OVERLAP = 32
#: the memory the network may use per patch when neither ``tile`` nor ``max_memory`` is given: 768 MiB, so
#: that a run (torch, the model, the image and its blend buffers) stays within 2 GiB on any image size
DEFAULT_MAX_MEMORY = 768 * 2**20
#: the smallest tile automatic tiling uses (a budget that allows less is refused)
MIN_AUTO_TILE = 64


def bytes_per_pixel(model) -> int:
    """The network's working memory per pixel of a patch (float32, batch 1), an upper estimate: IR-SDE's
    ``ConditionalUNet`` of width ``nf`` measured 2114, 2733 and 4440 B/pixel at nf 16, 32 and 64 (marginal
    peak RSS between 384² and 768² on CPU), bounded here by ``1536 + 64·nf``; a network of another kind is
    taken to be as large as the official nf = 64 one."""
    from revsde.nets.irsde_unet import ConditionalUNet

    net = getattr(model, "net", model)
    nf = next((m.nf for m in net.modules() if isinstance(m, ConditionalUNet)), 64) if isinstance(
        net, torch.nn.Module) else 64
    return 1536 + 64 * nf


def check_budget(model, tile: int | None, max_memory: int | None) -> int:
    """``bytes_per_pixel(model)``, after checking that ``max_memory`` allows at least one ``MIN_AUTO_TILE`` tile
    of this model when tiles are chosen by the budget (``ValueError`` otherwise)."""
    per_pixel = bytes_per_pixel(model)
    if tile is None and max_memory is not None and max_memory < MIN_AUTO_TILE ** 2 * per_pixel:
        raise ValueError(f"--max-memory {max_memory} bytes is below one {MIN_AUTO_TILE} px tile of this model "
                         f"({MIN_AUTO_TILE ** 2 * per_pixel} bytes at {per_pixel} B/pixel)")
    return per_pixel


def auto_tile(height: int, width: int, per_pixel: int, max_memory: int | None) -> int | None:
    """The tile side that keeps one patch's network memory within ``max_memory`` bytes: ``None`` (the whole
    image in one call, as without tiling) when the image fits, else the largest multiple of 16 whose
    square fits; ``ValueError`` when that is below ``MIN_AUTO_TILE``. ``max_memory=None``: no limit."""
    if max_memory is None or height * width * per_pixel <= max_memory:
        return None
    side = int((max_memory / per_pixel) ** 0.5) // 16 * 16
    if side < MIN_AUTO_TILE:
        raise ValueError(f"--max-memory {max_memory} bytes allows tiles of {side} px at {per_pixel} B/pixel; "
                         f"the smallest is {MIN_AUTO_TILE} px ({MIN_AUTO_TILE ** 2 * per_pixel} bytes)")
    return side


def _fixed_step_sampler(sampler: str, nfe: int, options: dict | None):
    smp = fixed_step_sampler(sampler, options)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < smp.evals_per_step:
        raise ValueError(f"--nfe must be an integer >= {smp.evals_per_step} for sampler {sampler!r} (got {nfe!r})")
    check_nfe(nfe, smp.evals_per_step)
    return smp


def check_settings(*, sampler: str = "mrs", nfe: int = 10, options: dict | None = None, tile: int | None = None,
                   overlap: int | None = None, max_memory: int | None = None) -> int:
    """Check a restore run's settings before any work (``ValueError`` naming the bad one and what is valid);
    returns the tile overlap to use (``overlap``, or ``DEFAULT_OVERLAP`` capped at half the tile)."""
    _fixed_step_sampler(sampler, nfe, options)
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 1):
        raise ValueError(f"--max-memory must be a positive number of bytes, e.g. 768M or 2G (got {max_memory!r})")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 16):
        raise ValueError(f"--tile must be an integer >= 16 pixels (got {tile!r})")
    if overlap is None:
        return DEFAULT_OVERLAP if tile is None else min(DEFAULT_OVERLAP, tile // 2)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"--overlap must be an integer >= 0 (got {overlap!r})")
    if tile is not None and overlap >= tile:
        raise ValueError(f"--overlap ({overlap}) must be smaller than --tile ({tile})")
    return overlap


def restorer(model, *, sampler: str = "mrs", nfe: int = 10, seed: int = 0, options: dict | None = None,
             device=None, grid=None) -> Callable[[np.ndarray, int], np.ndarray]:
    """A function restoring one RGB patch (H, W, 3) in [0, 1] with ``model`` (a ``ScoreModel`` on an MR
    SDE): its noise is seeded by ``seed`` and the patch index, so results repeat exactly. ``run.steps`` is
    the sampler's steps per patch; ``run.on_step``, when set, is called after every step (progress).
    ``grid``: a grid name, or a ``(steps + 1,)`` tensor of times (a fitted grid, ``grids.load_grid``),
    whose steps must be the NFE's."""
    smp = _fixed_step_sampler(sampler, nfe, options)
    steps = nfe // smp.evals_per_step
    if isinstance(grid, torch.Tensor) and grid.shape[0] - 1 != steps:
        raise ValueError(f"the grid has {grid.shape[0] - 1} steps, but {sampler!r} at NFE {nfe} takes {steps}")
    device = torch.device(device or "cpu")

    def run(rgb: np.ndarray, index: int):
        mu = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(device)
        callback = None if run.on_step is None else (lambda _: run.on_step())
        with torch.no_grad():
            sol = sample(model, mu.shape, sampler=smp, steps=steps, grid=grid, mu=mu,
                         seed=seed * 1_000_003 + index, device=device, callback=callback)
        out = sol.x[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        run.nfe += sol.nfe
        return out

    run.nfe, run.steps, run.on_step = 0, steps, None
    return run


def plan(inputs: list[str], out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """The ``(input, output)`` pairs of a restore run (``batch.plan_batch``: ``out_dir`` usable, inputs found,
    no input overwritten)."""
    return plan_batch(inputs, out_dir, SUFFIXES, "images")


def restore_files(inputs: list[str], out_dir: str | os.PathLike, model, *, sampler: str = "mrs", nfe: int = 10,
                  seed: int = 0, options: dict | None = None, tile: int | None = None, overlap: int | None = None,
                  max_memory: int | None = DEFAULT_MAX_MEMORY, skip_existing: bool = False, device=None,
                  progress: bool = False, log: Callable[[str], None] | None = None, grid=None) -> BatchReport:
    """Restore every image of ``inputs`` into ``out_dir`` (same relative names and formats); everything that
    can be checked is checked before the first image (``check_settings``, ``plan``).

    ``tile`` forces tiles of that side; without it an image whose network memory would exceed
    ``max_memory`` bytes (``bytes_per_pixel``) is cut into the largest tiles that fit (``auto_tile``), and
    one that fits is restored whole, exactly as without tiling. ``max_memory=None``: never tile by itself.
    """
    overlap = check_settings(sampler=sampler, nfe=nfe, options=options, tile=tile, overlap=overlap,
                             max_memory=max_memory)
    per_pixel = check_budget(model, tile, max_memory)
    pairs = plan(inputs, out_dir)
    run = restorer(model, sampler=sampler, nfe=nfe, seed=seed, options=options, device=device, grid=grid)
    report = BatchReport("restored")

    def process(path: Path, target: Path) -> int:
        from tqdm.auto import tqdm

        nfe_before = run.nfe
        image = read_image(path)
        rgb = image.rgb()
        side = tile if tile is not None else auto_tile(rgb.shape[0], rgb.shape[1], per_pixel, max_memory)
        gap = overlap if tile is not None or side is None else min(overlap, side // 2)
        # inside an image: tiles × steps, with tqdm's rate and ETA (a large tiled image takes minutes)
        total = tile_count(rgb.shape[0], rgb.shape[1], side, gap) * run.steps
        with tqdm(total=total, desc=path.name, unit="step", leave=False, disable=not progress) as bar:
            run.on_step = lambda: bar.update(1)
            try:
                restored = restore_tiled(run, rgb, side, gap)
            finally:
                run.on_step = None
        write_image(target, image.with_rgb(restored))
        return run.nfe - nfe_before

    return run_batch(pairs, process, report, expected=(ImageError, OSError), skip_existing=skip_existing,
                     progress=progress, log=log, desc="restore", unit="image")

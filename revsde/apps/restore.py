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

from .. import samplers as samplers_mod
from ..solve import sample
from .batch import BatchReport, expand_inputs, plan_outputs, run_batch
from .images import SUFFIXES, ImageError, read_image, write_image
from .restore_data import DEGRADATIONS


TASKS = tuple(DEGRADATIONS)


def builtin_path(task: str) -> Path:
    """Where the built-in model of ``task`` lives (``revsde/weights/restore_<task>.safetensors``)."""
    return Path(__file__).resolve().parents[1] / "weights" / f"restore_{task}.safetensors"


def load_restore_model(model: str = "builtin", task: str = "denoise", *, irsde_config: str | None = None,
                       device=None):
    """``(ScoreModel, description)`` for ``--model``: ``"builtin"`` (the model trained by
    ``scripts/train_builtin_restore.py`` for ``task``), a ``.safetensors`` file exported by
    ``revsde train``, or an official IR-SDE checkpoint (``.pth``) with ``irsde_config`` naming its task
    settings (``revsde.nets.irsde_unet.OFFICIAL_CONFIGS``: λ, schedule, T, width)."""
    from ..nets.irsde_unet import OFFICIAL_CONFIGS, irsde_score_model, load_irsde_checkpoint
    from .train import FORMAT, load_weights, score_model

    device = torch.device(device or "cpu")
    if model == "builtin":
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
        path = builtin_path(task)
        if not path.is_file():
            have = [t for t in TASKS if builtin_path(t).is_file()]
            raise ValueError(f"no built-in model for task {task!r} in this install; built-in models: "
                             f"{', '.join(have) or 'none'} (or give --model PATH)")
    else:
        path = Path(model)
        if not path.is_file():
            raise ValueError(f"--model {model!r} is neither 'builtin' nor a file")
    ours = False
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            ours = (f.metadata() or {}).get("format") == FORMAT
    if ours:
        net, sde, config = load_weights(path)
        if config.get("task") != task:
            raise ValueError(f"{path} is a {config.get('task')!r} model; run it with --task {config.get('task')}")
        description = (f"{path.name}: ConditionalUNet nf {config['nf']} depth {config['depth']}, "
                       f"{config['trained_steps']} steps, task {task}")
        return score_model(net.to(device), sde), description
    if irsde_config is None:
        raise ValueError(f"{path} is not a revsde export; an official IR-SDE checkpoint needs --irsde-config NAME "
                         f"(one of {', '.join(OFFICIAL_CONFIGS)}) for its λ, schedule and T")
    if irsde_config not in OFFICIAL_CONFIGS:
        raise ValueError(f"unknown --irsde-config {irsde_config!r}; known: {', '.join(OFFICIAL_CONFIGS)}")
    settings = OFFICIAL_CONFIGS[irsde_config]
    net = load_irsde_checkpoint(path, map_location=device)
    return irsde_score_model(net, settings.sde()), f"{path.name}: official IR-SDE {irsde_config} checkpoint"


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


def restorer(model, *, sampler: str = "mrs", nfe: int = 10, seed: int = 0, options: dict | None = None,
             device=None) -> Callable[[np.ndarray, int], np.ndarray]:
    """A function restoring one RGB patch (H, W, 3) in [0, 1] with ``model`` (a ``ScoreModel`` on an MR
    SDE): its noise is seeded by ``seed`` and the patch index, so results repeat exactly."""
    smp = samplers_mod.get(sampler, **(options or {}))
    if smp.adaptive:
        raise ValueError(f"sampler {sampler!r} is adaptive: give a fixed-step sampler for --nfe")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < smp.evals_per_step:
        raise ValueError(f"--nfe must be an integer >= {smp.evals_per_step} for sampler {sampler!r} (got {nfe!r})")
    steps = nfe // smp.evals_per_step
    device = torch.device(device or "cpu")

    def run(rgb: np.ndarray, index: int):
        mu = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(device)
        with torch.no_grad():
            sol = sample(model, mu.shape, sampler=smp, steps=steps, mu=mu, seed=seed * 1_000_003 + index,
                         device=device)
        out = sol.x[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        run.nfe += sol.nfe
        return out

    run.nfe = 0
    return run


def restore_files(inputs: list[str], out_dir: str | os.PathLike, model, *, sampler: str = "mrs", nfe: int = 10,
                  seed: int = 0, options: dict | None = None, tile: int | None = None, overlap: int = 32,
                  skip_existing: bool = False, device=None, progress: bool = False,
                  log: Callable[[str], None] | None = None) -> BatchReport:
    """Restore every image of ``inputs`` into ``out_dir`` (same relative names and formats)."""
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 16):
        raise ValueError(f"--tile must be an integer >= 16 pixels (got {tile!r})")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"--overlap must be an integer >= 0 (got {overlap!r})")
    pairs = plan_outputs(expand_inputs(inputs, SUFFIXES, "images"), out_dir)
    run = restorer(model, sampler=sampler, nfe=nfe, seed=seed, options=options, device=device)
    report = BatchReport("restored")

    def process(path: Path, target: Path) -> int:
        nfe_before = run.nfe
        image = read_image(path)
        write_image(target, image.with_rgb(restore_tiled(run, image.rgb(), tile, overlap)))
        return run.nfe - nfe_before

    return run_batch(pairs, process, report, expected=(ImageError, OSError), skip_existing=skip_existing,
                     progress=progress, log=log, desc="restore", unit="image")

"""Measuring the restoration models: restore the held-out photos and score them (PSNR / SSIM).

``evaluate_restore`` degrades each held-out photo with a seed fixed per name (``image_seed``), samples
from the prior ``μ + λ z`` with any revsde sampler and compares input and output with the clean photo.
The model cards of the built-in models and ``revsde bench restore`` are made of its results;
``evaluate_inpaint_sizes`` measures an inpainter by hole kind and size.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch

from revsde import metrics
from revsde.model import ScoreModel
from revsde.apps.restore.data import DEGRADATIONS, HELD_OUT, degrade, photos
from revsde.apps.restore.model import build_sde, load_weights, score_model


def _hwc(x: torch.Tensor):
    return x.detach().double().permute(1, 2, 0).cpu().numpy()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``revsde.metrics.psnr`` of ``(3, H, W)`` images in [0, 1]."""
    return metrics.psnr(_hwc(x), _hwc(ref))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``revsde.metrics.ssim`` (scikit-image, 7×7 windows, per channel) of ``(3, H, W)`` images in [0, 1]."""
    return metrics.ssim(_hwc(x), _hwc(ref))


def image_seed(name: str, seed: int) -> int:
    """The degradation seed of a named test image: fixed per name, independent of which images run."""
    return seed + zlib.crc32(name.encode())


def evaluate_restore(model, task: str | None = None, nfe: int = 10, sampler: str = "mrs", images=HELD_OUT, *,
                     seed: int = 0, sde=None, grid=None, progress: bool = False, return_images: bool = False,
                     net_prediction: str = "noise", **options) -> dict:
    """Restore the held-out photos (degraded with fixed seeds) and score them.

    ``model``: an exported ``.safetensors`` path, a network ``net(x, time, mu)`` (with ``sde``, default
    ``MRSDE()``, and its output type ``net_prediction``), or a ``ScoreModel``; other keywords are sampler options. ``images``: names or a ``{name: (3, H, W)}`` dict. Each image is
    degraded with ``image_seed(name, seed)``, started from the prior ``μ + λ z`` and sampled with
    ``revsde.sample(sampler, steps=nfe, **options)``. PSNR and SSIM compare the clean image with the
    degraded input and with the restoration, both clipped to [0, 1]. Returns ``{"rows": [...], "mean": {...},
    "nfe", "task", "sampler", "options"}`` (and ``"images"``: name → (degraded, restored) if asked).
    """
    from revsde.solve import sample

    if isinstance(model, (str, Path)):
        net, sde_, config = load_weights(model)
        task = task or config["task"]
        model = score_model(net, sde_)
    elif not isinstance(model, ScoreModel):
        model = score_model(model.eval(), build_sde() if sde is None else sde, net_prediction)
    if task not in DEGRADATIONS:
        raise ValueError(f"unknown restoration task {task!r}; available: {', '.join(DEGRADATIONS)}")
    images = images if isinstance(images, dict) else photos(images)
    rows, outputs, nfe_counted = [], {}, 0
    for name, x0 in images.items():
        mu = degrade(task, x0[None], seed=image_seed(name, seed))
        with torch.no_grad():
            sol = sample(model, mu.shape, mu=mu, sampler=sampler, steps=nfe, grid=grid, seed=seed,
                         progress=progress, **options)
        restored, shown = sol.x[0].clamp(0, 1), mu[0].clamp(0, 1)
        nfe_counted = sol.nfe
        rows.append({"image": name, "psnr_in": psnr(shown, x0), "ssim_in": ssim(shown, x0),
                     "psnr": psnr(restored, x0), "ssim": ssim(restored, x0)})
        if return_images:
            outputs[name] = (shown, restored)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr_in", "ssim_in", "psnr", "ssim")}
    result = {"task": task, "sampler": sampler, "options": options, "nfe": nfe_counted, "rows": rows, "mean": mean}
    if return_images:
        result["images"] = outputs
    return result


#: the hole sizes an inpainter is measured at: rectangles (square side) and brush strokes (width), in px
HOLES = (("rectangle", 8), ("rectangle", 16), ("rectangle", 32), ("rectangle", 64),
         ("stroke", 5), ("stroke", 10), ("stroke", 20))


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` × ``size`` crop of a ``(3, H, W)`` image (the whole side where it is shorter)."""
    h, w = x.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[..., top:top + size, left:left + size]


def hole_psnr(x: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB) over the pixels under ``mask`` only (images in [0, 1])."""
    mse = float(((x.double() - ref.double())[mask] ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def biharmonic(mu: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The classical baseline: holes filled by scikit-image's biharmonic inpainting (smooth, no texture)."""
    from skimage.restoration import inpaint_biharmonic

    filled = inpaint_biharmonic(_hwc(mu[0]), mask[0, 0].cpu().numpy(), channel_axis=-1)
    return torch.from_numpy(filled).permute(2, 0, 1)[None].to(mu.dtype)


def evaluate_inpaint_sizes(model, nfe: int = 5, sampler: str = "mrs", images=HELD_OUT, *, holes=HOLES,
                           crop: int = 256, coverage: float = 0.1, seed: int = 0, **options) -> list[dict]:
    """An inpainter measured by hole size: each held-out photo's central ``crop`` px square loses
    ``coverage`` of its pixels to holes of one kind and size (``restore_data.sized_mask``), which are
    filled with ``INPAINT_FILL`` and restored from the prior. One row per hole: ``kind``, ``size``, and the
    means over the photos of the PSNR inside the holes (``psnr_hole``; ``psnr_hole_biharmonic`` for the
    classical smooth fill, ``biharmonic``), over the whole crop (``psnr``, ``psnr_in`` for the input) and
    the SSIM (``ssim``)."""
    from revsde.solve import sample
    from revsde.apps.restore.data import INPAINT_FILL, sized_mask

    if isinstance(model, (str, Path)):
        net, sde_, _ = load_weights(model)
        model = score_model(net, sde_)
    images = images if isinstance(images, dict) else photos(images)
    rows = []
    for kind, size in holes:
        scores = []
        for name, x0 in images.items():
            x0 = center_crop(x0, crop)[None]
            g = torch.Generator().manual_seed(image_seed(f"{name}/{kind}/{size}", seed))
            mask = sized_mask(x0.shape[-2], x0.shape[-1], kind, size, g, coverage).expand_as(x0)
            mu = torch.where(mask, torch.full_like(x0, INPAINT_FILL), x0)
            with torch.no_grad():
                out = sample(model, mu.shape, mu=mu, sampler=sampler, steps=nfe, seed=seed, **options).x.clamp(0, 1)
            scores.append({"psnr_hole": hole_psnr(out, x0, mask), "psnr_hole_biharmonic": hole_psnr(biharmonic(mu, mask), x0, mask),
                           "psnr": float(psnr(out[0], x0[0])), "psnr_in": float(psnr(mu[0], x0[0])),
                           "ssim": float(ssim(out[0], x0[0]))})
        rows.append({"kind": kind, "size": size, "nfe": nfe,
                     **{k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}})
    return rows

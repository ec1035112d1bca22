"""Training and test data for MR-diffusion image restoration, made from photos that ship inside
installed packages (scikit-image's ``skimage.data`` and scikit-learn's sample images), so nothing
is downloaded.

Images are float32 ``(3, H, W)`` tensors in [0, 1] (grayscale replicated to 3 channels, alpha
dropped). ``HELD_OUT`` is a fixed test split; every other photo trains. ``skimage.data.cat`` is the
same picture as ``chelsea`` and is left out, so no test pixel is ever trained on.

Degradations synthesise the MR SDE's condition μ from a clean batch ``(B, 3, H, W)``; all their
randomness comes from the ``torch.Generator`` passed in, so they are reproducible:

- ``denoise``: additive Gaussian noise of std 25/255, not clipped;
- ``deblur``: per image either an isotropic Gaussian blur (σ ∈ [1.5, 2.5]) or a linear motion blur
  (length 7–15 px, any angle), reflect-padded, plus Gaussian noise of std 1/255;
- ``inpaint``: per image a mask of random rectangles (sides 4–32 px, up to a quarter of the 128 px
  training crop) and brush strokes (2–20 px wide, 24–80 px long) covering 15–30 % of the pixels; masked
  pixels are set to ``INPAINT_FILL`` = 1.0 (white, as IR-SDE's inpainting data). Shape sizes are in
  pixels (relative to ``INPAINT_SCALE`` = 128 px, the training crop; a smaller image gets proportionally
  smaller shapes), so a large photo gets more holes of the same size, not larger holes than the network
  learned to fill. ``sized_mask`` makes holes of one kind and size, to measure an inpainter by hole size.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: the test split, never trained on: two colour photos, one grayscale, one from scikit-learn
HELD_OUT = ("chelsea", "camera", "coffee", "flower")

#: ``skimage.data`` photos and textures that load offline (no ``pooch``); ``cat`` is ``chelsea`` again
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
                  "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
                  "microaneurysms", "moon", "motorcycle", "page", "retina", "rocket", "text")
SKLEARN_PHOTOS = ("china", "flower")
SPLITS = ("train", "test")

NOISE_STD = 25 / 255
BLUR_NOISE_STD = 1 / 255
BLUR_KERNEL = 21  # odd: holds a Gaussian of σ 2.5 to ±4σ and a 15 px motion streak
INPAINT_FILL = 1.0
INPAINT_COVERAGE = (0.15, 0.30)
INPAINT_SCALE = 128  # px: the shape sizes below are for an image of this side, and scale with a smaller one
INPAINT_RECT = (4, 32)  # px: rectangle sides, up to a quarter of INPAINT_SCALE
INPAINT_STROKE = (2, 20)  # px: brush stroke widths
INPAINT_STROKE_LENGTH = (24, 80)  # px: brush stroke lengths


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 / bool / float array, gray ``(H, W)`` or ``(H, W, 3|4)`` → float32 ``(3, H, W)`` in [0, 1]."""
    a = np.asarray(image)
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    elif a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    else:
        a = a.astype(np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    a = a[..., :3]  # drop alpha
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).clamp_(0, 1)


def _load_skimage(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]  # the left view only: the right one is nearly the same
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(skimage.data, name)()


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> torch.Tensor:
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return _to_tensor(load_sample_image(f"{name}.jpg"))
    if name in SKIMAGE_PHOTOS:
        return _to_tensor(_load_skimage(name))
    raise ValueError(f"unknown photo {name!r}; available: {', '.join(SKIMAGE_PHOTOS + SKLEARN_PHOTOS)}")


def photos(names=None) -> dict[str, torch.Tensor]:
    """The photos by name (all of them by default), float32 ``(3, H, W)`` in [0, 1]; cached, so treat
    them as read-only."""
    names = sorted(SKIMAGE_PHOTOS + SKLEARN_PHOTOS) if names is None else list(names)
    return {name: _photo(name) for name in names}


def split_names(split: str) -> tuple[str, ...]:
    """The names in ``"train"`` or ``"test"`` (= ``HELD_OUT``), in a fixed order."""
    if split == "test":
        return HELD_OUT
    if split == "train":
        return tuple(sorted(n for n in SKIMAGE_PHOTOS + SKLEARN_PHOTOS if n not in HELD_OUT))
    raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")


def load_split(split: str) -> dict[str, torch.Tensor]:
    """The photos of ``"train"`` or ``"test"``."""
    return photos(split_names(split))


# --- degradations ------------------------------------------------------------------------------
def _uniform(n: int, lo: float, hi: float, generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def add_noise(x0: torch.Tensor, generator: torch.Generator, std: float = NOISE_STD) -> torch.Tensor:
    """``x0 + std · z`` (no clipping)."""
    return x0 + std * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)


def gaussian_kernel(sigma: torch.Tensor, size: int = BLUR_KERNEL) -> torch.Tensor:
    """Normalised isotropic Gaussian kernels ``(B, size, size)`` for per-image ``sigma`` ``(B,)``."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    d2 = r[None, :, None] ** 2 + r[None, None, :] ** 2
    k = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    return k / k.sum(dim=(1, 2), keepdim=True)


def motion_kernel(length: torch.Tensor, angle: torch.Tensor, size: int = BLUR_KERNEL,
                  samples: int = 64) -> torch.Tensor:
    """Normalised linear motion-blur kernels ``(B, size, size)``: a centred segment of ``length`` px at
    ``angle`` (radians), rendered by bilinear splatting of ``samples`` points along it."""
    s = torch.linspace(-0.5, 0.5, samples, dtype=torch.float64)
    px = size // 2 + s[None] * length[:, None] * torch.cos(angle)[:, None]
    py = size // 2 + s[None] * length[:, None] * torch.sin(angle)[:, None]
    k = torch.zeros(length.shape[0], size * size, dtype=torch.float64)
    x0, y0 = px.floor(), py.floor()
    for dx in (0, 1):
        for dy in (0, 1):
            w = (1 - (px - x0 - dx).abs()) * (1 - (py - y0 - dy).abs())
            xi, yi = (x0 + dx).long().clamp(0, size - 1), (y0 + dy).long().clamp(0, size - 1)
            k.scatter_add_(1, yi * size + xi, w)
    k = k.reshape(-1, size, size)
    return k / k.sum(dim=(1, 2), keepdim=True)


def gaussian_blur_kernels(batch: int, generator: torch.Generator, size: int = BLUR_KERNEL) -> torch.Tensor:
    """Per image, an isotropic Gaussian kernel of σ ∈ [1.5, 2.5] px."""
    return gaussian_kernel(_uniform(batch, 1.5, 2.5, generator), size)


def motion_blur_kernels(batch: int, generator: torch.Generator, size: int = BLUR_KERNEL) -> torch.Tensor:
    """Per image, a linear motion kernel of 7–15 px at a uniform angle."""
    length = _uniform(batch, 7.0, 15.0, generator)
    return motion_kernel(length, _uniform(batch, 0.0, math.pi, generator), size)


def convolve(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` ``(B, C, H, W)`` convolved with its own kernel ``(B, k, k)``, reflect-padded."""
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if min(h, w) > pad else "replicate"
    xp = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(x.dtype).flip(-1, -2).repeat_interleave(c, 0)[:, None]  # true convolution
    return F.conv2d(xp, weight, groups=b * c).reshape(b, c, h, w)


def blur(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur (one kernel per image), plus noise of std 1/255."""
    return add_noise(convolve(x0, gaussian_blur_kernels(x0.shape[0], generator)), generator, BLUR_NOISE_STD)


def motion_blur(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Linear motion blur (one kernel per image), plus noise of std 1/255."""
    return add_noise(convolve(x0, motion_blur_kernels(x0.shape[0], generator)), generator, BLUR_NOISE_STD)


def _rectangle(y0: float, x0: float, h: float, w: float):
    """``(box, shape)`` of an axis-aligned ``h`` × ``w`` rectangle at ``(y0, x0)``: its bounding box
    ``(top, bottom, left, right)`` and a function of pixel coordinates, True inside."""
    def shape(ys, xs):
        return (ys >= y0) & (ys < y0 + h) & (xs >= x0) & (xs < x0 + w)
    return (float(y0), float(y0 + h), float(x0), float(x0 + w)), shape


def _stroke(cy: float, cx: float, length: float, angle: float, thick: float):
    """``(box, shape)`` of a brush stroke: the pixels within ``thick / 2`` of a segment of ``length``
    centred at ``(cy, cx)`` at ``angle``."""
    dy, dx = 0.5 * length * math.sin(angle), 0.5 * length * math.cos(angle)
    ay, ax, vy, vx, r = cy - dy, cx - dx, 2 * dy, 2 * dx, 0.5 * thick
    box = (min(ay, ay + vy) - r, max(ay, ay + vy) + r, min(ax, ax + vx) - r, max(ax, ax + vx) + r)

    def shape(ys, xs):
        s = (((ys - ay) * vy + (xs - ax) * vx) / (vy * vy + vx * vx)).clamp(0, 1)
        return (ys - ay - s * vy) ** 2 + (xs - ax - s * vx) ** 2 <= r * r
    return tuple(float(v) for v in box), shape


def _draw(mask: torch.Tensor, box, shape) -> int:
    """Add a shape to ``mask`` (H, W) in place, evaluated on its bounding box only; the pixels it added."""
    height, width = mask.shape
    top, bottom = max(0, math.floor(box[0])), min(height, math.ceil(box[1]) + 1)
    left, right = max(0, math.floor(box[2])), min(width, math.ceil(box[3]) + 1)
    if top >= bottom or left >= right:
        return 0
    yy = torch.arange(top, bottom, dtype=torch.float64)[:, None]
    xx = torch.arange(left, right, dtype=torch.float64)[None, :]
    patch = mask[top:bottom, left:right]
    before = int(patch.sum())
    patch |= shape(yy, xx)
    return int(patch.sum()) - before


def inpaint_mask(batch: int, height: int, width: int, generator: torch.Generator,
                 coverage: tuple[float, float] = INPAINT_COVERAGE, max_shapes: int = 40,
                 scale: float = INPAINT_SCALE) -> torch.Tensor:
    """Boolean masks ``(B, 1, H, W)`` (True = missing): random rectangles and brush strokes, sized in
    pixels relative to ``scale`` (``INPAINT_RECT`` and ``INPAINT_STROKE`` at the default 128), added until
    each image reaches its own target coverage drawn from ``coverage`` (or ``max_shapes`` shapes per
    ``scale``² of area). Rectangle sides and stroke widths are drawn log-uniformly, so small holes stay as
    common as large ones."""
    side = float(min(scale, height, width))
    unit = side / INPAINT_SCALE
    max_shapes = max(max_shapes, math.ceil(max_shapes * height * width / scale**2))
    (r_lo, r_hi), (s_lo, s_hi), (l_lo, l_hi) = INPAINT_RECT, INPAINT_STROKE, INPAINT_STROKE_LENGTH

    def log_uniform(u, lo, hi):
        return unit * lo * (hi / lo) ** float(u)

    masks = []
    for _ in range(batch):
        target = float(_uniform(1, *coverage, generator))
        mask = torch.zeros(height, width, dtype=torch.bool)
        covered = 0
        for _ in range(max_shapes):
            u = torch.rand(6, generator=generator, dtype=torch.float64)
            if u[0] < 0.5:
                h, w = log_uniform(u[1], r_lo, r_hi), log_uniform(u[2], r_lo, r_hi)
                covered += _draw(mask, *_rectangle(float(u[3]) * (height - h), float(u[4]) * (width - w), h, w))
            else:
                length = unit * (l_lo + (l_hi - l_lo) * float(u[3]))
                covered += _draw(mask, *_stroke(float(u[1]) * height, float(u[2]) * width, length,
                                                float(u[4]) * math.pi, log_uniform(u[5], s_lo, s_hi)))
            if covered >= target * height * width:
                break
        masks.append(mask)
    return torch.stack(masks)[:, None]


def sized_mask(height: int, width: int, kind: str, size: float, generator: torch.Generator,
               coverage: float = 0.1) -> torch.Tensor:
    """A boolean mask ``(1, 1, H, W)`` of holes of one kind and size, for measuring an inpainter by hole
    size: ``"rectangle"`` (``size`` × ``size`` squares) or ``"stroke"`` (strokes ``size`` px wide, 64 px
    long, any angle), placed at random until ``coverage`` of the pixels are missing."""
    if kind not in ("rectangle", "stroke"):
        raise ValueError(f"kind must be 'rectangle' or 'stroke' (got {kind!r})")
    if not 0 < size < min(height, width):
        raise ValueError(f"size must lie in (0, {min(height, width)}) px for a {height}×{width} image (got {size!r})")
    mask = torch.zeros(height, width, dtype=torch.bool)
    covered = 0
    while covered < coverage * height * width:
        u = torch.rand(3, generator=generator, dtype=torch.float64)
        if kind == "rectangle":
            covered += _draw(mask, *_rectangle(float(u[0]) * (height - size), float(u[1]) * (width - size), size, size))
        else:
            covered += _draw(mask, *_stroke(float(u[0]) * height, float(u[1]) * width, 64.0, float(u[2]) * math.pi,
                                            size))
    return mask[None, None]


def inpaint(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pixels under a random stroke/rectangle mask (15–30 %, ``inpaint_mask``) set to ``INPAINT_FILL``."""
    b, _, h, w = x0.shape
    return torch.where(inpaint_mask(b, h, w, generator), torch.full_like(x0, INPAINT_FILL), x0)


@dataclass(frozen=True)
class Degradation:
    """A synthetic degradation ``fn(x0, generator) -> μ`` on ``(B, 3, H, W)`` batches; ``margin``: the
    pixels beyond a crop it reads (a blur's radius), so a crop can be degraded as part of its image."""

    name: str
    fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    description: str
    margin: int = 0

    def __call__(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x0.ndim != 4:
            raise ValueError(f"degradation {self.name!r} takes a (B, C, H, W) batch (got shape {tuple(x0.shape)})")
        return self.fn(x0, generator)


DEGRADATIONS: dict[str, Degradation] = {
    "denoise": Degradation("denoise", add_noise, "additive Gaussian noise of std 25/255, not clipped"),
    "deblur": Degradation("deblur", blur, "Gaussian blur (σ 1.5–2.5 px), plus noise of std 1/255",
                          margin=BLUR_KERNEL // 2),
    "motion_deblur": Degradation("motion_deblur", motion_blur, "linear motion blur (7–15 px, any angle), plus "
                                                                "noise of std 1/255", margin=BLUR_KERNEL // 2),
    "inpaint": Degradation("inpaint", inpaint, f"random rectangles ({INPAINT_RECT[0]}–{INPAINT_RECT[1]} px sides) "
                                               f"and brush strokes ({INPAINT_STROKE[0]}–{INPAINT_STROKE[1]} px wide, "
                                               f"{INPAINT_STROKE_LENGTH[0]}–{INPAINT_STROKE_LENGTH[1]} px long) over "
                                               f"15–30 % of the pixels of each {INPAINT_SCALE} px square, filled with "
                                               f"{INPAINT_FILL}"),
}


def get_degradation(task: str) -> Degradation:
    if task not in DEGRADATIONS:
        raise ValueError(f"unknown restoration task {task!r}; available: {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[task]


def degrade(task: str, x0: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``x0`` ``(B, 3, H, W)`` or ``(3, H, W)`` degraded for ``task`` with a generator seeded ``seed``."""
    fn = get_degradation(task)
    g = torch.Generator().manual_seed(int(seed))
    return fn(x0[None], g)[0] if x0.ndim == 3 else fn(x0, g)


# --- patches -----------------------------------------------------------------------------------
class PatchSampler:
    """Random training batches ``(x0, μ)`` of shape ``(batch, 3, patch, patch)``.

    Each crop picks an image uniformly, a position uniformly, and one of the 8 flips/rotations; μ
    is the task's degradation of the crop, computed on the crop plus the degradation's ``margin`` so
    blur at the crop's edge sees real neighbours. All randomness comes from ``generator``
    (``get_state``/``set_state`` it to resume).
    """

    def __init__(self, images, patch: int = 64, batch: int = 8, task: str = "denoise",
                 generator: torch.Generator | None = None):
        images = list(images.values()) if isinstance(images, dict) else list(images)
        if not (isinstance(patch, int) and patch >= 1 and isinstance(batch, int) and batch >= 1):
            raise ValueError(f"patch and batch must be positive integers (got patch={patch!r}, batch={batch!r})")
        self.degradation = get_degradation(task)
        self.patch, self.batch, self.task = patch, batch, task
        self.window = patch + 2 * self.degradation.margin
        self.images = [im for im in images if min(im.shape[-2:]) >= self.window]
        if not self.images:
            raise ValueError(f"no image is at least {self.window} px on its shorter side (patch {patch} "
                             f"+ the {task} degradation's margin)")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        g, w = self.generator, self.window
        crops = []
        for _ in range(self.batch):
            im = self.images[int(torch.randint(len(self.images), (), generator=g))]
            top = int(torch.randint(im.shape[-2] - w + 1, (), generator=g))
            left = int(torch.randint(im.shape[-1] - w + 1, (), generator=g))
            crop = im[:, top:top + w, left:left + w]
            k, flip = int(torch.randint(4, (), generator=g)), bool(torch.randint(2, (), generator=g))
            crop = torch.rot90(crop, k, dims=(-2, -1))
            crops.append(crop.flip(-1) if flip else crop)
        window = torch.stack(crops)
        mu = self.degradation(window, g)
        m = self.degradation.margin
        if m:
            window, mu = window[..., m:-m, m:-m], mu[..., m:-m, m:-m]
        return window.contiguous(), mu.contiguous()

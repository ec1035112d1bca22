"""The images of the built-in image model and of the FD-digits feature extractor: scikit-learn's digits.

``sklearn.datasets.load_digits`` ships 1797 handwritten digits as 8×8 images with integer values
0..16 (the UCI optical-recognition set's test part), inside the installed package: nothing is
downloaded. ``digits(size)`` scales them to [−1, 1] (``v / 8 − 1``) and upsamples them to
``size × size`` with bicubic interpolation (``torch.nn.functional.interpolate``, ``mode="bicubic"``,
``align_corners=False``), clamped to [−1, 1] (bicubic overshoots by a few per cent at strokes' edges).
The result is deterministic: the same tensor on every call and machine.

``DigitBatches`` draws random training batches from such a tensor with a ``torch.Generator`` (the
trainer saves and restores its state, so a resumed run sees the same batches): indices uniformly
with replacement, and optionally each image shifted by a random whole number of pixels (at most
``shift``) left or right, the uncovered column filled with the background value −1. No flips: a
mirrored 2 or 7 is not a digit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: the number of images ``load_digits`` ships, and the value of a fully inked pixel
N_DIGITS = 1797
MAX_VALUE = 16.0
BACKGROUND = -1.0


def _load():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def digits(size: int = 16) -> torch.Tensor:
    """All 1797 digits as float32 ``(1797, 1, size, size)`` in [−1, 1], bicubic-upsampled from 8×8, clamped."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, the digits' own size (got {size!r})")
    images, _ = _load()
    x = torch.from_numpy(images).to(torch.float64).unsqueeze(1) / (MAX_VALUE / 2) - 1
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return x.clamp(-1, 1).to(torch.float32).contiguous()


def digit_labels() -> torch.Tensor:
    """The class (0..9) of each digit, int64 ``(1797,)``, in the order of ``digits()``."""
    _, target = _load()
    return torch.from_numpy(target).to(torch.int64)


def shift_columns(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each image ``x[b]`` moved ``shifts[b]`` pixels to the right (left if negative), the uncovered
    columns filled with the background −1."""
    width = x.shape[-1]
    cols = torch.arange(width, device=x.device)
    source = cols.unsqueeze(0) - shifts.to(x.device).unsqueeze(1)            # (B, W): column read
    inside = (source >= 0) & (source < width)
    gathered = torch.gather(x, -1, source.clamp(0, width - 1).reshape(x.shape[0], 1, 1, width)
                            .expand_as(x))
    return torch.where(inside.reshape(x.shape[0], 1, 1, width), gathered, torch.full_like(x, BACKGROUND))


class DigitBatches:
    """Random batches of ``data`` (``(N, C, H, W)``), drawn with ``generator``; ``next(batches)`` or ``batches()``.

    Each call draws ``batch`` indices uniformly with replacement and, when ``shift`` > 0, a horizontal
    shift in {−shift, …, shift} per image (``shift_columns``). All randomness comes from
    ``generator``, so its state is the sampler's whole state.
    """

    def __init__(self, data: torch.Tensor, batch: int, generator: torch.Generator, *, shift: int = 1):
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer (got {batch!r})")
        if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift < data.shape[-1]:
            raise ValueError(f"shift must be an integer in [0, {data.shape[-1] - 1}] pixels (got {shift!r})")
        if data.ndim != 4 or data.shape[0] < 1:
            raise ValueError(f"data must be images (N, C, H, W) (got shape {tuple(data.shape)})")
        self.data, self.batch, self.generator, self.shift = data, batch, generator, shift

    def __call__(self) -> torch.Tensor:
        index = torch.randint(self.data.shape[0], (self.batch,), generator=self.generator)
        x = self.data[index]
        if self.shift:
            shifts = torch.randint(-self.shift, self.shift + 1, (self.batch,), generator=self.generator)
            x = shift_columns(x, shifts)
        return x

    def __iter__(self):
        return self

    __next__ = __call__

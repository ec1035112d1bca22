"""Image files in and out: PNG, JPEG and TIFF; grayscale, RGB and RGBA; 8 and 16 bits.

``read_image`` returns an ``Image`` whose ``pixels`` are float32 ``(H, W, C)`` in [0, 1] (C = 1 or 3) with
the alpha channel apart, and remembers the bit depth and format so ``write_image`` gives back the same
kind of file. Pillow reads and writes 8-bit files and 16-bit grayscale; 16-bit RGB(A) PNGs, which
Pillow silently cuts to 8 bits, go through pypng, and TIFFs through tifffile. Every failure is an
``ImageError`` naming the file and the reason.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from revsde.files import atomic_output

SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}


class ImageError(ValueError):
    """A file that cannot be read or written as an image."""


@dataclass
class Image:
    """``pixels`` float32 ``(H, W, C)`` in [0, 1], C = 1 (gray) or 3 (RGB); ``alpha`` ``(H, W)`` or None."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    bits: int = 8
    format: str = "png"

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[:2]

    def rgb(self) -> np.ndarray:
        """``(H, W, 3)``: gray replicated to three channels."""
        return np.repeat(self.pixels, 3, axis=2) if self.pixels.shape[2] == 1 else self.pixels

    def with_rgb(self, rgb: np.ndarray) -> "Image":
        """This image with new RGB pixels, brought back to its own channel count (gray: the mean)."""
        rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
        pixels = rgb.mean(axis=2, keepdims=True) if self.pixels.shape[2] == 1 else rgb
        return replace(self, pixels=pixels)


def image_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ImageError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                         f"images are {', '.join(sorted(SUFFIXES))}")
    return SUFFIXES[suffix]


def _from_array(array: np.ndarray, fmt: str, path) -> Image:
    if array.size == 0:
        raise ImageError(f"{path}: not a readable {fmt.upper()} image (no image data)")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
        raise ImageError(f"{path}: unsupported image layout {array.shape} (expected H×W, H×W×3 or H×W×4)")
    if array.dtype == np.uint8:
        bits, scaled = 8, array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        bits, scaled = 16, array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ImageError(f"{path}: the image holds {bad} NaN or infinite sample value{'s' * (bad > 1)}; "
                             "pixels must be finite numbers")
        bits, scaled = 16, np.clip(array.astype(np.float32), 0.0, 1.0)
    else:
        raise ImageError(f"{path}: unsupported sample type {array.dtype} (8- or 16-bit integers, or floats)")
    channels = scaled.shape[2]
    alpha = scaled[:, :, -1] if channels in (2, 4) else None
    pixels = scaled[:, :, :1] if channels in (1, 2) else scaled[:, :, :3]
    return Image(np.ascontiguousarray(pixels), alpha, bits, fmt)


def _png_bit_depth(data: bytes) -> int:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 26:
        raise ImageError("not a PNG file (bad signature)")
    return data[24]


def read_image(path: str | os.PathLike) -> Image:
    """Read ``path`` (PNG, JPEG, TIFF; gray, RGB, RGBA; 8 or 16 bits)."""
    fmt = image_format(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        if fmt == "tiff":
            import tifffile

            array = tifffile.imread(io.BytesIO(data))
        elif fmt == "png" and _png_bit_depth(data) == 16:
            import png

            width, height, rows, info = png.Reader(bytes=data).asDirect()
            array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width,
                                                                                         info["planes"])
        else:
            from PIL import Image as PILImage

            with PILImage.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L"):
                    array = np.asarray(im, dtype=np.uint16)
                elif im.mode in ("I", "F"):
                    array = np.asarray(im).astype(np.float32)
                    array = array / (65535.0 if array.max() > 255 else 255.0)
                else:
                    keep = {"L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA"}
                    target = keep.get(im.mode, "RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                    array = np.asarray(im.convert(target))
    except ImageError as error:
        raise ImageError(f"{path}: {error}") from None
    except Exception as error:  # noqa: BLE001 - every decoder failure is a bad file to the user
        raise ImageError(f"{path}: not a readable {fmt.upper()} image ({type(error).__name__}: {error})") from None
    return _from_array(array, fmt, path)


def _to_int(values: np.ndarray, bits: int) -> np.ndarray:
    top = 65535 if bits == 16 else 255
    return np.round(np.clip(values, 0.0, 1.0) * top).astype(np.uint16 if bits == 16 else np.uint8)


def encode_image(image: Image, fmt: str | None = None) -> bytes:
    """The file bytes of ``image`` in ``fmt`` (default: its own), at its bit depth where the format allows."""
    fmt = fmt or image.format
    planes = image.pixels if image.alpha is None else np.concatenate([image.pixels, image.alpha[:, :, None]], 2)
    bits = 8 if fmt == "jpeg" else image.bits
    array = _to_int(planes, bits)
    buffer = io.BytesIO()
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(buffer, array[:, :, 0] if array.shape[2] == 1 else array)
    elif fmt == "png" and bits == 16 and array.shape[2] > 1:
        import png

        height, width, planes_n = array.shape
        writer = png.Writer(width, height, greyscale=planes_n == 2, alpha=planes_n in (2, 4), bitdepth=16)
        writer.write(buffer, array.reshape(height, width * planes_n))
    else:
        from PIL import Image as PILImage

        if fmt == "jpeg":
            array = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]  # JPEG has no alpha
        pil = PILImage.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        pil.save(buffer, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": 95} if fmt == "jpeg" else {}))
    return buffer.getvalue()


def write_image(path: str | os.PathLike, image: Image) -> None:
    """Write ``image`` to ``path`` atomically, in the format its suffix names."""
    data = encode_image(image, image_format(path))
    with atomic_output(path) as file:
        file.write(data)

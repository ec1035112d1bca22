"""Image files: formats, channel layouts and bit depths survive a read/write round trip."""
from __future__ import annotations

import numpy as np
import pytest

from revsde.io.images import Image, ImageError, encode_image, read_image, write_image

rng = np.random.default_rng(0)


def ints(shape, bits):
    return rng.integers(0, 2**bits, size=shape, dtype=np.uint16 if bits == 16 else np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_lossless_round_trip(tmp_path, suffix, bits, channels):
    raw = ints((7, 9, channels), bits)
    top = 2**bits - 1
    planes = raw.astype(np.float32) / top
    image = Image(planes[:, :, :3] if channels == 4 else planes,
                  planes[:, :, 3] if channels == 4 else None, bits, suffix.strip(".")[:4].replace("tiff", "tiff"))
    path = tmp_path / f"x{suffix}"
    write_image(path, image)
    back = read_image(path)
    assert back.bits == bits and back.pixels.shape == (7, 9, 1 if channels == 1 else 3)
    assert (back.alpha is None) == (channels != 4)
    got = np.concatenate([back.pixels, back.alpha[:, :, None]], 2) if channels == 4 else back.pixels
    assert np.array_equal(np.round(got * top).astype(raw.dtype), raw)


def test_jpeg_is_8_bit_rgb_or_gray_without_alpha(tmp_path):
    ramp = np.linspace(0, 1, 16, dtype=np.float32)
    smooth = np.stack([ramp[None, :].repeat(16, 0), ramp[:, None].repeat(16, 1), np.full((16, 16), 0.5, np.float32)], 2)
    image = Image(smooth, rng.random((16, 16), dtype=np.float32), 16, "png")
    write_image(tmp_path / "x.jpg", image)
    back = read_image(tmp_path / "x.jpg")
    assert back.bits == 8 and back.alpha is None and back.pixels.shape == (16, 16, 3)
    assert np.abs(back.pixels - image.pixels).mean() < 0.02


def test_gray_stays_gray_and_rgb_replicates():
    gray = Image(np.full((2, 3, 1), 0.25, np.float32))
    assert gray.rgb().shape == (2, 3, 3)
    out = gray.with_rgb(np.stack([np.zeros((2, 3)), np.ones((2, 3)), np.full((2, 3), 0.5)], 2))
    assert out.pixels.shape == (2, 3, 1) and np.allclose(out.pixels, 0.5)
    assert gray.with_rgb(np.full((2, 3, 3), 2.0)).pixels.max() == 1.0  # clipped


@pytest.mark.parametrize("name, content, message", [
    ("bad.png", b"not an image at all", "not a PNG file"),
    ("bad.jpg", b"\xff\xd8\xff garbage", "not a readable JPEG image"),
    ("bad.tif", b"II*\x00 garbage", "not a readable TIFF image"),
    ("x.bmp", b"", "unsupported file type '.bmp'"),
])
def test_unreadable_files_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        read_image(tmp_path / "absent.png")


def test_encode_keeps_the_format():
    image = Image(np.zeros((4, 4, 3), np.float32))
    assert encode_image(image, "png")[:4] == b"\x89PNG"
    assert encode_image(image, "jpeg")[:2] == b"\xff\xd8"


def test_nan_or_infinite_pixels_are_refused(tmp_path):
    import tifffile

    pixels = np.full((5, 6, 3), 0.25, np.float32)
    pixels[1, 2, 0], pixels[4, 5, 2] = np.nan, -np.inf
    tifffile.imwrite(tmp_path / "bad.tif", pixels, photometric="rgb")
    with pytest.raises(ImageError, match="bad.tif: the image holds 2 NaN or infinite sample values"):
        read_image(tmp_path / "bad.tif")

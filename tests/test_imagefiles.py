"""Image bytes: JPEG/PNG pass through, EXIF orientation and odd formats are converted once."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cvat_argo.data.imagefiles import prepare_image, read_header
from cvat_argo.errors import ImageProblem


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    array = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    array[:8, :16] = (255, 0, 0)  # a red mark at the top left, to see where rotation puts it
    return Image.fromarray(array)


def test_jpeg_and_png_pass_through_unchanged(picture):
    for fmt in ("JPEG", "PNG"):
        data = encode(picture, fmt)
        prepared = prepare_image(data)
        assert prepared.data is data and prepared.converted is None
        assert (prepared.width, prepared.height) == (64, 48)


def test_exif_orientation_is_applied_like_cvat_shows_it(picture):
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held rotated: viewers turn the image 90 degrees clockwise
    data = encode(picture, "JPEG", exif=exif, quality=95)
    assert read_header(data).orientation == 6
    prepared = prepare_image(data)
    assert (prepared.width, prepared.height) == (48, 64) and "EXIF orientation 6" in prepared.converted
    shown = np.asarray(Image.open(io.BytesIO(prepared.data)))
    # after a clockwise turn the red mark is at the top right
    assert shown[:14, -6:, 0].mean() > 200 and shown[:14, -6:, 1].mean() < 60


@pytest.mark.parametrize(("mode", "fmt", "reason"), [
    ("RGB", "BMP", "BMP is not JPEG or PNG"), ("RGB", "TIFF", "TIFF is not JPEG or PNG"),
    ("RGB", "WEBP", "WEBP is not JPEG or PNG"), ("CMYK", "JPEG", "CMYK JPEG"), ("I;16", "PNG", "16-bit PNG")])
def test_other_formats_are_converted_once(picture, mode, fmt, reason):
    image = picture.convert("L").convert("I;16") if mode == "I;16" else picture.convert(mode)
    prepared = prepare_image(encode(image, fmt))
    assert prepared.converted == reason and prepared.format in ("jpeg", "png")
    decoded = Image.open(io.BytesIO(prepared.data))
    assert decoded.size == (64, 48) and decoded.mode in ("RGB", "L")


@pytest.mark.parametrize("data", [b"", b"not an image", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n\x00"])
def test_garbage_is_refused(data):
    with pytest.raises(ImageProblem):
        prepare_image(data)

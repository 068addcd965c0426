"""Image bytes for training: pass JPEG and PNG through untouched, convert the rest once.

Decoding and re-encoding every JPEG loses quality (Datumaro's export costs ~28 dB PSNR) and time,
so :func:`prepare_image` reads only the header: format, size, and the EXIF orientation. Bytes go
through unchanged unless TensorFlow's decoders would see something other than what CVAT shows:

- EXIF orientation other than 1: CVAT displays the image rotated and its coordinates refer to the
  rotated image, but ``tf.io.decode_jpeg`` ignores EXIF, so the pixels are rotated once here;
- CMYK or 12-bit JPEG, 16-bit PNG, and other formats (BMP, TIFF, WebP, GIF): converted once.

This is the project's one JPEG/PNG header parser: :func:`jpeg_size` and :func:`png_size` give the
stored frame size that the TFRecord writer checks each example against.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageProblem

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_U16 = struct.Struct(">H")
_FRAME_HEADER = struct.Struct(">BHHB")  # precision, height, width, components
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_ORIENTATION_TAG = 0x0112
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}  # rotated by 90 or 270 degrees: width and height swap


@dataclass(frozen=True)
class Header:
    format: str  # "jpeg", "png" or "other"
    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int = 1
    needs_conversion: str | None = None  # why the bytes cannot pass through


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    format: str  # "jpeg" or "png"
    width: int  # as CVAT displays it
    height: int
    converted: str | None = None  # why it was converted, None when the bytes passed through


def read_header(data: bytes) -> Header:
    if data.startswith(JPEG_MAGIC):
        return _jpeg_header(data)
    if data.startswith(PNG_MAGIC):
        return _png_header(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(_ORIENTATION_TAG, 1) if hasattr(image, "getexif") else 1
            return Header("other", image.width, image.height, int(orientation or 1),
                          needs_conversion=f"{image.format or 'unknown'} is not JPEG or PNG")
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageProblem(f"not a readable image ({_why(exc)})") from None


def _why(exc: Exception) -> str:
    """PIL's reason, without the ``<_io.BytesIO object at 0x...>`` it names the bytes by."""
    if isinstance(exc, UnidentifiedImageError):
        return "no image format PIL knows"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding it."""
    if not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        raise ImageProblem("not a PNG (no PNG signature and IHDR chunk)")
    header = _png_header(data)
    return header.width, header.height


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's SOF marker, as stored: EXIF orientation is NOT applied.

    TensorFlow's ``decode_jpeg`` ignores EXIF orientation too, so this is the frame the model sees.
    """
    if not data.startswith(JPEG_MAGIC):
        raise ImageProblem("not a JPEG (no FF D8 FF signature)")
    header = _jpeg_header(data)
    return header.width, header.height


def _png_header(data: bytes) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageProblem("truncated PNG header")
    width, height, depth = struct.unpack(">IIB", data[16:25])
    if not width or not height:
        raise ImageProblem("PNG with zero size")
    return Header("png", width, height, needs_conversion="16-bit PNG" if depth == 16 else None)


def _jpeg_header(data: bytes) -> Header:
    """Walk the JPEG segments up to the frame header; read EXIF orientation on the way.

    Segments are read in place, not sliced out: this runs for every image of a dataset.
    """
    position, orientation = 2, 1
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageProblem(f"corrupt JPEG: no marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        (length,) = _U16.unpack_from(data, position + 2)
        start, end = position + 4, position + 2 + length  # the segment's payload: data[start:end]
        if marker == 0xE1 and data.startswith(b"Exif\x00\x00", start, end):
            orientation = _exif_orientation(data[start + 6:end]) or orientation
        elif marker in _SOF_MARKERS:
            if min(end, len(data)) - start < _FRAME_HEADER.size:
                raise ImageProblem("truncated JPEG frame header")
            precision, height, width, components = _FRAME_HEADER.unpack_from(data, start)
            if not width or not height:
                raise ImageProblem("JPEG with zero size")
            reason = None
            if components == 4:
                reason = "CMYK JPEG"
            elif precision != 8:
                reason = f"{precision}-bit JPEG"
            return Header("jpeg", width, height, orientation, needs_conversion=reason)
        elif marker == 0xDA:
            break
        position += 2 + length
    raise ImageProblem("corrupt or truncated JPEG: no frame header")


def _exif_orientation(tiff: bytes) -> int | None:
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    endian = "<" if tiff[:2] == b"II" else ">"
    offset = struct.unpack(endian + "I", tiff[4:8])[0]
    if offset + 2 > len(tiff):
        return None
    count = struct.unpack(endian + "H", tiff[offset:offset + 2])[0]
    for index in range(count):
        entry = offset + 2 + 12 * index
        if entry + 12 > len(tiff):
            return None
        tag, kind = struct.unpack(endian + "HH", tiff[entry:entry + 4])
        if tag == _ORIENTATION_TAG and kind == 3:  # SHORT
            value = struct.unpack(endian + "H", tiff[entry + 8:entry + 10])[0]
            return value if 1 <= value <= 8 else None
    return None


def probe_file(path: Path, head_bytes: int = 256 * 1024) -> Header:
    """The header of an image file, reading only its beginning (the whole file if the header is later)."""
    with path.open("rb") as handle:
        head = handle.read(head_bytes)
        try:
            return read_header(head)
        except ImageProblem:
            rest = handle.read()
            if not rest:
                raise
            return read_header(head + rest)


def displayed_size(header: Header) -> tuple[int, int]:
    """Width and height as CVAT shows the image (after EXIF orientation)."""
    if header.orientation in _SWAPPED_ORIENTATIONS:
        return header.height, header.width
    return header.width, header.height


def prepare_image(data: bytes) -> PreparedImage:
    """Bytes Model Garden can decode, showing what CVAT shows. Raises ImageProblem when unusable."""
    header = read_header(data)
    width, height = displayed_size(header)
    reason = header.needs_conversion
    if header.orientation != 1:
        reason = f"EXIF orientation {header.orientation} applied" + (f"; {reason}" if reason else "")
    if reason is None:
        return PreparedImage(data, header.format, width, height)
    return _convert(data, header, reason)


def _convert(data: bytes, header: Header, reason: str) -> PreparedImage:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageProblem(f"cannot be decoded ({_why(exc)})") from None
    out = io.BytesIO()
    if header.format == "jpeg" and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
        image.convert("RGB" if image.mode != "L" else "L").save(out, format="JPEG", quality=95)
        fmt = "jpeg"
    else:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")
        elif image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(out, format="PNG", compress_level=1)
        fmt = "png"
    return PreparedImage(out.getvalue(), fmt, image.width, image.height, converted=reason)


def check_decodes(data: bytes) -> None:
    """Fully decode once (slow path, used on request): raises ImageProblem for a truncated file."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageProblem(f"cannot be decoded ({_why(exc)})") from None

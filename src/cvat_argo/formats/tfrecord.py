"""TFRecord files and ``tf.train.Example`` messages, written and read without TensorFlow.

The dataset stage converts CVAT exports to TFRecords; importing TensorFlow alone costs about 3 s and
hundreds of MB, more than the whole conversion. Both formats are small and stable, so this module
writes them by hand:

* a TFRecord record is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``,
  all little-endian;
* a ``tf.train.Example`` is ``Example{features=1: Features{feature=1: map<string, Feature>}}`` with
  ``Feature`` a oneof of ``BytesList`` (1), ``FloatList`` (2, packed float32) and ``Int64List``
  (3, packed varints).

Map entries are written in sorted key order so the same input always gives the same bytes (TF's own
serializer makes no such promise). The tests check every byte path against TensorFlow and against
Model Garden's ``TfExampleDecoder``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import google_crc32c

from cvat_argo.errors import DatasetError

# --------------------------------------------------------------------------------------------------
# Feature values
# --------------------------------------------------------------------------------------------------

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, init=False)
class BytesList:
    """A ``tf.train.BytesList``: raw byte strings (encode text to UTF-8 first)."""

    values: tuple[bytes, ...]

    def __init__(self, values: Iterable[bytes] = ()) -> None:
        items = []
        for value in values:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"BytesList takes bytes, got {type(value).__name__} {value!r:.40}; encode text first")
            items.append(bytes(value))
        object.__setattr__(self, "values", tuple(items))


@dataclass(frozen=True, init=False)
class FloatList:
    """A ``tf.train.FloatList``: stored as float32, so values come back rounded to float32."""

    values: tuple[float, ...]

    def __init__(self, values: Iterable[float] = ()) -> None:
        items = []
        for value in values:
            if isinstance(value, (str, bytes)):
                raise TypeError(f"FloatList takes numbers, got {type(value).__name__} {value!r:.40}")
            items.append(float(value))
        object.__setattr__(self, "values", tuple(items))


@dataclass(frozen=True, init=False)
class Int64List:
    """A ``tf.train.Int64List``: signed 64-bit integers (bools and NumPy integers are accepted)."""

    values: tuple[int, ...]

    def __init__(self, values: Iterable[int] = ()) -> None:
        items = []
        for value in values:
            try:
                number = operator.index(value)  # refuses floats, which would silently truncate
            except TypeError:
                raise TypeError(f"Int64List takes integers, got {type(value).__name__} {value!r:.40}") from None
            if not _INT64_MIN <= number <= _INT64_MAX:
                raise ValueError(f"Int64List value {number} is outside the int64 range")
            items.append(number)
        object.__setattr__(self, "values", tuple(items))


Feature = BytesList | FloatList | Int64List

# --------------------------------------------------------------------------------------------------
# Protobuf wire format (only what tf.train.Example needs)
# --------------------------------------------------------------------------------------------------

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_FEATURE_FIELDS: dict[type, int] = {BytesList: 1, FloatList: 2, Int64List: 3}
_ONE_BYTE_VARINTS = [bytes([value]) for value in range(0x80)]


def _varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values go out as their 10-byte two's complement, as protobuf does."""
    if 0 <= value < 0x80:  # tags and most lengths and labels: the hot path
        return _ONE_BYTE_VARINTS[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


_LEN_TAGS = {number: _varint(number << 3 | _LEN) for number in (1, 2, 3)}  # every field an Example uses


def _header(number: int, size: int) -> bytes:
    """The tag and length of a length-delimited field whose ``size``-byte payload follows separately."""
    return _LEN_TAGS[number] + (_ONE_BYTE_VARINTS[size] if size < 0x80 else _varint(size))


def _feature_parts(value: Feature) -> list[bytes]:
    """A ``Feature`` message as pieces to join once: a multi-MB image is copied only by that join."""
    if isinstance(value, BytesList):
        inner: list[bytes] = []
        for item in value.values:
            inner += (_header(1, len(item)), item)
    elif isinstance(value, FloatList):
        try:
            packed = struct.pack(f"<{len(value.values)}f", *value.values)
        except OverflowError:
            raise ValueError(f"FloatList value out of float32 range: {value.values!r:.80}") from None
        inner = [_field(1, packed)] if packed else []  # proto3 leaves an empty packed field out
    elif isinstance(value, Int64List):
        values = value.values
        small = all(0 <= item < 0x80 for item in values)  # labels, flags, sizes < 128: one byte each
        packed = bytes(values) if small else b"".join(_varint(item) for item in values)
        inner = [_field(1, packed)] if packed else []
    else:
        raise TypeError(f"feature value must be BytesList, FloatList or Int64List, got {type(value).__name__}")
    return [_header(_FEATURE_FIELDS[type(value)], sum(map(len, inner))), *inner]


@functools.lru_cache(maxsize=256)
def _key_field(key: str) -> bytes:
    """The map entry's key field; the same dozen keys recur in every record."""
    return _field(1, key.encode("utf-8"))


def encode_example(features: Mapping[str, Feature]) -> bytes:
    """Serialize a ``tf.train.Example``; keys are written sorted, so equal inputs give equal bytes."""
    parts: list[bytes] = []
    for key in sorted(features):
        if not isinstance(key, str):
            raise TypeError(f"feature keys must be str, got {type(key).__name__} {key!r}")
        key_field, value = _key_field(key), _feature_parts(features[key])
        value_size = sum(map(len, value))
        value_header = _header(2, value_size)
        parts += (_header(1, len(key_field) + len(value_header) + value_size), key_field, value_header, *value)
    return b"".join([_header(1, sum(map(len, parts))), *parts])


class _Reader:
    """A cursor over one protobuf message; every overrun is a :class:`DatasetError`."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        if self.pos < len(self.data) and self.data[self.pos] < 0x80:  # one-byte fast path
            self.pos += 1
            return self.data[self.pos - 1]
        result = shift = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise DatasetError(f"malformed tf.train.Example: bad varint at byte {self.pos}")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result & ((1 << 64) - 1)
            shift += 7

    def take(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise DatasetError(f"malformed tf.train.Example: a {size}-byte field overruns its message at {self.pos}")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def fields(self) -> Iterator[tuple[int, int, int, memoryview]]:
        """Yield (field number, wire type, varint value, raw bytes); one of the last two is 0 or empty."""
        empty = memoryview(b"")
        while not self.at_end():
            tag = self.varint()
            number, wire = tag >> 3, tag & 7
            if wire == _VARINT:
                yield number, wire, self.varint(), empty
            elif wire == _LEN:
                yield number, wire, 0, self.take(self.varint())
            elif wire in (_FIXED32, _FIXED64):
                yield number, wire, 0, self.take(4 if wire == _FIXED32 else 8)
            else:
                raise DatasetError(f"malformed tf.train.Example: unsupported wire type {wire} at byte {self.pos}")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _floats(raw: memoryview) -> list[float]:
    if len(raw) % 4:
        raise DatasetError("malformed tf.train.Example: packed FloatList length is not a multiple of 4")
    values = array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _decode_bytes_list(data: memoryview) -> BytesList:
    return BytesList(bytes(raw) for number, wire, _, raw in _Reader(data).fields() if number == 1 and wire == _LEN)


def _decode_float_list(data: memoryview) -> FloatList:
    """Packed (what writers emit) or one fixed32 per value (what parsers must also accept)."""
    values: list[float] = []
    for number, wire, _, raw in _Reader(data).fields():
        if number == 1 and wire in (_LEN, _FIXED32):
            values.extend(_floats(raw))
    return FloatList(values)


def _decode_int64_list(data: memoryview) -> Int64List:
    """Packed (what writers emit) or one varint per value (what parsers must also accept)."""
    values: list[int] = []
    for number, wire, varint, raw in _Reader(data).fields():
        if number == 1 and wire == _VARINT:
            values.append(_signed(varint))
        elif number == 1 and wire == _LEN:
            packed = _Reader(raw)
            while not packed.at_end():
                values.append(_signed(packed.varint()))
    return Int64List(values)


_LIST_DECODERS = {1: _decode_bytes_list, 2: _decode_float_list, 3: _decode_int64_list}


def _decode_feature(key: str, data: memoryview) -> Feature:
    feature: Feature | None = None
    for number, wire, _, raw in _Reader(data).fields():
        if number in _LIST_DECODERS and wire == _LEN:
            feature = _LIST_DECODERS[number](raw)  # a oneof: the last one set wins
    if feature is None:
        raise DatasetError(f"malformed tf.train.Example: feature {key!r} has no bytes, float or int64 list")
    return feature


def _decode_entry(data: memoryview) -> tuple[str, Feature]:
    key, value = b"", memoryview(b"")
    for number, wire, _, raw in _Reader(data).fields():
        if number == 1 and wire == _LEN:
            key = bytes(raw)
        elif number == 2 and wire == _LEN:
            value = raw
    return (name := key.decode("utf-8", errors="replace")), _decode_feature(name, value)


def decode_example(data: bytes) -> dict[str, Feature]:
    """Parse a serialized ``tf.train.Example`` (ours or TensorFlow's) into {key: list}.

    Unknown fields are skipped and a repeated key keeps its last value, as protobuf parsers do.
    """
    features: dict[str, Feature] = {}
    for number, wire, _, body in _Reader(data).fields():
        if number == 1 and wire == _LEN:
            for entry_number, entry_wire, _, entry in _Reader(body).fields():
                if entry_number == 1 and entry_wire == _LEN:
                    key, value = _decode_entry(entry)
                    features[key] = value
    return features


# --------------------------------------------------------------------------------------------------
# TFRecord framing
# --------------------------------------------------------------------------------------------------

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's CRC: CRC32C rotated right by 15 bits plus a constant, so CRCs of CRCs stay useful."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def _frame_parts(data: bytes) -> tuple[bytes, bytes]:
    """The 12 bytes before a record's data and the 4 after it."""
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc32c(length)), _FOOTER.pack(masked_crc32c(data))


def frame_record(data: bytes) -> bytes:
    """One record as it lies in a TFRecord file."""
    header, footer = _frame_parts(data)
    return header + data + footer


class TFRecordWriter:
    """Write one TFRecord file atomically.

    Records go to ``<path>.partial``; only a clean close renames it to ``path``, and an exception
    inside the ``with`` block deletes it. A reader that sees ``path`` can therefore trust that it
    is complete: a killed pod leaves at most a ``.partial`` file, never a short TFRecord.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.records_written = 0
        self.bytes_written = 0
        self._file = open(self.partial_path, "wb")  # noqa: SIM115 - closed in close()/abort()

    def write(self, record: bytes) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: write after close")
        header, footer = _frame_parts(record)
        self._file.write(header)
        self._file.write(record)  # written as is: no copy of a multi-MB image
        self._file.write(footer)
        self.records_written += 1
        self.bytes_written += len(header) + len(record) + len(footer)

    def close(self) -> None:
        """Flush, fsync and move the file into place. Closing twice is harmless."""
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.partial_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the partial file; ``path`` is left untouched."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_records(path: str | os.PathLike[str], verify: bool = True) -> Iterator[bytes]:
    """Yield the records of a TFRecord file.

    The length CRC is always checked (a corrupt length would send the reader off into garbage);
    ``verify`` also checks each record's data CRC. Damage raises :class:`DatasetError` with the file,
    the record number and its byte offset.
    """
    path = Path(path)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        offset = index = 0
        while offset < size:
            where = f"{path}: record {index} at byte offset {offset}"
            header = file.read(_HEADER.size)
            if len(header) < _HEADER.size:
                raise DatasetError(f"{where}: truncated header ({len(header)} of 12 bytes); the file is cut short")
            length, length_crc = _HEADER.unpack(header)
            if length_crc != masked_crc32c(header[:8]):
                raise DatasetError(f"{where}: length CRC mismatch; the file is corrupt or not a TFRecord")
            end = offset + _HEADER.size + length + _FOOTER.size
            if end > size:
                raise DatasetError(
                    f"{where}: truncated record ({length} data bytes announced, the file ends at byte {size});"
                    " the file is cut short"
                )
            data = file.read(length)
            (data_crc,) = _FOOTER.unpack(file.read(_FOOTER.size))
            if verify and data_crc != masked_crc32c(data):
                raise DatasetError(f"{where}: data CRC mismatch; the file is corrupt")
            yield data
            offset, index = end, index + 1


# --------------------------------------------------------------------------------------------------
# Sharded output
# --------------------------------------------------------------------------------------------------

DEFAULT_SHARD_BYTES = 150 * 2**20


def plan_shards(total_bytes: int, target_bytes: int = DEFAULT_SHARD_BYTES) -> int:
    """How many shards keep each near ``target_bytes`` (100-200 MB reads well from object storage); at least 1."""
    if target_bytes <= 0:
        raise ValueError(f"target_bytes must be positive, got {target_bytes}")
    if total_bytes < 0:
        raise ValueError(f"total_bytes must not be negative, got {total_bytes}")
    return max(1, math.ceil(total_bytes / target_bytes))


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``train-00003-of-00010.tfrecord``: the naming Model Garden's file patterns expect."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    records: int
    bytes: int


class ShardedWriter:
    """Write ``num_shards`` TFRecord files for one split, all or none.

    Every shard file is created, even one that stays empty, so ``split-*-of-N`` always matches N
    files. The caller picks the shard of each record (e.g. ``index % num_shards``) so the layout is
    reproducible. On an exception, or if finishing any shard fails, every file of the split that this
    writer made is removed.
    """

    def __init__(self, out_dir: str | os.PathLike[str], split: str, num_shards: int) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}")
        if not split or "/" in split or os.sep in split:
            raise ValueError(f"split must be a plain name like 'train', got {split!r}")
        self.out_dir = Path(out_dir)
        self.split = split
        self.num_shards = num_shards
        self.pattern = str(self.out_dir / f"{split}-*-of-{num_shards:05d}.tfrecord")
        self.shards: list[ShardInfo] = []
        self._writers: list[TFRecordWriter] = []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            for index in range(num_shards):
                self._writers.append(TFRecordWriter(self.out_dir / shard_name(split, index, num_shards)))
        except BaseException:
            self.abort()
            raise

    def write(self, record: bytes, shard_index: int) -> None:
        if not self._writers:
            raise ValueError(f"{self.pattern}: write after close")
        if not 0 <= shard_index < self.num_shards:
            raise ValueError(f"shard_index must be in 0..{self.num_shards - 1}, got {shard_index}")
        self._writers[shard_index].write(record)

    def close(self) -> list[ShardInfo]:
        """Finish every shard; returns (path, records, bytes) per shard, also kept in ``.shards``."""
        if not self._writers:
            return self.shards
        done: list[ShardInfo] = []
        try:
            for writer in self._writers:
                writer.close()
                done.append(ShardInfo(writer.path, writer.records_written, writer.bytes_written))
        except BaseException:
            for info in done:
                info.path.unlink(missing_ok=True)
            self.abort()
            raise
        self._writers = []
        self.shards = done
        return done

    def abort(self) -> None:
        """Delete every partial file; finished shards of a failed close are removed by close itself."""
        for writer in self._writers:
            writer.abort()
        self._writers = []

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------------
# TF Object Detection API examples
# --------------------------------------------------------------------------------------------------

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_IMAGE_FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding it."""
    if not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (no PNG signature and IHDR chunk)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's SOF marker, as stored: EXIF orientation is NOT applied.

    TensorFlow's ``decode_jpeg`` ignores EXIF orientation too, so this is the frame the model sees.
    """
    if not data.startswith(_JPEG_MAGIC):
        raise ValueError("not a JPEG (no FF D8 FF signature)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"not a valid JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (segment,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + segment
    raise ValueError("not a valid JPEG: no frame header (SOF) before the image data")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_mask_png(mask: bytes | bytearray | memoryview, width: int, height: int) -> bytes:
    """A full-image instance mask as an 8-bit grayscale PNG with pixel values 0 and 1.

    ``mask`` is ``width * height`` bytes, row-major, each 0 or 1 (``memoryview(bool_array)`` of a
    C-ordered NumPy array works). The values must be 0/1, not 0/255: Model Garden's decoder turns
    them into floats and the Mask R-CNN loss uses them as binary cross-entropy targets as they are
    (only ``mask_binarize_threshold`` would rescue 0/255, and it is off by default).
    """
    data = memoryview(mask).tobytes()
    if width <= 0 or height <= 0 or len(data) != width * height:
        raise ValueError(f"mask has {len(data)} bytes, expected width * height = {width} * {height}")
    if data.translate(None, b"\x00\x01"):
        raise ValueError("mask values must be 0 or 1")
    rows = b"".join(b"\x00" + data[row * width : (row + 1) * width] for row in range(height))  # filter 0: none
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale, not interlaced
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows, 6)) + _png_chunk(b"IEND", b"")
    return _PNG_MAGIC + chunks


def _image_size(encoded: bytes, image_format: str) -> tuple[int, int]:
    return jpeg_size(encoded) if image_format == "jpeg" else png_size(encoded)


def _check_box(index: int, box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"box {index} must be (x_min, y_min, x_max, y_max), got {box!r}")
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x_min, y_min, x_max, y_max)):
        raise ValueError(f"box {index} has a non-finite coordinate: {box!r}")
    if not (0 <= x_min < x_max <= width and 0 <= y_min < y_max <= height):
        raise ValueError(
            f"box {index} {tuple(box)!r} is empty or outside the {width}x{height} image;"
            " clip boxes to the image and drop empty ones"
        )
    return x_min, y_min, x_max, y_max


def detection_example(
    *,
    encoded: bytes,
    image_format: str,
    width: int,
    height: int,
    source_id: int,
    filename: str,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    texts: Sequence[str],
    is_crowd: Sequence[bool] | None = None,
    areas: Sequence[float] | None = None,
    masks_png: Sequence[bytes] | None = None,
) -> bytes:
    """A serialized ``tf.train.Example`` with the TF Object Detection API keys Model Garden reads.

    ``boxes`` are (x_min, y_min, x_max, y_max) in pixels of the encoded image and are stored
    normalised to 0..1. ``labels`` are 1-based class ids (0 is background). ``source_id`` must be
    unique in the dataset: Model Garden parses it as a number to match detections to ground truth
    in COCO evaluation, and an empty or non-numeric one silently collides. ``areas`` default to the
    box areas in pixels (pass mask areas for polygons to match COCO's segmentation area).
    ``masks_png`` are single-channel PNGs of the full image size with values 0 and 1 (not 255: see
    :func:`encode_mask_png`), one per box; they are only size-checked here.

    ``width`` and ``height`` are checked against the encoded image's header: a JPEG whose EXIF
    orientation swaps its sides must be re-encoded upright first, because TensorFlow does not apply
    EXIF orientation while CVAT's coordinates do.
    """
    image_format = _IMAGE_FORMATS.get(image_format.lower(), "")
    if not image_format:
        raise ValueError("image_format must be 'jpeg' or 'png'")
    if width <= 0 or height <= 0:
        raise ValueError(f"{filename}: image size must be positive, got {width}x{height}")
    try:
        actual = _image_size(encoded, image_format)
    except ValueError as error:
        raise ValueError(f"{filename}: {error}") from None
    if actual != (width, height):
        raise ValueError(
            f"{filename}: the {image_format.upper()} is {actual[0]}x{actual[1]} but width/height say {width}x{height}"
            " (EXIF orientation? re-encode the image upright first)"
        )
    if isinstance(source_id, bool) or operator.index(source_id) < 0:
        raise ValueError(f"{filename}: source_id must be a non-negative integer, got {source_id!r}")
    count = len(boxes)
    crowd = [False] * count if is_crowd is None else list(is_crowd)
    optional = {"labels": labels, "texts": texts, "is_crowd": crowd}
    if areas is not None:
        optional["areas"] = areas
    if masks_png is not None:
        optional["masks_png"] = masks_png
    for name, values in optional.items():
        if len(values) != count:
            raise ValueError(f"{filename}: {len(values)} {name} for {count} boxes")
    checked = [_check_box(i, box, width, height) for i, box in enumerate(boxes)]
    for i, label in enumerate(labels):
        if isinstance(label, bool) or operator.index(label) < 1:
            raise ValueError(f"{filename}: label {i} must be a 1-based class id, got {label!r}")
    for i, mask in enumerate(masks_png or ()):
        try:
            mask_size = png_size(mask)
        except ValueError as error:
            raise ValueError(f"{filename}: mask {i}: {error}") from None
        if mask_size != (width, height):
            raise ValueError(f"{filename}: mask {i} is {mask_size[0]}x{mask_size[1]}, the image is {width}x{height}")
    box_areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in checked] if areas is None else list(areas)

    features: dict[str, Feature] = {
        "image/encoded": BytesList([encoded]),
        "image/format": BytesList([image_format.encode()]),
        "image/height": Int64List([height]),
        "image/width": Int64List([width]),
        "image/source_id": BytesList([str(operator.index(source_id)).encode()]),
        "image/filename": BytesList([filename.encode("utf-8")]),
        "image/key/sha256": BytesList([hashlib.sha256(encoded).hexdigest().encode()]),
        "image/object/bbox/xmin": FloatList(b[0] / width for b in checked),
        "image/object/bbox/ymin": FloatList(b[1] / height for b in checked),
        "image/object/bbox/xmax": FloatList(b[2] / width for b in checked),
        "image/object/bbox/ymax": FloatList(b[3] / height for b in checked),
        "image/object/class/label": Int64List(labels),
        "image/object/class/text": BytesList(text.encode("utf-8") for text in texts),
        "image/object/area": FloatList(box_areas),
        "image/object/is_crowd": Int64List(int(bool(c)) for c in crowd),
    }
    if masks_png is not None:
        features["image/object/mask"] = BytesList(masks_png)
    return encode_example(features)

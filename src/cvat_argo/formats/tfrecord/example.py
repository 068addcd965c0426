"""The ``tf.train.Example`` protobuf message, encoded and decoded by hand (no TensorFlow, no protobuf).

Importing TensorFlow costs about 3 s and hundreds of MB, more than a whole dataset conversion, and
the message is small and stable: ``Example{features=1: Features{feature=1: map<string, Feature>}}``
with ``Feature`` a oneof of ``BytesList`` (1), ``FloatList`` (2, packed float32) and ``Int64List``
(3, packed varints). So this module speaks just that much of the protobuf wire format.

Map entries are written in sorted key order so the same input always gives the same bytes (TF's own
serializer makes no such promise). The tests check every byte path against TensorFlow.
"""

from __future__ import annotations

import functools
import operator
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ...errors import DatasetError

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

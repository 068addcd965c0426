"""TFRecord files: record framing, and whole files and sharded splits written atomically.

A TFRecord record is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``,
all little-endian. The records are opaque bytes here (a serialized ``tf.train.Example``, see
:mod:`.example`); this module only frames them, checks them on reading, and makes sure a reader never
sees a half-written file or a half-written split.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import google_crc32c

from ...errors import DatasetError

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

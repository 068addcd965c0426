"""Safe extraction of the archives users hand us: zip, tar, tar.gz/tgz, tar.bz2 and tar.xz.

A CVAT export or a base checkpoint is untrusted input, and extracting it is where such input can do
the most harm: write outside the target (absolute names, ``..``, links), create device files, or fill
the disk (a zip bomb, or a header that understates a member's size). :func:`extract` refuses all of
these with a :class:`~cvat_argo.errors.DatasetError` naming the archive and the member, and it
extracts into a staging folder beside ``dest`` first, so a refusal leaves neither a half-extracted
tree in ``dest`` nor anything outside it.

The kind of archive is decided by :func:`archive_kind` from its first bytes, never by scanning the whole
file (``tarfile.is_tarfile`` reads a file of zeros to its end, minutes for a few GB): zip by
``PK\\x03\\x04`` (or ``PK\\x05\\x06``, an empty zip) and its central directory; gzip (``\\x1f\\x8b``),
bzip2 (``BZh1``..``BZh9``) and xz (``\\xfd7zXZ\\0``) by their signature and then a valid tar header in the
first 512 bytes they decompress to (from at most :data:`PROBE_BYTES` of input); a plain tar by ``ustar``
at offset 257 of a first header whose checksum is right. Pre-POSIX (v7) tars, which carry no magic, are
not accepted. Anything else is not an archive, whatever its name.
"""

from __future__ import annotations

import bz2
import lzma
import os
import re
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArchiveRefused, DatasetError

DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_BYTES = 64 * 2**30
# Below this many uncompressed bytes the ratio is not checked: tiny archives of text compress very well
# and cannot hurt anyone.
RATIO_FLOOR_BYTES = 1 << 20
_CHUNK = 1 << 20
# At most this much of a compressed file is read to find the tar header it starts with; a bzip2 block
# (up to 900 kB of incompressible weights) must be read whole before it yields a byte.
PROBE_BYTES = 2 << 20
_TAR_BLOCK = 512
KINDS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz")
_TAR_MODES = {"tar": "r:", "tar.gz": "r:gz", "tar.bz2": "r:bz2", "tar.xz": "r:xz"}
# Python 3.11.4+ / 3.10.12+ ship tarfile's "data" filter; older ones rely on our own checks alone.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FILTER_ERROR = getattr(tarfile, "FilterError", ())
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file that :func:`extract` can open (judged by its first bytes, not by name)."""
    return archive_kind(Path(path)) is not None


def archive_kind(path: Path) -> str | None:
    """``zip``, ``tar``, ``tar.gz``, ``tar.bz2`` or ``tar.xz`` from the file's first bytes; None otherwise.

    Reads at most :data:`PROBE_BYTES` (the end of a zip's central directory aside), so a file of zeros or
    any other large non-archive is judged in milliseconds.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return None
        with path.open("rb") as file:
            head = file.read(_TAR_BLOCK)
            if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                return "zip" if zipfile.is_zipfile(path) else None  # reads the end of the file only
            decompressor = _decompressor(head)
            if decompressor is None:
                return "tar" if _is_tar_header(head) else None
            kind, inflate = decompressor
            probe = head + file.read(PROBE_BYTES - len(head))
    except OSError:
        return None
    try:
        first = inflate(probe)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return None
    return kind if _is_tar_header(first) else None


def _decompressor(head: bytes):
    """(kind, function: compressed probe -> its first tar block) for a compressed file's signature."""
    if head[:2] == b"\x1f\x8b":
        return "tar.gz", lambda data: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, _TAR_BLOCK)
    if len(head) > 3 and head[:3] == b"BZh" and head[3] in b"123456789":
        return "tar.bz2", lambda data: bz2.BZ2Decompressor().decompress(data, _TAR_BLOCK)
    if head[:6] == b"\xfd7zXZ\x00":
        return "tar.xz", lambda data: lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data, _TAR_BLOCK)
    return None


def _is_tar_header(block: bytes) -> bool:
    """A POSIX/GNU tar header: ``ustar`` at offset 257 and a right checksum (bytes 148-155, octal)."""
    if len(block) < _TAR_BLOCK or block[257:262] != b"ustar":
        return False
    try:
        stored = int(block[148:156].replace(b"\x00", b" ").strip() or b"-", 8)
    except ValueError:
        return False
    header = block[:_TAR_BLOCK]
    unsigned = sum(header[:148]) + 8 * 0x20 + sum(header[156:])
    signed = unsigned - 256 * sum(1 for byte in header[:148] + header[156:] if byte > 127)
    return stored in (unsigned, signed)


def extract(archive: Path, dest: Path, *, max_ratio: float = DEFAULT_MAX_RATIO,
            max_bytes: int = DEFAULT_MAX_BYTES, name: str | None = None) -> Path:
    """Extract ``archive`` into the folder ``dest`` (created if needed) and return ``dest``.

    Refuses, with nothing kept: absolute names, ``..`` components, links and device files, and more than
    ``max_bytes`` uncompressed or ``max_ratio`` times the archive's size. Top-level names that already
    exist in ``dest`` are refused too: extraction adds to a folder, it never overwrites. ``name`` is what
    messages call the archive (the URI it was downloaded from); default: its path.
    """
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    shown: Path | str = name or archive
    if kind is None:
        raise DatasetError(f"{shown} is not a zip or tar archive (or it does not exist): its first bytes match "
                           "no zip, gzip, bzip2, xz or tar signature")
    budget = _Budget(shown, archive.stat().st_size, max_ratio, max_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A sibling of dest (same file system, so the final move is a rename), created with the umask's mode.
    staging = dest.parent / f".{dest.name}.extracting-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        if kind == "zip":
            _extract_zip(archive, staging, budget)
        else:
            _extract_tar(archive, _TAR_MODES[kind], staging, budget)
        _move_into(staging, dest, shown)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _refuse(archive: Path | str, member: str, why: str) -> ArchiveRefused:
    return ArchiveRefused(f"{archive}: refused member {member!r}: {why}; nothing was extracted")


@dataclass
class _Budget:
    """Running total of uncompressed bytes, checked against the absolute and the ratio limits."""

    archive: Path | str  # what messages call the archive
    compressed: int
    max_ratio: float
    max_bytes: int
    total: int = 0

    def reserve(self, member: str, size: int) -> None:
        self.total += size
        if self.total > self.max_bytes:
            raise _refuse(self.archive, member, f"the archive expands to more than {self.max_bytes} bytes")
        if self.total > RATIO_FLOOR_BYTES and self.total > self.max_ratio * max(self.compressed, 1):
            raise _refuse(self.archive, member, f"the archive expands more than {self.max_ratio:g} times its "
                                                f"size of {self.compressed} bytes (a zip bomb?)")


def _safe_parts(archive: Path | str, name: str) -> tuple[str, ...]:
    """The path components of a member name; absolute names, drives and ``..`` are refused."""
    if "\x00" in name:
        raise _refuse(archive, name, "the name contains a NUL byte")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _refuse(archive, name, "absolute path")
    parts = tuple(part for part in re.split(r"[\\/]", name) if part not in ("", "."))
    if ".." in parts:
        raise _refuse(archive, name, "'..' component (path traversal)")
    return parts


# ---------------------------------------------------------------------------------------------- zip


def _extract_zip(path: Path, staging: Path, budget: _Budget) -> None:
    archive = budget.archive  # what messages call it
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:  # every header is checked before anything is written
                _check_zip_member(archive, info)
                budget.reserve(info.filename, info.file_size)
            for info in infos:
                _write_zip_member(archive, zf, info, staging)
    except ArchiveRefused:
        raise
    except _CORRUPT as exc:
        raise DatasetError(f"{archive}: cannot be read as a zip archive ({exc})") from exc


def _check_zip_member(archive: Path | str, info: zipfile.ZipInfo) -> None:
    _safe_parts(archive, info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _refuse(archive, info.filename, "symbolic link")
    if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        raise _refuse(archive, info.filename, "device file, FIFO or socket")
    if info.flag_bits & 0x1:
        raise _refuse(archive, info.filename, "encrypted members are not supported")


def _write_zip_member(archive: Path | str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, staging: Path) -> None:
    parts = _safe_parts(archive, info.filename)
    if not parts:
        return
    target = staging.joinpath(*parts)
    try:
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as source, target.open("wb") as out:
            written = 0
            # Count what really comes out: a header that understates the size cannot get past the budget.
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise _refuse(archive, info.filename, f"holds more than the {info.file_size} bytes its "
                                                          "header declares")
                out.write(chunk)
    except ArchiveRefused:
        raise
    except _CORRUPT as exc:
        raise _refuse(archive, info.filename, f"cannot be extracted ({exc})") from exc


# ---------------------------------------------------------------------------------------------- tar


def _extract_tar(path: Path, mode: str, staging: Path, budget: _Budget) -> None:
    archive = budget.archive  # what messages call it
    try:
        with tarfile.open(path, mode) as tar:  # the kind archive_kind found: no guessing by trial
            for member in tar:  # streamed: each header is checked before its data is written
                _check_tar_member(archive, member)
                budget.reserve(member.name, member.size if member.isfile() else 0)
                _extract_tar_member(archive, tar, member, staging)
    except ArchiveRefused:
        raise
    except _CORRUPT as exc:
        raise DatasetError(f"{archive}: cannot be read as a tar archive ({exc})") from exc


def _check_tar_member(archive: Path | str, member: tarfile.TarInfo) -> None:
    _safe_parts(archive, member.name)
    if member.issym() or member.islnk():
        raise _refuse(archive, member.name, f"{'symbolic' if member.issym() else 'hard'} link to "
                                            f"{member.linkname!r}")
    if member.isdev():
        raise _refuse(archive, member.name, "device file or FIFO")
    if not (member.isfile() or member.isdir()):
        raise _refuse(archive, member.name, f"unsupported member type {member.type!r}")


def _extract_tar_member(archive: Path | str, tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path) -> None:
    try:
        tar.extract(member, staging, set_attrs=member.isfile(), **_TAR_FILTER)
    except _FILTER_ERROR as exc:  # the data filter agrees with our checks; this is defence in depth
        raise _refuse(archive, member.name, str(exc)) from exc
    except _CORRUPT as exc:
        raise _refuse(archive, member.name, f"cannot be extracted ({exc})") from exc


# ----------------------------------------------------------------------------------------- finish


def _move_into(staging: Path, dest: Path, archive: Path | str) -> None:
    """Move the extracted tree into ``dest``; an existing name in ``dest`` is refused, not overwritten."""
    if not dest.exists():
        staging.rename(dest)
        return
    if not dest.is_dir():
        raise DatasetError(f"cannot extract {archive} into {dest}: it is a file")
    entries = sorted(os.listdir(staging))
    clashes = [name for name in entries if (dest / name).exists()]
    if clashes:
        raise DatasetError(f"cannot extract {archive} into {dest}: {clashes[0]!r} already exists there")
    for name in entries:
        os.replace(staging / name, dest / name)

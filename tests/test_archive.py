"""Safe extraction: real zip and tar archives built here, the good ones and the hostile ones."""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from cvat_argo.errors import DatasetError
from cvat_argo.storage.archive import extract, is_archive

FILES = {
    "annotations.xml": b"<annotations/>",
    "images/train/0001.jpg": os.urandom(5000),
    "images/train/0002.jpg": os.urandom(3000),
    "images/empty.txt": b"",
}
ZEROS = 50 * 2**20  # 50 MB of zeros: ~50 kB compressed, a ratio near 1000


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    mode = {".gz": "w:gz", ".tgz": "w:gz", ".bz2": "w:bz2", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    """(folder holding the archive, dest): dest's parent starts empty, so leftovers are easy to see."""
    (tmp_path / "in").mkdir()
    return tmp_path / "in", tmp_path / "out" / "dest"


# ------------------------------------------------------------------------------------ happy paths


def test_zip(dirs):
    source, dest = dirs
    archive = _zip(source / "export.zip", [("images/", b""), *FILES.items()])
    assert is_archive(archive)
    assert extract(archive, dest) == dest
    assert _files(dest) == FILES
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest"]  # no staging folder left


@pytest.mark.parametrize("name", ["export.tar", "export.tar.gz", "export.tgz", "export.tar.bz2", "export.tar.xz"])
def test_tar(dirs, name):
    source, dest = dirs
    folder = tarfile.TarInfo("images")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o755
    archive = _tar(source / name, [(folder, b""), *((_file(n), data) for n, data in FILES.items())])
    assert is_archive(archive)
    extract(archive, dest)
    assert _files(dest) == FILES
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest"]


def test_extract_adds_to_an_existing_folder_but_never_overwrites(dirs):
    source, dest = dirs
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_bytes(b"mine")
    extract(_zip(source / "a.zip", [("a/x", b"1")]), dest)
    assert _files(dest) == {"a/x": b"1", "keep.txt": b"mine"}
    with pytest.raises(DatasetError, match="'a' already exists there"):
        extract(_zip(source / "b.zip", [("a/x", b"2")]), dest)
    assert _files(dest) == {"a/x": b"1", "keep.txt": b"mine"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest"]


def test_is_archive_judges_content(tmp_path):
    (tmp_path / "notes.zip").write_text("not a zip")
    (tmp_path / "data.tar.gz").write_bytes(b"\x1f\x8b garbage")
    assert not is_archive(tmp_path / "notes.zip")
    assert not is_archive(tmp_path / "data.tar.gz")
    assert not is_archive(tmp_path / "missing.zip")
    assert not is_archive(tmp_path)
    with pytest.raises(DatasetError, match=re.escape("notes.zip is not a zip or tar archive")):
        extract(tmp_path / "notes.zip", tmp_path / "out")


# ------------------------------------------------------------------------------------- refusals


def _zip_symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("images/link")
    info.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _tar_device() -> tarfile.TarInfo:
    info = tarfile.TarInfo("dev/null")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


HOSTILE = {
    "zip-absolute": ("x.zip", lambda evil: [("ok.txt", b"ok"), (str(evil), b"pwned")], "absolute path"),
    "zip-dotdot": ("x.zip", lambda evil: [("ok.txt", b"ok"), ("../evil", b"pwned")], "'..' component"),
    "zip-nested-dotdot": ("x.zip", lambda evil: [("a/../../evil", b"pwned")], "'..' component"),
    "zip-backslash-dotdot": ("x.zip", lambda evil: [("..\\evil", b"pwned")], "'..' component"),
    "zip-symlink": ("x.zip", lambda evil: [("ok.txt", b"ok"), (_zip_symlink(), b"/etc/passwd")], "symbolic link"),
    "zip-bomb": ("x.zip", lambda evil: [("ok.txt", b"ok"), ("zeros.bin", bytes(ZEROS))], "expands more than 200 times"),
    "tar-absolute": ("x.tar.gz", lambda evil: [(_file("ok.txt"), b"ok"), (_file(str(evil)), b"pwned")],
                     "absolute path"),
    "tar-dotdot": ("x.tar.gz", lambda evil: [(_file("ok.txt"), b"ok"), (_file("../evil"), b"pwned")],
                   "'..' component"),
    "tar-symlink": ("x.tar.gz", lambda evil: [(_file("ok.txt"), b"ok"), (_link("link", str(evil)), b"")],
                    "symbolic link"),
    "tar-symlink-then-write-through": ("x.tar", lambda evil: [(_link("d", str(evil.parent)), b""),
                                                              (_file("d/evil"), b"pwned")], "symbolic link"),
    "tar-hardlink": ("x.tar", lambda evil: [(_file("ok.txt"), b"ok"), (_link("h", "/etc/passwd", tarfile.LNKTYPE), b"")],
                     "hard link"),
    "tar-device": ("x.tar", lambda evil: [(_file("ok.txt"), b"ok"), (_tar_device(), b"")], "device file"),
    "tar-bomb": ("x.tar.gz", lambda evil: [(_file("ok.txt"), b"ok"), (_file("zeros.bin"), bytes(ZEROS))],
                 "expands more than 200 times"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_refuses_hostile_members_and_keeps_nothing(tmp_path, dirs, case):
    source, dest = dirs
    name, members, why = HOSTILE[case]
    evil = tmp_path / "evil"  # where an absolute name or a link would point
    build = _zip if name.endswith(".zip") else _tar
    archive = build(source / name, members(evil))
    with pytest.raises(DatasetError, match=re.escape(why)) as caught:
        extract(archive, dest)
    assert str(archive) in str(caught.value) and "refused member" in str(caught.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no staging folder, nothing beside dest
    assert not [p for p in tmp_path.rglob("*") if "evil" in p.name and p != archive]
    assert sorted(p.name for p in source.iterdir()) == [name]


def test_refusal_keeps_an_existing_dest_as_it_was(dirs):
    source, dest = dirs
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_bytes(b"mine")
    with pytest.raises(DatasetError, match=re.escape("'..' component")):
        extract(_zip(source / "x.zip", [("a.txt", b"a"), ("../evil", b"pwned")]), dest)
    assert _files(dest) == {"keep.txt": b"mine"}


def test_max_bytes(dirs):
    source, dest = dirs
    archive = _zip(source / "x.zip", [("a.bin", os.urandom(600)), ("b.bin", os.urandom(600))])
    with pytest.raises(DatasetError, match=re.escape("refused member 'b.bin': the archive expands to more than 1000 bytes")):
        extract(archive, dest, max_bytes=1000)
    assert not dest.exists()


def test_zip_header_that_understates_the_size(dirs):
    """A zip whose headers declare 10 bytes for 5 MB of zeros gets past the budget check but not the write."""
    source, dest = dirs
    archive = _zip(source / "x.zip", [("ok.txt", b"ok"), ("big.bin", bytes(5 * 2**20))])
    data = bytearray(archive.read_bytes())
    # (signature, offset of the file name, offset of the uncompressed size): local header, central directory
    for signature, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        start = data.find(signature)
        while data[start + name_at:start + name_at + 7] != b"big.bin":
            start = data.find(signature, start + 1)
        data[start + size_at:start + size_at + 4] = struct.pack("<I", 10)
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).getinfo("big.bin").file_size == 10
    with pytest.raises(DatasetError, match=re.escape("refused member 'big.bin'")):
        extract(archive, dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


# ------------------------------------------------------------------------------ kind by first bytes


def test_a_file_of_zeros_is_not_an_archive_and_is_judged_at_once(dirs):
    """tarfile.is_tarfile read 64 MiB of zeros for 3 s of CPU and called them an (empty) tar."""
    source, dest = dirs
    zeros = source / "base.tar"
    with zeros.open("wb") as file:
        file.truncate(64 * 2**20)  # sparse: all zeros, no disk
    cpu = time.process_time()
    assert not is_archive(zeros)
    with pytest.raises(DatasetError, match=re.escape(f"{zeros} is not a zip or tar archive")):
        extract(zeros, dest)
    assert time.process_time() - cpu < 0.2
    assert not dest.parent.exists()  # refused before anything was made


def test_kind_comes_from_the_first_bytes_not_the_name(tmp_path):
    from cvat_argo.storage.archive import archive_kind

    members = [(_file("a.txt"), b"a" * 1000)]
    for kind, suffix in (("tar", ".tar"), ("tar.gz", ".gz"), ("tar.bz2", ".bz2"), ("tar.xz", ".xz")):
        built = _tar(tmp_path / f"x{suffix}", members)
        renamed = built.rename(tmp_path / f"weights-{kind}.bin")
        assert archive_kind(renamed) == kind
    assert archive_kind(_zip(tmp_path / "x.zip", [("a.txt", b"a")]).rename(tmp_path / "export.tar")) == "zip"
    (tmp_path / "plain.gz").write_bytes(gzip.compress(b"not a tar, only gzip" * 100))
    (tmp_path / "v7-looking.tar").write_bytes(b"a.txt".ljust(512, b"\0") + bytes(1024))
    (tmp_path / "xz-garbage.tar.xz").write_bytes(b"\xfd7zXZ\x00" + os.urandom(100))
    for name in ("plain.gz", "v7-looking.tar", "xz-garbage.tar.xz"):
        assert archive_kind(tmp_path / name) is None, name


def test_refusals_name_the_source_not_the_download(dirs):
    source, dest = dirs
    archive = _zip(source / "x.zip", [("../evil", b"pwned")])
    with pytest.raises(DatasetError, match=re.escape("https://example.com/base.zip: refused member '../evil'")):
        extract(archive, dest, name="https://example.com/base.zip")

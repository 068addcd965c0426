"""Fetching a source by URI to local disk: ``https://``, ``gs://`` (public objects), ``s3://`` and paths.

A source is what a user names in a request (a dataset export, a base checkpoint, a model to serve), not
an artifact of a run: it lives wherever the user keeps it, is read once, and may be pinned by a sha256.
:func:`fetch` brings one to local disk and checks that digest. ``s3://`` is read through
:mod:`cvat_argo.storage.store` (its client, its error mapping, its atomic ``.partial`` files), so a
bucket reads the same whether it holds sources or artifacts.

Limits (:class:`Limits`, one owner: this module). Every fetch is bounded, whoever calls it:

- size: at most ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`, 5 GiB; pull-base-model passes the
  catalog's ``checkpoint.max_bytes``) received and at most ``max_bytes`` written. ``Accept-Encoding:
  identity`` is asked for; a server that compresses anyway (``gzip``, ``deflate``) is decoded here in
  1 MiB pieces and the decoded bytes count against the cap, so a gzip bomb stops at the cap and never
  lands in memory or on disk whole. A ``Content-Length`` (or an S3 object's listed size, or a local
  file's size) over the cap is refused before a byte is read.
- time: an HTTP(S) download may take ``max_seconds`` in all (default 2 h) and each read waits at most
  ``read_timeout`` (5 min); the clock is checked after every socket read, so a trickling server is
  stopped at most one read late; a local folder copy is held to ``max_seconds`` too. S3 objects rely on the
  store client's own timeouts (its endpoint is the operator's, not the user's).
- exceeding a cap is a permanent :class:`~cvat_argo.errors.DatasetError` (exit 4) naming the URI and the
  cap: retrying cannot help. A dropped connection, a stalled read or an HTTP 5xx stays a
  :class:`~cvat_argo.errors.TransientError` (exit 75).
- the ``.partial`` file of a download is removed on every exit path (an error, a cap, a digest
  mismatch, KeyboardInterrupt), and so is a half-copied folder.

Local sources under allowed roots. A path (or ``file://``) is returned as it is unless the caller passes
``local_roots`` — pull-base-model always does, through :func:`local_roots` — and then:

- the path is resolved first (``realpath``: ``..`` and any link in the path itself are resolved once,
  and the result is what is judged) and must lie inside one of the allowed roots, else a
  :class:`~cvat_argo.errors.CvatArgoError` (exit 2) names the URI and the roots before anything is read
  or even tested for existence;
- the allowed roots are the absolute folders listed in ``CVAT_ARGO_MODEL_ROOTS``
  (:data:`MODEL_ROOTS_VAR`, ``os.pathsep``-separated, empty entries ignored), plus folders the caller
  vouches for — pull-base-model adds its run's own store folder (a :class:`~.store.LocalStore`'s root,
  or, for a local run it writes into, the folder that holds that run's folder), where a local run's
  earlier models live;
- a root is unusable when it is ``/``, or is, contains or lies inside a system folder
  (:data:`SYSTEM_FOLDERS`: ``/etc``, ``/proc``, ``/sys``, ``/dev``, ``/run``, ``/var/run``, ``/boot``,
  ``/root``, ``/var/lib/kubelet``, compared after resolving links). Such an entry of
  ``CVAT_ARGO_MODEL_ROOTS`` is a configuration error naming it; such an implied root is dropped. So no
  setting admits ``/etc``, and a path inside a system folder is refused whatever the roots say;
- a file must be a regular file within the size cap; it is returned as it is (never copied or removed);
- a folder is copied into ``dest`` through directory descriptors, never following a link: a symbolic link
  anywhere inside it is **refused** (the fetch fails and nothing is kept; it is not skipped, because a
  checkpoint that silently lacks a file is worse than a clear error), so are devices, FIFOs and
  sockets; only regular files and folders are copied, at most ``max_bytes`` in all, :data:`MAX_FILES`
  entries and :data:`MAX_DEPTH` levels.

Without ``local_roots`` (a dataset export the user names on their own machine) a path is returned as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import stat
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
import urllib3

from ..errors import CvatArgoError, DatasetError, TransientError
from .digest import file_sha256
from .keys import clean_key
from .store import (
    _CHUNK,
    PARTIAL_SUFFIX,
    S3Store,
    _NullBar,
    _redact,
    _relative_name,
    atomic_path,
    progress_bar,
    s3_errors,
    store_from_url,
)

# Public gs:// objects are read over HTTPS; tests point this at a loopback server.
GCS_PUBLIC_ENDPOINT = "https://storage.googleapis.com"
DEFAULT_MAX_BYTES = 5 * 2**30
DEFAULT_MAX_SECONDS = 2 * 3600.0
READ_TIMEOUT = 300.0  # one read of the response body (a stalled server): transient
CONNECT_TIMEOUT = 10.0
MODEL_ROOTS_VAR = "CVAT_ARGO_MODEL_ROOTS"
SYSTEM_FOLDERS = ("/etc", "/proc", "/sys", "/dev", "/run", "/var/run", "/boot", "/root", "/var/lib/kubelet")
MAX_FILES = 100_000
MAX_DEPTH = 64
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the check cannot block the open


@dataclass(frozen=True)
class Limits:
    """The caps of one fetch; ``what`` says where ``max_bytes`` comes from, for the messages."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_seconds: float = DEFAULT_MAX_SECONDS
    read_timeout: float = READ_TIMEOUT
    what: str = "the default"

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_seconds", "read_timeout"):
            if not getattr(self, name) > 0:
                raise CvatArgoError(f"fetch limits: {name} must be positive, got {getattr(self, name)!r}")

    def describe(self) -> str:
        return f"the size cap of {self.max_bytes} bytes ({_human(self.max_bytes)}; {self.what})"


def _human(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.4g} {unit}"
    return f"{count} B"


class _Meter:
    """Bytes and time of one fetch (of several files, for a source made of several) against its limits."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.received = 0
        self.written = 0
        self.files = 0

    def declared(self, shown: str, size: int, what: str = "is") -> None:
        """A size known before reading (Content-Length, a listed object, a local file)."""
        if max(self.received, self.written) + size > self.limits.max_bytes:
            raise DatasetError(f"{shown}: refused: it {what} {size} bytes, more than {self.limits.describe()}; "
                               "nothing was kept")

    def receive(self, shown: str, count: int) -> None:
        self.received += count
        if self.received > self.limits.max_bytes:
            raise DatasetError(f"{shown}: refused after receiving more than {self.limits.describe()}; "
                               "nothing was kept")
        self.tick(shown)

    def write(self, shown: str, count: int, how: str = "") -> None:
        self.written += count
        if self.written > self.limits.max_bytes:
            raise DatasetError(f"{shown}: refused after writing more than {self.limits.describe()}{how}; "
                               "nothing was kept")

    def tick(self, shown: str) -> None:
        if time.monotonic() > self.deadline:
            raise DatasetError(f"{shown}: refused: it took longer than the time cap of "
                               f"{self.limits.max_seconds:g} s; nothing was kept")

    def entry(self, shown: str, name: str) -> None:
        self.files += 1
        if self.files > MAX_FILES:
            raise DatasetError(f"{shown}: refused at {name!r}: more than {MAX_FILES} files and folders; "
                               "nothing was copied")
        self.tick(shown)


def fetch(uri: str, dest: Path, *, env: Mapping[str, str] | None = None, progress: bool = True,
          expected_sha256: str | None = None, limits: Limits | None = None,
          local_roots: Sequence[Path] | None = None) -> Path:
    """Bring a source to local disk and return its local path.

    - a local path (or ``file://``) is returned as it is, without a copy; with ``local_roots`` it must lie
      under one of them, and a folder is copied into ``dest/<name>`` without following links (see the
      module's docstring);
    - ``s3://bucket/key``: an object becomes ``dest/<basename>``, a folder ``dest/<basename>/...``, and a
      TensorFlow checkpoint prefix (``key.index``, ``key.data-*``) ``dest/<basename>.*`` (the prefix path
      is returned);
    - ``http(s)://`` is streamed to ``dest/<basename of the URL path>``; ``gs://bucket/key`` is read as a
      public object over HTTPS.

    ``limits`` (default: :class:`Limits`) caps the bytes and the time; exceeding them is a DatasetError
    naming the URI and the cap, with nothing kept. With ``expected_sha256`` the file's digest is checked
    (while streaming for URLs) and a mismatch is a DatasetError naming the URI and both digests; a bad
    download is removed.
    """
    return _fetch(uri, dest, _Meter(limits or Limits()), env=env, progress=progress,
                  expected_sha256=expected_sha256, local_roots=local_roots)


def fetch_files(uris: Sequence[str], dest: Path, *, limits: Limits | None = None,
                progress: bool = True) -> list[Path]:
    """Fetch several URLs that make one source (a checkpoint's ``.index`` and ``.data-*``) under one cap."""
    meter = _Meter(limits or Limits())
    return [_fetch(uri, dest, meter, env=None, progress=progress) for uri in uris]


def _fetch(uri: str, dest: Path, meter: _Meter, *, env: Mapping[str, str] | None, progress: bool,
           expected_sha256: str | None = None, local_roots: Sequence[Path] | None = None) -> Path:
    expected = _normalise_digest(expected_sha256, uri)
    dest = Path(dest)
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(uri, dest, meter, progress=progress, expected=expected)
    if scheme == "gs":
        parts = urlsplit(uri)
        return _fetch_http(f"{GCS_PUBLIC_ENDPOINT}/{parts.netloc}{parts.path}", dest, meter, progress=progress,
                           expected=expected, shown=uri)
    if scheme == "s3":
        return _fetch_s3(uri, dest, meter, env=env, progress=progress, expected=expected)
    if scheme == "file":
        path = Path(unquote(urlsplit(uri).path))
    elif len(scheme) > 1:  # one letter is a Windows drive
        raise CvatArgoError(f"{_redact(uri)}: unsupported scheme {scheme!r}; use s3://, gs://, http(s):// or a path")
    else:
        path = Path(uri).expanduser()
    if local_roots is None:
        return _fetch_local(path, uri, expected)
    return _fetch_confined(path, uri, dest, meter, expected, local_roots)


def _normalise_digest(digest: str | None, uri: str) -> str | None:
    if not digest:
        return None
    value = digest.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise CvatArgoError(f"expected sha256 for {_redact(uri)} is not 64 hex digits: {digest!r}")
    return value


# ---------------------------------------------------------------------------------------- local paths


def _fetch_local(path: Path, uri: str, expected: str | None) -> Path:
    if not path.exists():
        raise DatasetError(f"{uri} does not exist")
    if expected:
        if not path.is_file():
            raise CvatArgoError(f"{uri} is a folder; a sha256 can only be checked on a single file")
        actual = file_sha256(path)
        if actual != expected:  # the user's own file: reported, never removed
            raise DatasetError(f"{uri}: sha256 is {actual}, expected {expected}")
    return path


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _system_clash(resolved: str) -> str | None:
    """The system folder that ``resolved`` (a realpath) is, contains or lies in; None when it is clear."""
    if resolved == os.sep:
        return os.sep
    systems = dict.fromkeys([*SYSTEM_FOLDERS, *(os.path.realpath(folder) for folder in SYSTEM_FOLDERS)])
    for system in systems:
        if _within(resolved, system) or _within(system, resolved):
            return system
    return None


def local_roots(env: Mapping[str, str] | None = None, extra: Sequence[Path] = ()) -> tuple[Path, ...]:
    """The folders local sources may come from: ``CVAT_ARGO_MODEL_ROOTS`` and the caller's ``extra`` folders.

    Entries are resolved (``realpath``). An entry of the variable that is relative, ``/``, or is, holds or
    lies in a system folder is a CvatArgoError naming it; such an ``extra`` folder is dropped.
    """
    env = os.environ if env is None else env
    roots: list[Path] = []
    for entry in (env.get(MODEL_ROOTS_VAR) or "").split(os.pathsep):
        entry = entry.strip()
        if not entry:
            continue
        if not os.path.isabs(entry):
            raise CvatArgoError(f"{MODEL_ROOTS_VAR}: {entry!r} is not an absolute path; list the folders that hold "
                                f"base checkpoints, separated by {os.pathsep!r}")
        resolved = os.path.realpath(entry)
        clash = _system_clash(resolved)
        if clash:
            raise CvatArgoError(f"{MODEL_ROOTS_VAR}: {entry!r} is, holds or lies in the system folder {clash}, which "
                                "is never allowed; name the folder that holds the checkpoints itself")
        roots.append(Path(resolved))
    for folder in extra:
        resolved = os.path.realpath(folder)
        if _system_clash(resolved) is None:
            roots.append(Path(resolved))
    return tuple(dict.fromkeys(roots))


def _confine(path: Path, uri: str, roots: Sequence[Path]) -> Path:
    resolved = os.path.realpath(path)
    if _system_clash(resolved) is None and any(_within(resolved, str(root)) for root in roots):
        return Path(resolved)
    allowed = ", ".join(str(root) for root in roots) or "none"
    raise CvatArgoError(f"{uri}: a local base model must lie in an allowed folder (allowed: {allowed}); add the "
                        f"folder that holds it to {MODEL_ROOTS_VAR} (system folders are never allowed)")


def _fetch_confined(path: Path, uri: str, dest: Path, meter: _Meter, expected: str | None,
                    roots: Sequence[Path]) -> Path:
    resolved = _confine(path, uri, roots)
    try:
        info = os.stat(resolved, follow_symlinks=False)  # resolved: a link here was swapped in since
    except FileNotFoundError:
        raise DatasetError(f"{uri} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"{uri} cannot be read ({exc.strerror})") from None
    if stat.S_ISREG(info.st_mode):
        meter.declared(uri, info.st_size)
        return _fetch_local(resolved, uri, expected)
    if stat.S_ISDIR(info.st_mode):
        if expected:
            raise CvatArgoError(f"{uri} is a folder; a sha256 can only be checked on a single file")
        return _copy_tree(resolved, dest / resolved.name, uri, meter)
    raise DatasetError(f"{uri} is neither a regular file nor a folder (a link, device, FIFO or socket)")


def _copy_tree(source: Path, target: Path, uri: str, meter: _Meter) -> Path:
    """Copy a folder's regular files and folders; a link or special file anywhere in it refuses the copy."""
    if target.exists():
        raise CvatArgoError(f"cannot copy {uri} into {target}: it exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    staging.mkdir()
    try:
        try:
            fd = os.open(source, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW)
        except OSError as exc:
            raise DatasetError(f"{uri} cannot be read ({exc.strerror})") from None
        try:
            _copy_dir(fd, staging, "", uri, meter)
        finally:
            os.close(fd)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _refused(uri: str, name: str, why: str) -> DatasetError:
    return DatasetError(f"{uri}: refused {name!r}: {why}; nothing was copied")


def _copy_dir(dir_fd: int, into: Path, relative: str, uri: str, meter: _Meter) -> None:
    if relative.count("/") >= MAX_DEPTH:
        raise _refused(uri, relative, f"folders nested more than {MAX_DEPTH} deep")
    for name in sorted(os.listdir(dir_fd)):
        inner = f"{relative}/{name}" if relative else name
        meter.entry(uri, inner)
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise _refused(uri, inner, "a symbolic link (links in a local base-model folder are never followed)")
            if stat.S_ISDIR(info.st_mode):
                fd = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    (into / name).mkdir()
                    _copy_dir(fd, into / name, inner, uri, meter)
                finally:
                    os.close(fd)
            elif stat.S_ISREG(info.st_mode):
                _copy_file_at(dir_fd, name, into / name, inner, uri, meter)
            else:
                raise _refused(uri, inner, "not a regular file or folder (a device, FIFO or socket)")
        except OSError as exc:  # unreadable, or swapped for a link since the check (ELOOP)
            raise _refused(uri, inner, f"cannot be read ({exc.strerror})") from None


def _copy_file_at(dir_fd: int, name: str, target: Path, inner: str, uri: str, meter: _Meter) -> None:
    fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise _refused(uri, inner, "changed into something other than a regular file while being copied")
        with target.open("wb") as out:
            while chunk := source.read(_CHUNK):
                meter.write(uri, len(chunk))
                meter.tick(uri)
                out.write(chunk)


# ----------------------------------------------------------------------------------------------- s3


def _fetch_s3(uri: str, dest: Path, meter: _Meter, *, env: Mapping[str, str] | None, progress: bool,
              expected: str | None) -> Path:
    parts = urlsplit(uri)
    store = store_from_url(f"s3://{parts.netloc}", env)
    assert isinstance(store, S3Store)
    key = clean_key(unquote(parts.path))
    target = dest / (key.rsplit("/", 1)[-1] if key else parts.netloc)
    size = _s3_object_size(store, key) if key else None
    if size is not None:
        meter.declared(uri, size)
        with progress_bar(size, key, progress) as bar:
            store._download(key, target, bar)
        meter.write(uri, target.stat().st_size)
        _verify_downloaded(target, uri, expected)
        return target
    if expected:
        raise CvatArgoError(f"{uri} is not a single object; a sha256 can only be checked on a single file")
    entries = store._walk(key)
    if entries:
        meter.declared(uri, sum(entry.size for entry in entries), "holds")
        store.get_dir(key, target, progress=progress)
        return target
    siblings = store._walk_prefix(key) if key else []
    if siblings:
        meter.declared(uri, sum(entry.size for entry in siblings), "holds")
        folder = key.rsplit("/", 1)[0] if "/" in key else ""
        for entry in siblings:
            store._download(f"{folder}/{entry.name}" if folder else entry.name, dest / entry.name, _NullBar())
        return target
    raise DatasetError(f"{uri} does not exist")


def _s3_object_size(store: S3Store, key: str) -> int | None:
    """The size of the object ``key``; None when there is no such object (it may be a folder or a prefix)."""
    try:
        with s3_errors(store.uri(key)):
            return store.client.stat_object(store.bucket, store._name(key)).size or 0
    except DatasetError:
        return None


def _verify_downloaded(path: Path, uri: str, expected: str | None) -> None:
    if expected:
        actual = file_sha256(path)
        if actual != expected:
            path.unlink()
            raise DatasetError(f"{_redact(uri)}: sha256 is {actual}, expected {expected}; the download was removed")


# --------------------------------------------------------------------------------------------- http


class _Decoder:
    """Undoes a Content-Encoding a server applied although identity was asked for, in bounded pieces.

    ``zlib``'s ``max_length`` keeps each piece at most 1 MiB, so a gzip bomb is met one piece at a time
    and the cap stops it; a gzip answer of several members (legal, and a cheap bomb) is followed member
    by member.
    """

    def __init__(self, encoding: str, shown: str):
        self.shown = shown
        name = encoding.strip().lower()
        if name in ("", "identity"):
            self.wbits: int | None = None
        elif name in ("gzip", "x-gzip"):
            self.wbits = 16 + zlib.MAX_WBITS
        elif name == "deflate":
            self.wbits = zlib.MAX_WBITS
        else:
            raise CvatArgoError(f"{shown}: the server sent Content-Encoding {encoding!r} although identity was "
                                "asked for; serve the file as it is")
        self._zlib = zlib.decompressobj(self.wbits) if self.wbits else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._zlib is None:
            if data:
                yield data
            return
        try:
            while data:
                if self._zlib.eof:
                    if not data.strip(b"\0"):
                        return  # zero padding after the last member, as gzip(1) tolerates
                    if self.wbits == zlib.MAX_WBITS:
                        raise zlib.error("data after the end of the deflate stream")
                    self._zlib = zlib.decompressobj(self.wbits)  # the next gzip member
                piece = self._zlib.decompress(data, _CHUNK)
                if piece:
                    yield piece
                data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
        except zlib.error as exc:
            raise DatasetError(f"{self.shown}: the server's compressed answer is corrupt ({exc})") from None

    def finish(self) -> None:
        if self._zlib is not None and not self._zlib.eof:
            raise TransientError(f"{self.shown}: the compressed answer stopped before its end; retry later")


def _fetch_http(url: str, dest: Path, meter: _Meter, *, progress: bool, expected: str | None,
                shown: str | None = None) -> Path:
    shown = shown or _redact(url)
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or "download"
    target = dest / _relative_name(name, shown).name
    digest = hashlib.sha256()
    limits = meter.limits
    timeout = (CONNECT_TIMEOUT, min(limits.read_timeout, limits.max_seconds))
    try:
        # identity: the digest and the length are those of the file, not of a gzip transfer encoding
        with requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as r:
            _check_http_status(r.status_code, shown)
            length = _content_length(r.headers.get("Content-Length"))
            if length is not None:
                meter.declared(shown, length, "declares")
            decoder = _Decoder(r.headers.get("Content-Encoding", ""), shown)
            how = "" if decoder.wbits is None else (f" (decoded from the {r.headers['Content-Encoding']} the server "
                                                    "sent although identity was asked for)")
            start = meter.received
            with atomic_path(target) as partial, partial.open("wb") as out, \
                    progress_bar(length, name, progress) as bar:
                for raw in _raw_pieces(r.raw):
                    meter.receive(shown, len(raw))
                    for piece in decoder.feed(raw):
                        meter.write(shown, len(piece), how)
                        out.write(piece)
                        digest.update(piece)
                    bar.update(len(raw))
                received = meter.received - start
                if length is not None and received != length:
                    raise TransientError(f"{shown}: the download stopped after {received} of {length} bytes")
                decoder.finish()
                _check_digest(digest.hexdigest(), expected, shown)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError) as exc:
        raise TransientError(f"{shown}: the server did not answer, or the connection dropped ({type(exc).__name__}); "
                             "retry later") from exc
    return target


def _raw_pieces(raw: urllib3.response.HTTPResponse) -> Iterator[bytes]:
    """The body as it arrives, undecoded (counted before anything is decoded), one socket read at a time.

    ``read1`` returns what one read brought, so the time cap is checked after every read even when a server
    trickles a byte at a time; ``read(amt)`` would wait for ``amt`` bytes. urllib3 before 2.3 has no
    ``read1``: small reads keep the wait short there.
    """
    read1 = getattr(raw, "read1", None)
    while True:
        piece = read1(_CHUNK, decode_content=False) if read1 else raw.read(64 << 10, decode_content=False)
        if not piece:
            return
        yield piece


def _content_length(value: str | None) -> int | None:
    with contextlib.suppress(TypeError, ValueError):
        length = int(value)  # type: ignore[arg-type]
        return length if length >= 0 else None
    return None


def _check_digest(actual: str, expected: str | None, shown: str) -> None:
    if expected and actual != expected:
        raise DatasetError(f"{shown}: sha256 is {actual}, expected {expected}; the download was removed")


def _check_http_status(status: int, shown: str) -> None:
    if status < 400:
        return
    if status in (404, 410):
        raise DatasetError(f"{shown} does not exist (HTTP {status})")
    if status in (401, 403):
        raise CvatArgoError(f"access to {shown} was refused (HTTP {status}): the URL needs credentials, or a "
                            "fresh signed link")
    if status >= 500 or status in (408, 429):
        raise TransientError(f"{shown}: the server answered HTTP {status}; retry later")
    raise CvatArgoError(f"{shown}: the server answered HTTP {status}")

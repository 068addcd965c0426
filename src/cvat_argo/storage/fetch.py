"""Fetching a source by URI to local disk: ``https://``, ``gs://`` (public objects), ``s3://`` and paths.

A source is what a user names in a request (a dataset export, a base checkpoint, a model to serve), not
an artifact of a run: it lives wherever the user keeps it, is read once, and may be pinned by a sha256.
:func:`fetch` brings one to local disk and checks that digest. ``s3://`` is read through
:mod:`cvat_argo.storage.store` (its client, its error mapping, its atomic ``.partial`` files), so a
bucket reads the same whether it holds sources or artifacts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

from ..errors import CvatArgoError, DatasetError, TransientError
from .digest import file_sha256
from .keys import clean_key
from .store import (
    _CHUNK,
    S3Store,
    _NullBar,
    _redact,
    _relative_name,
    atomic_path,
    progress_bar,
    store_from_url,
)

# Public gs:// objects are read over HTTPS; tests point this at a loopback server.
GCS_PUBLIC_ENDPOINT = "https://storage.googleapis.com"
_REQUESTS_TIMEOUT = (10, 300)


def fetch(uri: str, dest: Path, *, env: Mapping[str, str] | None = None, progress: bool = True,
          expected_sha256: str | None = None) -> Path:
    """Bring a source to local disk and return its local path.

    - a local path (or ``file://``) is returned as it is, without a copy;
    - ``s3://bucket/key``: an object becomes ``dest/<basename>``, a folder ``dest/<basename>/...``, and a
      TensorFlow checkpoint prefix (``key.index``, ``key.data-*``) ``dest/<basename>.*`` (the prefix path
      is returned);
    - ``http(s)://`` is streamed to ``dest/<basename of the URL path>``; ``gs://bucket/key`` is read as a
      public object over HTTPS.

    With ``expected_sha256`` the file's digest is checked (while streaming for URLs) and a mismatch is a
    DatasetError naming the URI and both digests; a bad download is removed.
    """
    expected = _normalise_digest(expected_sha256, uri)
    dest = Path(dest)
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(uri, dest, progress=progress, expected=expected)
    if scheme == "gs":
        parts = urlsplit(uri)
        return _fetch_http(f"{GCS_PUBLIC_ENDPOINT}/{parts.netloc}{parts.path}", dest, progress=progress,
                           expected=expected, shown=uri)
    if scheme == "s3":
        return _fetch_s3(uri, dest, env=env, progress=progress, expected=expected)
    if scheme == "file":
        return _fetch_local(Path(unquote(urlsplit(uri).path)), uri, expected)
    if len(scheme) > 1:  # one letter is a Windows drive
        raise CvatArgoError(f"{_redact(uri)}: unsupported scheme {scheme!r}; use s3://, gs://, http(s):// or a path")
    return _fetch_local(Path(uri).expanduser(), uri, expected)


def _normalise_digest(digest: str | None, uri: str) -> str | None:
    if not digest:
        return None
    value = digest.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise CvatArgoError(f"expected sha256 for {_redact(uri)} is not 64 hex digits: {digest!r}")
    return value


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


def _fetch_s3(uri: str, dest: Path, *, env: Mapping[str, str] | None, progress: bool, expected: str | None) -> Path:
    parts = urlsplit(uri)
    store = store_from_url(f"s3://{parts.netloc}", env)
    assert isinstance(store, S3Store)
    key = clean_key(unquote(parts.path))
    target = dest / (key.rsplit("/", 1)[-1] if key else parts.netloc)
    if key and store._is_object(key):
        with progress_bar(None, key, progress) as bar:
            store._download(key, target, bar)
        _verify_downloaded(target, uri, expected)
        return target
    if expected:
        raise CvatArgoError(f"{uri} is not a single object; a sha256 can only be checked on a single file")
    if store._walk(key):
        store.get_dir(key, target, progress=progress)
        return target
    siblings = store._walk_prefix(key) if key else []
    if siblings:
        folder = key.rsplit("/", 1)[0] if "/" in key else ""
        for entry in siblings:
            store._download(f"{folder}/{entry.name}" if folder else entry.name, dest / entry.name, _NullBar())
        return target
    raise DatasetError(f"{uri} does not exist")


def _verify_downloaded(path: Path, uri: str, expected: str | None) -> None:
    if expected:
        actual = file_sha256(path)
        if actual != expected:
            path.unlink()
            raise DatasetError(f"{_redact(uri)}: sha256 is {actual}, expected {expected}; the download was removed")


def _fetch_http(url: str, dest: Path, *, progress: bool, expected: str | None, shown: str | None = None) -> Path:
    shown = shown or _redact(url)
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or "download"
    target = dest / _relative_name(name, shown).name
    digest = hashlib.sha256()
    try:
        # identity: the digest and the length are those of the file, not of a gzip transfer encoding
        with requests.get(url, stream=True, timeout=_REQUESTS_TIMEOUT, headers={"Accept-Encoding": "identity"}) as r:
            _check_http_status(r.status_code, shown)
            length = int(r.headers.get("Content-Length") or 0) or None
            with atomic_path(target) as partial, partial.open("wb") as out, \
                    progress_bar(length, name, progress) as bar:
                written = 0
                for chunk in r.iter_content(chunk_size=_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    written += len(chunk)
                if length is not None and written != length:
                    raise TransientError(f"{shown}: the download stopped after {written} of {length} bytes")
                _check_digest(digest.hexdigest(), expected, shown)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise TransientError(f"{shown}: the server did not answer ({type(exc).__name__}); retry later") from exc
    return target


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

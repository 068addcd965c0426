"""The artifact store: one API over a local folder and a MinIO/S3 bucket.

Both engines and every step move artifacts through :class:`Store`, so a run behaves the same whether
its artifacts live in ``/tmp/runs`` or in ``s3://bucket/prefix``. Keys follow
``<prefix>/<run-id>/<stage>/<artifact>`` (:func:`cvat_argo.engines.artifacts.artifact_key`) and
artifacts are folders of objects, not tarballs, so a resumed training step can fetch one checkpoint
without downloading the rest. Sources a user names (a dataset, a base checkpoint) are not artifacts:
:mod:`cvat_argo.storage.fetch` brings those to local disk, reading s3:// through this module.

Rules every backend keeps:

- A file is written atomically: it is downloaded to ``<file>.partial`` and renamed, so a file that
  looks complete is complete.
- ``put_*`` never overwrites an existing object unless ``overwrite=True``: outputs of a run are never
  overwritten by another run.
- Failures become :class:`~cvat_argo.errors.CvatArgoError` subclasses a user can act on: a missing key
  is a :class:`~cvat_argo.errors.DatasetError` naming it, refused credentials name the variables to
  check (never their values), and network trouble is a :class:`~cvat_argo.errors.TransientError`
  (exit code 75), which Argo retries.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

from ..errors import CvatArgoError, DatasetError, TransientError
from ..progress import progress_bar as shared_progress_bar
from .keys import clean_key

STORE_VAR = "CVAT_ARGO_STORE"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the service-specific one wins, as in the AWS SDKs
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
ACCESS_KEY_VAR = "AWS_ACCESS_KEY_ID"
SECRET_KEY_VAR = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN_VAR = "AWS_SESSION_TOKEN"
CREDENTIALS_HINT = (
    f"check {ACCESS_KEY_VAR} and {SECRET_KEY_VAR} (and {SESSION_TOKEN_VAR} for temporary credentials), "
    f"the endpoint in AWS_ENDPOINT_URL and the region in AWS_REGION"
)
PARTIAL_SUFFIX = ".partial"

# Within-step retries smooth over blips during a long transfer; anything longer is left to Argo's retry
# (TransientError, exit 75), which restarts the step with back-off.
_HTTP_RETRIES = urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504))
_HTTP_TIMEOUT = urllib3.Timeout(connect=10, read=300)
_CHUNK = 1 << 20

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "ResourceNotFound", "NoSuchObject"}
_CREDENTIAL_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                     "InvalidToken", "InvalidSecurity", "AllAccessDisabled", "AccountProblem",
                     "AuthorizationHeaderMalformed", "MissingSecurityHeader", "TokenRefreshRequired"}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted",
                    "XMinioServerNotInitialized", "XMinioStorageFull", "503 SlowDown"}


# --------------------------------------------------------------------------------------------- keys


def _relative_name(name: str, where: str) -> Path:
    """A listed object name as a relative local path; a hostile name cannot write outside the target."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts or "\\" in name or "\x00" in name:
        raise DatasetError(f"{where}: object name {name!r} cannot be a local file name (empty, '..' or '\\')")
    return Path(*parts)


# ------------------------------------------------------------------------------------------ progress


class _Bar(Protocol):
    def update(self, n: int) -> Any: ...


class _NullBar:
    def update(self, n: int) -> None:
        return None


def progress_bar(total: int | None, desc: str, enabled: bool = True):
    """A byte-counting bar on stderr (a plain line every few seconds in pod logs); see cvat_argo.progress."""
    return shared_progress_bar(desc, total, unit="B", enabled=enabled)


class _MinioProgress:
    """Adapts a bar to minio's progress protocol (``set_meta`` then ``update`` per chunk)."""

    def __init__(self, bar: _Bar):
        self.bar = bar

    def set_meta(self, object_name: str, total_length: int) -> None:
        return None

    def update(self, length: int) -> None:
        self.bar.update(length)


# ---------------------------------------------------------------------------------------- local I/O


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield ``<target>.partial`` to write; rename it to ``target`` on success, remove it on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        yield partial
        os.replace(partial, target)
    finally:
        with suppress(FileNotFoundError):
            partial.unlink()


def _copy_file(source: Path, target: Path, bar: _Bar) -> None:
    with atomic_path(target) as partial, source.open("rb") as src, partial.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            bar.update(len(chunk))


def _local_files(root: Path) -> list[tuple[str, Path]]:
    """Files under ``root`` as (relative key, path), sorted, following the folder as it is on disk."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = Path(folder, name)
            if path.is_file():
                files.append((path.relative_to(root).as_posix(), path))
    return sorted(files)


# ------------------------------------------------------------------------------------------- stores


@dataclass(frozen=True)
class _Entry:
    name: str  # relative to the listed key
    size: int


class Store(ABC):
    """An artifact store. Subclasses provide five primitives; the rules live here, once for both."""

    url: str

    # -- primitives ------------------------------------------------------------------------------

    @abstractmethod
    def _upload(self, local: Path, key: str, bar: _Bar) -> None:
        """Store one file at ``key`` (already cleaned), replacing it."""

    @abstractmethod
    def _download(self, key: str, local: Path, bar: _Bar) -> None:
        """Write object ``key`` to ``local`` atomically; a missing object raises DatasetError."""

    @abstractmethod
    def _is_object(self, key: str) -> bool:
        """Whether ``key`` itself is an object (not a folder)."""

    @abstractmethod
    def _walk(self, key: str) -> list[_Entry]:
        """Objects under ``key/`` (everything when ``key`` is empty), names relative to it."""

    @abstractmethod
    def _remove(self, keys: list[str]) -> None:
        """Remove these objects; missing ones are fine."""

    # -- the API ----------------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        """How a key is shown to users: ``s3://bucket/prefix/key`` or a local path."""
        key = clean_key(key)
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def exists(self, key: str) -> bool:
        """An object at ``key``, or a folder with at least one object under ``key/``."""
        key = clean_key(key)
        return (bool(key) and self._is_object(key)) or bool(self._walk(key))

    def list(self, key: str) -> list[str]:
        """Names of the objects under ``key/``, relative to it, sorted."""
        return sorted(entry.name for entry in self._walk(clean_key(key)))

    def put_file(self, local: Path, key: str, *, overwrite: bool = False) -> None:
        local, key = Path(local), self._writable_key(key, overwrite)
        if not local.is_file():
            raise DatasetError(f"cannot store {local}: no such file")
        self._upload(local, key, _NullBar())

    def put_dir(self, local: Path, key: str, *, progress: bool = False, overwrite: bool = False) -> int:
        """Upload the tree under ``local`` to ``key/``; returns the number of files.

        With ``overwrite`` the files replace those of the same name; objects the folder no longer has
        are left alone. Without it, a failure part-way removes what this call uploaded, so a retry of
        the same step starts from a clean key instead of refusing to overwrite its own partial output.
        """
        local, key = Path(local), self._writable_key(key, overwrite)
        if not local.is_dir():
            raise DatasetError(f"cannot store {local}: no such folder")
        files = _local_files(local)
        for name, _path in files:
            _check_not_partial(f"{key}/{name}")
        uploaded: list[str] = []
        total = sum(path.stat().st_size for _name, path in files)
        try:
            with progress_bar(total, f"upload {key}", progress) as bar:
                for name, path in files:
                    self._upload(path, f"{key}/{name}", bar)
                    uploaded.append(f"{key}/{name}")
        except BaseException:
            if not overwrite:
                with suppress(Exception):
                    self._remove(uploaded)
            raise
        return len(files)

    def get_file(self, key: str, local: Path) -> Path:
        """Download object ``key`` to the file ``local`` (atomically); returns ``local``."""
        key, local = _required_key(key), Path(local)
        self._download(key, local, _NullBar())
        return local

    def get_dir(self, key: str, local: Path, *, progress: bool = False) -> int:
        """Download everything under ``key/`` into the folder ``local``; returns the number of files."""
        key, local = clean_key(key), Path(local)
        entries = self._walk(key)
        if not entries:
            if key and self._is_object(key):
                raise DatasetError(f"{self.uri(key)} is a single object, not a folder")
            raise DatasetError(f"{self.uri(key)} does not exist (no objects under it)")
        targets = [(entry, local / _relative_name(entry.name, self.uri(key))) for entry in entries]
        with progress_bar(sum(e.size for e in entries), f"download {key or self.url}", progress) as bar:
            for entry, target in targets:
                self._download(f"{key}/{entry.name}" if key else entry.name, target, bar)
        return len(targets)

    def delete(self, key: str) -> None:
        """Remove the object ``key`` and everything under ``key/``: only for our own partial output."""
        key = _required_key(key)
        self._remove([key, *(f"{key}/{entry.name}" for entry in self._walk(key))])

    def _writable_key(self, key: str, overwrite: bool) -> str:
        key = _check_not_partial(_required_key(key))
        if not overwrite and self.exists(key):
            raise CvatArgoError(
                f"{self.uri(key)} already exists; outputs of a run are never overwritten by another run "
                "(use a new run id, or pass overwrite=True to replace it)"
            )
        return key


def _required_key(key: str) -> str:
    cleaned = clean_key(key)
    if not cleaned:
        raise CvatArgoError(f"store key {key!r} is empty; name an object or folder")
    return cleaned


def _check_not_partial(key: str) -> str:
    if key.endswith(PARTIAL_SUFFIX):
        raise CvatArgoError(f"store key {key!r}: names ending in {PARTIAL_SUFFIX} are reserved for unfinished "
                            "downloads; remove or rename that file")
    return key


class LocalStore(Store):
    """Artifacts in a local folder: what the embedded engine uses when no bucket is configured."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/")) if key else self.root

    def _upload(self, local: Path, key: str, bar: _Bar) -> None:
        target = self._path(key)
        if target.is_dir():
            shutil.rmtree(target)
        _copy_file(local, target, bar)

    def _download(self, key: str, local: Path, bar: _Bar) -> None:
        source = self._path(key)
        if not source.is_file():
            raise DatasetError(f"{self.uri(key)} does not exist")
        _copy_file(source, local, bar)

    def _is_object(self, key: str) -> bool:
        return self._path(key).is_file()

    def _walk(self, key: str) -> list[_Entry]:
        folder = self._path(key)
        if not folder.is_dir():
            return []
        # An unfinished copy (``*.partial``) is not an object: it never counts as stored.
        return [_Entry(name, path.stat().st_size) for name, path in _local_files(folder)
                if not name.endswith(PARTIAL_SUFFIX)]

    def _remove(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                with suppress(FileNotFoundError):
                    path.unlink()
        for key in keys:  # folders left empty by the removal go too, up to the root
            self._prune(self._path(key).parent)

    def _prune(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


class S3Store(Store):
    """Artifacts in a MinIO/S3 bucket under ``prefix``, through the ``minio`` client (tests use moto)."""

    def __init__(self, client: Minio, bucket: str, prefix: str = ""):
        self.client = client
        self.bucket = bucket
        self.prefix = clean_key(prefix)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix and key else (key or self.prefix)

    def _upload(self, local: Path, key: str, bar: _Bar) -> None:
        with s3_errors(self.uri(key)):
            self.client.fput_object(self.bucket, self._name(key), str(local), progress=_MinioProgress(bar))

    def _download(self, key: str, local: Path, bar: _Bar) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + PARTIAL_SUFFIX)
        try:
            with s3_errors(self.uri(key)):
                self.client.fget_object(self.bucket, self._name(key), str(local), tmp_file_path=str(partial),
                                        progress=_MinioProgress(bar))
        finally:
            with suppress(FileNotFoundError):
                partial.unlink()

    def _is_object(self, key: str) -> bool:
        try:
            with s3_errors(self.uri(key)):
                self.client.stat_object(self.bucket, self._name(key))
        except DatasetError:
            return False
        return True

    def _walk(self, key: str) -> list[_Entry]:
        name = self._name(key)
        start = f"{name}/" if name else ""
        with s3_errors(self.uri(key)):
            objects = list(self.client.list_objects(self.bucket, prefix=start, recursive=True))
        # Names ending in "/" are folder markers some consoles create, not data.
        return [_Entry(o.object_name[len(start):], o.size or 0) for o in objects
                if o.object_name and not o.object_name.endswith("/")]

    def _walk_prefix(self, key: str) -> list[_Entry]:
        """Objects whose name is ``key.<suffix>`` in the same folder: a TensorFlow checkpoint prefix."""
        name = self._name(key)
        with s3_errors(self.uri(key)):
            objects = list(self.client.list_objects(self.bucket, prefix=f"{name}.", recursive=False))
        return [_Entry(o.object_name.rsplit("/", 1)[-1], o.size or 0) for o in objects
                if o.object_name and not o.is_dir and "/" not in o.object_name[len(name):]]

    def _remove(self, keys: list[str]) -> None:
        if not keys:
            return
        with s3_errors(self.uri(keys[0])):
            errors = list(self.client.remove_objects(self.bucket, [DeleteObject(self._name(k)) for k in keys]))
        failed = [e for e in errors if e.code not in _NOT_FOUND_CODES]
        if failed:
            raise CvatArgoError(f"could not delete {len(failed)} objects in s3://{self.bucket}, e.g. "
                                f"{failed[0].name}: {failed[0].code}")


# ------------------------------------------------------------------------------------------- errors


@contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """Turn what minio and urllib3 raise into errors a user (or Argo's retry) can act on."""
    try:
        yield
    except S3Error as exc:
        raise _s3_error(uri, exc) from exc
    except ServerError as exc:
        raise _status_error(uri, exc.status_code, "the server") from exc
    except InvalidResponseError as exc:
        raise _status_error(uri, int(getattr(exc, "_code", 0) or 0), "a non-S3 response") from exc
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        raise TransientError(f"{uri}: the store did not answer ({_reason(exc)}); retry later") from exc


def _s3_error(uri: str, exc: S3Error) -> CvatArgoError:
    code = exc.code or ""
    if code == "NoSuchBucket":
        bucket = exc.bucket_name or urlsplit(uri).netloc
        return DatasetError(f"{uri} does not exist: there is no bucket s3://{bucket}")
    if code in _NOT_FOUND_CODES:
        return DatasetError(f"{uri} does not exist")
    if code in _CREDENTIAL_CODES:
        return CvatArgoError(f"access to {uri} was refused ({code}): {CREDENTIALS_HINT}")
    status = exc.response.status if exc.response is not None else 0
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        return TransientError(f"{uri}: the store is busy or failing ({code or status}); retry later")
    return CvatArgoError(f"{uri}: the store refused the request ({code}: {exc.message})")


def _status_error(uri: str, status: int, what: str) -> CvatArgoError:
    if status >= 500 or status in (408, 429):
        return TransientError(f"{uri}: {what} answered HTTP {status}; retry later")
    if status in (401, 403):
        return CvatArgoError(f"access to {uri} was refused (HTTP {status}): {CREDENTIALS_HINT}")
    if status == 404:
        return DatasetError(f"{uri} does not exist")
    return CvatArgoError(f"{uri}: {what} answered HTTP {status}; is AWS_ENDPOINT_URL an S3 endpoint?")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return type(reason).__name__


# ---------------------------------------------------------------------------------- configuration


def store_from_url(url: str, env: Mapping[str, str] | None = None) -> Store:
    """``s3://bucket[/prefix]`` -> :class:`S3Store` configured from ``env``; anything else -> :class:`LocalStore`."""
    env = os.environ if env is None else env
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStore(Path(unquote(parts.path)))
    if parts.scheme != "s3":
        if len(parts.scheme) > 1:  # one letter is a Windows drive
            raise CvatArgoError(f"store {_redact(url)}: unsupported scheme {parts.scheme!r}; use s3://bucket[/prefix] "
                                "or a local folder")
        return LocalStore(Path(url))
    bucket = parts.netloc
    try:
        check_bucket_name(bucket)
    except ValueError as exc:
        raise CvatArgoError(f"store {url}: {bucket!r} is not a valid bucket name ({exc})") from exc
    return S3Store(minio_client(env), bucket, unquote(parts.path))


def store_from_env(env: Mapping[str, str] | None = None) -> Store | None:
    """The store named by ``CVAT_ARGO_STORE``, or None when it is unset or empty."""
    env = os.environ if env is None else env
    url = (env.get(STORE_VAR) or "").strip()
    return store_from_url(url, env) if url else None


def minio_client(env: Mapping[str, str] | None = None) -> Minio:
    """A minio client for the endpoint, region and credentials in ``env`` (AWS SDK variable names)."""
    env = os.environ if env is None else env
    endpoint, secure = _endpoint(env)
    access_key, secret_key = env.get(ACCESS_KEY_VAR) or None, env.get(SECRET_KEY_VAR) or None
    if bool(access_key) != bool(secret_key):
        missing = SECRET_KEY_VAR if access_key else ACCESS_KEY_VAR
        raise CvatArgoError(f"S3 credentials are incomplete: {missing} is not set ({CREDENTIALS_HINT})")
    region = next((env[name] for name in REGION_VARS if env.get(name)), None)
    http = urllib3.PoolManager(timeout=_HTTP_TIMEOUT, retries=_HTTP_RETRIES, maxsize=10, cert_reqs="CERT_REQUIRED",
                               ca_certs=env.get("AWS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or certifi.where())
    return Minio(endpoint, access_key=access_key, secret_key=secret_key,
                 session_token=env.get(SESSION_TOKEN_VAR) or None, secure=secure, region=region, http_client=http)


def _endpoint(env: Mapping[str, str]) -> tuple[str, bool]:
    raw = next((env[name].strip() for name in ENDPOINT_VARS if env.get(name, "").strip()), "")
    if not raw:
        return "s3.amazonaws.com", True
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CvatArgoError(f"AWS_ENDPOINT_URL must look like http://host:port or https://host, got {_redact(raw)!r}")
    if parts.username or parts.password or parts.path.strip("/") or parts.query:
        raise CvatArgoError(f"AWS_ENDPOINT_URL {_redact(raw)!r}: give only scheme, host and port; credentials go in "
                            f"{ACCESS_KEY_VAR} and {SECRET_KEY_VAR}")
    return parts.netloc, parts.scheme == "https"


def _redact(url: str) -> str:
    """A URL without user info, query or fragment: presigned signatures and passwords stay out of messages."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

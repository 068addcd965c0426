"""The model mirror of air-gapped clusters: public checkpoint URLs mapped onto a bucket, and how to fill it.

``CVAT_ARGO_MODEL_MIRROR`` (the optional ``model-mirror`` key of the ``cvat-argo-store`` ConfigMap, or
the environment of a local run) names ``s3://bucket/prefix/`` (or an ``http(s)://`` server) that holds
copies of the public base checkpoints under their host and path::

    https://storage.googleapis.com/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz
    -> s3://bucket/mirror/storage.googleapis.com/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz

``gs://bucket/key`` is its public https address, ``storage.googleapis.com/bucket/key``, so both spellings
share one copy; a bare checkpoint prefix (``.../ckpt-180648``) is its ``.index`` and ``.data-*`` objects
beside that key. ``s3://`` sources and local paths are read where they are. pull-base-model reads the
copy (:mod:`cvat_argo.steps.pull`); :func:`mirror_models` (``python -m cvat_argo mirror-models --to
s3://bucket/mirror/``, on a machine with internet) downloads the catalog's checkpoints and uploads them.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from minio.helpers import check_bucket_name

from ..errors import CvatArgoError, DatasetError
from .fetch import Limits, fetch, fetch_files
from .store import S3Store, _redact, store_from_url

MODEL_MIRROR_VAR = "CVAT_ARGO_MODEL_MIRROR"
GCS_HOST = "storage.googleapis.com"  # gs://bucket/key is https://storage.googleapis.com/bucket/key
PREFIX_FILES = (".index", ".data-00000-of-00001")  # what pull-base-model fetches of a bare prefix over https
_CKPT_PREFIX = re.compile(r"ckpt-\d+$")


def parse_mirror(raw: str, setting: str = MODEL_MIRROR_VAR) -> str | None:
    """A mirror location checked: ``s3://bucket[/prefix]`` or ``http(s)://host[/prefix]``, returned ending in
    ``/``; None when empty. A bad value is one CvatArgoError naming ``setting`` (credentials never shown)."""
    raw = (raw or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    shown = _redact(raw) if parts.scheme else raw
    usage = "give s3://bucket/prefix/ (or http(s)://host/prefix/) holding the checkpoints under <host>/<path>"
    if parts.scheme not in ("s3", "http", "https") or not parts.netloc:
        raise CvatArgoError(f"{setting}={shown!r} is not a mirror location: {usage}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise CvatArgoError(f"{setting}={shown!r}: give only the location, no user, password, query or "
                            "fragment; S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if parts.scheme == "s3":
        try:
            check_bucket_name(parts.netloc)
        except ValueError as exc:
            raise CvatArgoError(f"{setting}={shown!r}: {parts.netloc!r} is not a valid bucket name ({exc})") from None
    if any(part in ("..", ".") for part in unquote(parts.path).split("/")):
        raise CvatArgoError(f"{setting}={shown!r}: '.' and '..' are not allowed in the prefix; {usage}")
    prefix = "/".join(part for part in parts.path.split("/") if part)
    return f"{parts.scheme}://{parts.netloc}/" + (f"{prefix}/" if prefix else "")


def model_mirror(env: Mapping[str, str] | None = None) -> str | None:
    """``CVAT_ARGO_MODEL_MIRROR`` checked (see :func:`parse_mirror`); None when unset or empty."""
    env = os.environ if env is None else env
    return parse_mirror(env.get(MODEL_MIRROR_VAR) or "")


def mirror_location(uri: str, mirror: str) -> str | None:
    """Where the mirror keeps the public checkpoint ``uri``: the mirror, then the URL's host and path.

    ``https://host/a/b.tar.gz`` -> ``<mirror>host/a/b.tar.gz`` (a port stays: ``host:8080/...``);
    ``gs://bucket/key`` -> ``<mirror>storage.googleapis.com/bucket/key``. None for what the cluster reads
    where it is: ``s3://`` sources (the store's endpoint) and local paths.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    elif scheme == "gs":
        host = f"{GCS_HOST}/{parts.netloc}"
    else:
        return None
    path = "/".join(part for part in parts.path.split("/") if part)
    if not parts.hostname or not path or any(part in (".", "..") for part in unquote(path).split("/")):
        raise DatasetError(f"{_redact(uri)}: cannot be looked up in the model mirror ({MODEL_MIRROR_VAR}): it "
                           "names no host and file path")
    return f"{mirror.rstrip('/')}/{host}/{path}"


def mirror_models(uris: Iterable[tuple[str, str | None]], to: str, *, env: Mapping[str, str] | None = None,
                  limits: Limits | None = None, say: Callable[[str], None] = print) -> list[str]:
    """Copy public checkpoints (``(uri, sha256 or None)``) into the mirror ``to`` (``s3://`` only).

    An object already in the mirror is left alone; a pinned digest is checked on the download. Returns
    the mirror URIs written. Runs where the origins are reachable; the mirror's store is configured from
    ``env`` like every store (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
    """
    root = parse_mirror(to, "--to")
    if root is None or not root.startswith("s3://"):
        raise CvatArgoError(f"--to {to!r}: the mirror to fill must be s3://bucket/prefix/ (an http mirror is "
                            "filled by whatever serves it)")
    bucket = urlsplit(root).netloc
    store = store_from_url(f"s3://{bucket}", env)
    assert isinstance(store, S3Store)
    written: list[str] = []
    for uri, sha256 in dict.fromkeys(uris):
        located = mirror_location(uri, root)
        if located is None:
            say(f"skip {_redact(uri)}: not a public URL (s3:// and local sources are read where they are)")
            continue
        key = unquote(urlsplit(located).path).lstrip("/")
        bare = bool(_CKPT_PREFIX.search(urlsplit(uri).path))
        names = [key + suffix for suffix in PREFIX_FILES] if bare else [key]
        if all(store.exists(name) for name in names):
            say(f"have {located} ({_redact(uri)})")
            continue
        with tempfile.TemporaryDirectory(prefix="cvat-argo-mirror-") as work:
            if bare:
                files = fetch_files([uri + suffix for suffix in PREFIX_FILES], Path(work), limits=limits)
            else:
                files = [fetch(uri, Path(work), env=env, expected_sha256=sha256, limits=limits)]
            for name, local in zip(names, files, strict=True):
                store.put_file(local, name, overwrite=True)
        say(f"copied {_redact(uri)} -> {located}")
        written.append(located)
    if not written:
        say(f"{root}: nothing to copy")
    return written

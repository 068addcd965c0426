"""pull-base-model: the base checkpoint, fetched once, verified, unpacked safely, cached by digest.

``python -m cvat_argo.steps.pull --model M [--model-spec JSON] [--uri URI] [--sha256 HEX]
[--mirror s3://bucket/models/] --out DIR``

The URI is the catalog's unless ``--uri`` names another: ``https://``, ``s3://`` (through the
store), ``gs://`` (public objects), a local path, or the model folder of an earlier run to fine-tune
from. An archive is extracted with :mod:`cvat_argo.storage.archive`; a bare checkpoint prefix
(``.../ckpt-180648``) brings its ``.index`` and ``.data-*`` files. The newest checkpoint is chosen by
step number, not by string order (``ckpt-10`` after ``ckpt-9``). With a store configured
(``CVAT_ARGO_STORE``) the result is cached under ``base-models/<sha256>/`` and the next run with the
same digest downloads nothing. A source that pins no digest (the built-in catalog's) is cached by the
digest recorded the first time it was pulled: ``base-models/by-uri/<sha256 of the URI>.json`` names it,
so the next run reads the cache, not the origin (pin ``checkpoint.sha256`` to move to new weights).

Air-gapped clusters (:mod:`cvat_argo.storage.mirror`): ``CVAT_ARGO_MODEL_MIRROR`` (the optional
``model-mirror`` key of the ``cvat-argo-store`` ConfigMap) names a bucket prefix, ``s3://bucket/mirror/``
(or an ``http(s)://`` server), that holds copies of the public checkpoints under their host and path:
``https://storage.googleapis.com/tf_model_garden/x.tar.gz`` is read from
``s3://bucket/mirror/storage.googleapis.com/tf_model_garden/x.tar.gz``, and ``gs://b/k`` from
``.../storage.googleapis.com/b/k``. ``s3://`` sources and local paths are read where they are. The manifest
records the public URI, the mirror's copy and the digest; a pinned digest is checked on the copy.
``--mirror`` (older, and it wins over the setting) looks the file up under a location by its name alone.

Bounds (the rules live in :mod:`cvat_argo.storage.fetch` and :mod:`cvat_argo.storage.archive`; this
stage only chooses the values): the catalog's ``checkpoint.max_bytes`` (default 5 GiB) caps what is
downloaded or copied and, separately, what an archive unpacks to; a download may take 2 h. The archive
kind is read from the file's first bytes before anything hashes or scans it. A local path or ``file://``
must lie under an allowed root: the folders in ``CVAT_ARGO_MODEL_ROOTS``, plus this run's own store
folder — the root of a local ``CVAT_ARGO_STORE``, and for a local run (``--out`` is
``<store>/<run-id>/pull-base-model/base-model`` beside the run's ``request.json``) ``<store>``, where
the earlier runs to fine-tune from live. System folders (``/etc``, ``/proc``, ...) are never allowed; a
local folder is copied without following links, and a link inside it is refused. A refusal exits 2
(roots) or 4 (caps, links, not an archive), never 75; whatever the step wrote to ``--out`` and its
temporary folder are removed on every failure, KeyboardInterrupt included.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from ..engines import artifacts
from ..entry import run_step
from ..errors import ArgumentError, DatasetError
from ..request.catalog import entry_from_parameters
from ..request.model_entry import ModelEntry
from ..storage.archive import archive_kind, extract
from ..storage.digest import file_sha256
from ..storage.fetch import DEFAULT_MAX_BYTES, Limits, fetch, fetch_files, local_roots
from ..storage.mirror import MODEL_MIRROR_VAR, mirror_location, model_mirror
from ..storage.store import LocalStore, Store, _redact, store_from_env

CACHE_PREFIX = "base-models"
BY_URI_PREFIX = f"{CACHE_PREFIX}/by-uri"  # <sha256 of the source URI>.json: the digest its first pull recorded
_REMOTE_SCHEMES = ("http", "https", "gs", "s3")
CHECKPOINT_DIR = "checkpoint"
_CKPT_INDEX = re.compile(r"^(?P<prefix>.*?(?P<step>\d+))\.index$")
_CKPT_PREFIX = re.compile(r"ckpt-\d+$")


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint prefix with the highest step under ``folder`` (``ckpt-10`` beats ``ckpt-9``)."""
    best: tuple[int, Path] | None = None
    for index in folder.rglob("*.index"):
        match = _CKPT_INDEX.match(index.name)
        step = int(match.group("step")) if match else -1
        prefix = index.with_name(index.name.removesuffix(".index"))
        if not any(prefix.parent.glob(prefix.name + ".data-*")):
            continue  # an index without its data shards is not a checkpoint
        if best is None or step > best[0]:
            best = (step, prefix)
    return best[1] if best else None


def tree_digest(folder: Path) -> str:
    """sha256 over the files of a folder (names and contents), for sources that are not one file."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode() + b"\n")  # chunked: a 5 GiB shard never sits in memory
    return digest.hexdigest()


def checkpoint_limits(entry: ModelEntry) -> Limits:
    """The fetch limits for an entry's base model: its ``checkpoint.max_bytes``, or the 5 GiB default."""
    if entry.checkpoint.max_bytes is None:
        return Limits(max_bytes=DEFAULT_MAX_BYTES, what=f"the default for base models; set checkpoint.max_bytes "
                                                         f"in model {entry.name}'s catalog entry to change it")
    return Limits(max_bytes=entry.checkpoint.max_bytes, what=f"checkpoint.max_bytes of model {entry.name}")


def run_store_folders(out: Path, store: Store | None) -> list[Path]:
    """The run's own store folders, which local base models may come from besides ``CVAT_ARGO_MODEL_ROOTS``.

    A :class:`LocalStore`'s root, and for a local run (``out`` is the pull-base-model artifact of a run
    folder holding its ``request.json``) the folder that holds the run folders.
    """
    folders = [store.root] if isinstance(store, LocalStore) else []
    run_root = Path(out).parent.parent
    if (artifacts.artifact_path(run_root, artifacts.PULL_BASE_MODEL, artifacts.BASE_MODEL) == Path(out)
            and (run_root / artifacts.RUN_REQUEST).is_file()):
        folders.append(run_root.parent)
    return folders


def mirrored(uri: str, mirror: str | None) -> str:
    """The URI under the mirror: same file name, mirror's location."""
    if not mirror:
        return uri
    name = PurePosixPath(urlsplit(uri).path).name
    return mirror.rstrip("/") + "/" + name


def _fetch_source(uri: str, work: Path, expected: str | None, limits: Limits,
                  roots: Sequence[Path], env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """Download (or copy) into ``work``; returns (local path, sha256 of what was fetched).

    A single file must be an archive by its first bytes, checked before it is hashed or unpacked.
    """
    scheme = urlsplit(uri).scheme
    if scheme in ("gs", "http", "https") and _CKPT_PREFIX.search(urlsplit(uri).path):
        # a bare checkpoint prefix on a web server: its two files by name, under one cap
        folder = work / "prefix"
        fetch_files([uri + suffix for suffix in (".index", ".data-00000-of-00001")], folder, limits=limits)
        digest = tree_digest(folder)
        if expected and digest != expected:
            raise DatasetError(f"{uri}: sha256 {digest} does not match the expected {expected}")
        return folder, digest
    local = fetch(uri, work / "download", env=env, expected_sha256=expected if _single_object_uri(uri) else None,
                  limits=limits, local_roots=roots)
    if local.is_file():
        if archive_kind(local) is None:
            raise DatasetError(f"{uri} is not an archive: its first bytes match no zip, gzip, bzip2, xz or tar "
                               "signature (give a .tar.gz/.zip of the checkpoint, its folder, or its prefix)")
        digest = file_sha256(local)
    elif local.is_dir():
        digest = tree_digest(local)
    else:  # an s3:// checkpoint prefix: fetch returned the prefix path, its files sit beside it
        siblings = sorted(local.parent.glob(local.name + ".*"))
        if not siblings:
            raise DatasetError(f"{uri} does not exist")
        folder = work / "prefix"
        folder.mkdir()
        for sibling in siblings:
            shutil.move(str(sibling), folder / sibling.name)
        local, digest = folder, tree_digest(folder)
    if expected and digest != expected:
        raise DatasetError(f"{uri}: sha256 {digest} does not match the expected {expected}")
    return local, digest


def _single_object_uri(uri: str) -> bool:
    """Whether fetch can check the digest while it downloads: one remote object (a local path: checked here)."""
    return urlsplit(uri).scheme not in ("", "file") and not uri.endswith("/")


def _unpack(local: Path, checkpoint_dir: Path, uri: str, limits: Limits) -> Path:
    if local.is_file():  # an archive: _fetch_source checked its first bytes
        extract(local, checkpoint_dir, max_bytes=limits.max_bytes, name=uri)
    elif local.is_dir():  # always a copy in the work folder (fetch copies local folders): moved, not copied
        shutil.move(str(local), str(checkpoint_dir))
    else:
        raise DatasetError(f"{uri} is neither an archive nor a folder with a TensorFlow checkpoint")
    prefix = newest_checkpoint(checkpoint_dir)
    if prefix is None:
        raise DatasetError(f"{uri} contains no TensorFlow checkpoint (no <name>.index with its .data-* files)")
    return prefix


def _from_cache(store: Store | None, digest: str | None, out: Path) -> bool:
    if store is None or not digest or not store.exists(f"{CACHE_PREFIX}/{digest}/{artifacts.BASE_MODEL_MANIFEST}"):
        return False
    store.get_dir(f"{CACHE_PREFIX}/{digest}", out)
    return True


def _record_key(origin: str) -> str:
    """Where the digest of a source's first pull is recorded: by the sha256 of its URI (any length, any bytes)."""
    return f"{BY_URI_PREFIX}/{hashlib.sha256(origin.encode()).hexdigest()}.json"


def _recordable(store: Store | None, origin: str) -> bool:
    """Remote sources only: a local folder may change under the same name without anyone pulling it."""
    return store is not None and urlsplit(origin).scheme.lower() in _REMOTE_SCHEMES


def recorded_digest(store: Store | None, origin: str) -> str | None:
    """The digest recorded when ``origin`` was first pulled into this store; None if none (or unreadable)."""
    if store is None or not _recordable(store, origin) or not store.exists(key := _record_key(origin)):
        return None
    with tempfile.TemporaryDirectory(prefix="cvat-argo-pull-") as work:
        path = store.get_file(key, Path(work) / "record.json")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            record = None
    digest = record.get("sha256") if isinstance(record, dict) and record.get("uri") == origin else None
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        print(f"warning: {store.uri(key)} is not a digest record of {_redact(origin)}; fetching it again",
              file=sys.stderr)
        return None
    return digest


def _record_digest(store: Store | None, origin: str, digest: str, recorded: str | None) -> None:
    if store is None or not _recordable(store, origin) or recorded == digest:
        return
    if recorded is not None:
        print(f"warning: {_redact(origin)} now has sha256 {digest}, not the {recorded} recorded when it was first "
              f"pulled (whose cache is gone); recording the new digest", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="cvat-argo-pull-") as work:
        path = Path(work) / "record.json"
        path.write_text(json.dumps({"uri": origin, "sha256": digest}, indent=2) + "\n", encoding="utf-8")
        store.put_file(path, _record_key(origin), overwrite=True)


def _source_location(source: str, mirror: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """(where the copy is read instead of ``source``, or None; the setting that said so)."""
    if mirror:
        located = mirrored(source, mirror)
        return (located if located != source else None), "--mirror"
    root = model_mirror(env)
    if root is None:
        return None, MODEL_MIRROR_VAR
    return mirror_location(source, root), MODEL_MIRROR_VAR


def _missing_in_mirror(exc: DatasetError, located: str, origin: str, setting: str) -> DatasetError | None:
    """A clearer error when the mirror lacks the copy: which key it looked for, and which URL it stands for."""
    text = str(exc)
    if not (text.startswith(_redact(located)) and "does not exist" in text):
        return None
    parts = urlsplit(located)
    where = (f"key {unquote(parts.path).lstrip('/')} in bucket {parts.netloc}" if parts.scheme == "s3"
             else _redact(located))
    return DatasetError(f"{setting}: the model mirror has no copy of {_redact(origin)}: looked for {where} "
                        f"({_redact(located)}); copy it there on a machine with internet (`python -m cvat_argo "
                        f"mirror-models --to MIRROR`, or download it and `aws s3 cp` / `mc cp` it to that key)")


def _describe(entry: ModelEntry, origin: str, digest: str, expected: str | None, out: Path, checkpoint: str,
              **where: str | None) -> artifacts.BaseModelManifest:
    manifest = artifacts.BaseModelManifest(
        model=entry.name, uri=origin, sha256=digest, pinned=expected is not None, checkpoint=checkpoint,
        modules=entry.checkpoint.modules, trained_on=entry.checkpoint.trained_on, **where,
    )
    earlier = artifacts.TrainedModelManifest.read_if_present(out / CHECKPOINT_DIR)
    if earlier is not None:
        manifest = fine_tuning(manifest, earlier, origin)
    manifest.write(out)
    return manifest


def pull(model: str, model_spec: str, uri: str, sha256: str, out: Path, mirror: str | None = None,
         store: Store | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Bring the base checkpoint to ``out``; returns its manifest plus ``cached``.

    ``env`` (default ``os.environ``) holds ``CVAT_ARGO_MODEL_ROOTS``, ``CVAT_ARGO_MODEL_MIRROR`` and the
    S3 settings a mirror is read with.
    """
    env = os.environ if env is None else env
    entry = entry_from_parameters(model, model_spec)
    origin = uri or entry.checkpoint.uri
    expected = (sha256 or (entry.checkpoint.sha256 if not uri else None) or "").lower() or None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"output folder {out} exists and is not empty: refusing to overwrite it")
    if origin is None:
        out.mkdir(parents=True, exist_ok=True)
        manifest = artifacts.BaseModelManifest(
            model=entry.name, uri=None, note="the catalog names no base checkpoint: training starts from scratch")
        manifest.write(out)
        return dataclasses.asdict(manifest)
    located, setting = _source_location(origin, mirror, env)  # a bad setting fails before anything is made
    source = located or origin
    limits = checkpoint_limits(entry)
    roots = local_roots(env, extra=run_store_folders(out, store))
    created = _first_missing(out)  # what a failure removes: out, and the folders made to hold it
    out.mkdir(parents=True, exist_ok=True)
    try:
        recorded = None if expected else recorded_digest(store, origin)
        cache_digest = expected or recorded
        if _from_cache(store, cache_digest, out):
            assert cache_digest is not None
            cached = artifacts.BaseModelManifest.read(out)
            manifest = _describe(entry, origin, cache_digest, expected, out, cached.checkpoint or "",
                                 cache=f"{CACHE_PREFIX}/{cache_digest}")
            return {**dataclasses.asdict(manifest), "cached": True}
        with tempfile.TemporaryDirectory(prefix="cvat-argo-pull-") as work:
            try:
                local, digest = _fetch_source(source, Path(work), expected, limits, roots, env)
            except DatasetError as exc:
                clearer = _missing_in_mirror(exc, located, origin, setting) if located else None
                if clearer is None:
                    raise
                raise clearer from None
            prefix = _unpack(local, out / CHECKPOINT_DIR, source, limits)
        manifest = _describe(entry, origin, digest, expected, out, prefix.relative_to(out).as_posix(),
                             mirror=located)
        if store is not None and not store.exists(f"{CACHE_PREFIX}/{digest}/{artifacts.BASE_MODEL_MANIFEST}"):
            store.put_dir(out, f"{CACHE_PREFIX}/{digest}")
        if not expected:
            _record_digest(store, origin, digest, recorded)
    except BaseException:
        _clear(out, created)
        raise
    return {**dataclasses.asdict(manifest), "cached": False}


def fine_tuning(manifest: artifacts.BaseModelManifest, earlier: artifacts.TrainedModelManifest,
                source: str) -> artifacts.BaseModelManifest:
    """The base model is an earlier run's trained model: restore all of it (train drops the class head
    when the labels differ), if it is the same catalog model; another model's layers would not fit."""
    if earlier.model != manifest.model:
        raise ArgumentError(f"{source} is a trained {earlier.model}, but this run trains {manifest.model}: "
                            f"train {earlier.model} again (--model {earlier.model}) to start from it")
    return dataclasses.replace(manifest, modules="all", labels=list(earlier.labels),
                               trained_on=f"an earlier run ({earlier.model} on {', '.join(earlier.labels)})")


def _first_missing(out: Path) -> Path | None:
    """The outermost folder of ``out`` that does not exist yet (``out`` itself, or one above); None if it exists."""
    if out.exists():
        return None
    missing = out
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    return missing


def _clear(out: Path, created: Path | None) -> None:
    """Undo a failed pull: ``out`` was empty (or absent) when it began, so all it holds is this step's."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo.steps.pull", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="catalog model name")
    parser.add_argument("--model-spec", default="", help="the model's catalog entry as JSON")
    parser.add_argument("--uri", default="", help="checkpoint to use instead of the catalog's")
    parser.add_argument("--sha256", default="", help="expected sha256 (of the archive, or of the folder's files)")
    parser.add_argument("--mirror", default="", help="look the file up by name under this location instead "
                        f"(wins over {MODEL_MIRROR_VAR}, which maps <host>/<path> under a bucket prefix)")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    manifest = pull(ns.model, ns.model_spec, ns.uri, ns.sha256, ns.out, mirror=ns.mirror or None,
                    store=store_from_env())
    if manifest.get("checkpoint") is None:
        print(f"{manifest['model']}: no base checkpoint; training starts from scratch")
    else:
        cached = manifest.get("cached")
        state = f"from the cache ({manifest['cache']})" if cached else f"from {_redact(manifest['uri'])}"
        if manifest.get("mirror"):
            state += f" (the mirror's copy, {_redact(manifest['mirror'])})"
        pinned = "verified" if manifest.get("pinned") else "not pinned; the digest of its first pull is recorded"
        print(f"{manifest['model']}: base checkpoint {manifest['checkpoint']} {state} "
              f"(sha256 {manifest['sha256']}, {pinned})")
    return 0


if __name__ == "__main__":
    sys.exit(run_step(main))

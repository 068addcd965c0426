"""pull-base-model: the base checkpoint, fetched once, verified, unpacked safely, cached by digest.

``python -m cvat_argo.steps.pull --model M [--model-spec JSON] [--uri URI] [--sha256 HEX]
[--mirror s3://bucket/models/] --out DIR``

The URI is the catalog's unless ``--uri`` names another: ``https://``, ``s3://`` (through the
store), ``gs://`` (public objects), a local path, or the model folder of an earlier run to fine-tune
from. An archive is extracted with :mod:`cvat_argo.storage.archive`; a bare checkpoint prefix
(``.../ckpt-180648``) brings its ``.index`` and ``.data-*`` files. The newest checkpoint is chosen by
step number, not by string order (``ckpt-10`` after ``ckpt-9``). With a store configured
(``CVAT_ARGO_STORE``) the result is cached under ``base-models/<sha256>/`` and the next run with the
same digest downloads nothing. ``--mirror`` serves air-gapped clusters: the file is looked up under
the mirror by its name instead of at its origin.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ..engines import artifacts
from ..entry import run_step
from ..errors import DatasetError
from ..request.catalog import entry_from_parameters
from ..storage.archive import extract, is_archive
from ..storage.digest import file_sha256
from ..storage.fetch import fetch
from ..storage.store import Store, store_from_env

CACHE_PREFIX = "base-models"
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
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def mirrored(uri: str, mirror: str | None) -> str:
    """The URI under the mirror: same file name, mirror's location."""
    if not mirror:
        return uri
    name = PurePosixPath(urlsplit(uri).path).name
    return mirror.rstrip("/") + "/" + name


def _fetch_source(uri: str, work: Path, expected: str | None) -> tuple[Path, str]:
    """Download into ``work``; returns (local path, sha256 of what was fetched)."""
    scheme = urlsplit(uri).scheme
    if scheme in ("gs", "http", "https") and _CKPT_PREFIX.search(urlsplit(uri).path):
        # a bare checkpoint prefix on a web server: its two files by name
        folder = work / "prefix"
        for suffix in (".index", ".data-00000-of-00001"):
            fetch(uri + suffix, folder)
        digest = tree_digest(folder)
        if expected and digest != expected:
            raise DatasetError(f"{uri}: sha256 {digest} does not match the expected {expected}")
        return folder, digest
    local = fetch(uri, work / "download", expected_sha256=expected if _single_file_uri(uri) else None)
    if local.is_file():
        return local, file_sha256(local)
    if local.is_dir():
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


def _single_file_uri(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file"):
        path = Path(urlsplit(uri).path if scheme else uri)
        return path.is_file()
    return not uri.endswith("/")


def _unpack(local: Path, checkpoint_dir: Path, uri: str) -> Path:
    if local.is_file() and is_archive(local):
        extract(local, checkpoint_dir)
    elif local.is_dir():
        shutil.copytree(local, checkpoint_dir, dirs_exist_ok=True)
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


def pull(model: str, model_spec: str, uri: str, sha256: str, out: Path, mirror: str | None = None,
         store: Store | None = None) -> dict[str, Any]:
    entry = entry_from_parameters(model, model_spec)
    source = uri or entry.checkpoint.uri
    expected = (sha256 or (entry.checkpoint.sha256 if not uri else None) or "").lower() or None
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"output folder {out} exists and is not empty: refusing to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    if source is None:
        manifest = artifacts.BaseModelManifest(
            model=entry.name, uri=None, note="the catalog names no base checkpoint: training starts from scratch")
        manifest.write(out)
        return dataclasses.asdict(manifest)
    source = mirrored(source, mirror)
    if _from_cache(store, expected, out):
        return {**dataclasses.asdict(artifacts.BaseModelManifest.read(out)), "cached": True}
    with tempfile.TemporaryDirectory(prefix="cvat-argo-pull-") as work:
        local, digest = _fetch_source(source, Path(work), expected)
        prefix = _unpack(local, out / CHECKPOINT_DIR, source)
    manifest = artifacts.BaseModelManifest(
        model=entry.name, uri=source, sha256=digest, pinned=expected is not None,
        checkpoint=prefix.relative_to(out).as_posix(), modules=entry.checkpoint.modules,
        trained_on=entry.checkpoint.trained_on,
    )
    manifest.write(out)
    if store is not None and not store.exists(f"{CACHE_PREFIX}/{digest}/{artifacts.BASE_MODEL_MANIFEST}"):
        store.put_dir(out, f"{CACHE_PREFIX}/{digest}")
    return {**dataclasses.asdict(manifest), "cached": False}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvat_argo.steps.pull", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="catalog model name")
    parser.add_argument("--model-spec", default="", help="the model's catalog entry as JSON")
    parser.add_argument("--uri", default="", help="checkpoint to use instead of the catalog's")
    parser.add_argument("--sha256", default="", help="expected sha256 (of the archive, or of the folder's files)")
    parser.add_argument("--mirror", default="", help="look the file up by name under this location instead")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    manifest = pull(ns.model, ns.model_spec, ns.uri, ns.sha256, ns.out, mirror=ns.mirror or None,
                    store=store_from_env())
    if manifest.get("checkpoint") is None:
        print(f"{manifest['model']}: no base checkpoint; training starts from scratch")
    else:
        state = "from the cache" if manifest.get("cached") else f"from {manifest['uri']}"
        pinned = "verified" if manifest.get("pinned") else "not pinned in the catalog"
        print(f"{manifest['model']}: base checkpoint {manifest['checkpoint']} {state} "
              f"(sha256 {manifest['sha256']}, {pinned})")
    return 0


if __name__ == "__main__":
    sys.exit(run_step(main))

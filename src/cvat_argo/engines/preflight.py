"""What can be checked before any stage starts: a run that cannot work is refused before it has a folder.

The stages find these problems too, but late: ``run --source /typo.zip`` failed in create-dataset after
seconds, was reported after pull-base-model's retries, and left a run folder whose ``--resume`` could
not help. Here each rule is asked of its one owner (the CVAT connection, the artifact store) before
``local.prepare`` writes anything, and a refusal is one line naming the argument or variable at fault.
A server that does not answer is an outage (:class:`TransientError`, exit 75); everything else is
permanent. Each check costs at most one bounded request.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from ..errors import CvatArgoError, DatasetError, TransientError
from ..request.spec import DatasetSource, TrainingRequest
from ..storage.keys import clean_key
from ..storage.store import store_from_url
from . import artifacts

#: The longest a check waits for a server; past it the server counts as down (exit 75).
PROBE_SECONDS = 30.0

T = TypeVar("T")


def check_run(request: TrainingRequest, store: str, *, resumed: bool = False,
              env: Mapping[str, str] | None = None) -> None:
    """Refuse, in one line, a run whose source, store or CVAT server cannot work.

    A resumed run's source is not checked: its dataset may be made already, and create-dataset says
    so itself if it is not.
    """
    env = os.environ if env is None else env
    if not resumed:
        check_source(request.source, env)
        if request.base_model_uri:
            check_base_model(request.base_model_uri)
    check_store(store, env)
    if request.source.cvat_task_id is not None:  # pre-annotate uploads to the task: a resume needs it too
        check_cvat_task(request.source.cvat_task_id, env)


def check_source(source: DatasetSource, env: Mapping[str, str] | None = None) -> None:
    """A local export exists and is readable; an s3:// export exists (one listing). URLs are left to the stage."""
    if source.kind == "path":
        _readable(_local_path(source.uri or ""), f"--source {source.uri}")
    elif source.kind == "s3":
        uri = source.uri or ""
        parts = urlsplit(uri)
        key = clean_key(unquote(parts.path))

        named = f"--source {uri}"
        try:
            bucket = store_from_url(f"s3://{parts.netloc}", env)
            found = bool(key) and _bounded("the store", lambda: bucket.exists(key))
        except CvatArgoError as exc:
            raise _reworded(exc, named, named) from None
        if not found:
            raise DatasetError(f"{named} does not exist (no object or folder at that key)")


def check_base_model(uri: str) -> None:
    """A local ``--base-model`` exists and is readable (where it may lie is pull-base-model's rule)."""
    if "://" not in uri or uri.startswith("file://"):
        _readable(_local_path(uri), f"--base-model {uri}")


def check_store(store: str, env: Mapping[str, str] | None = None) -> None:
    """A folder store can be made; an s3:// store takes one small object under its prefix (put, then deleted)."""
    if not store.startswith("s3://"):
        _writable_folder(_local_path(store), f"--store {store}")
        return
    named = f"--store {store}"
    try:
        runs = store_from_url(store, env)  # a malformed bucket name, endpoint or credentials: refused here
    except CvatArgoError as exc:
        raise _reworded(exc, named, named) from None
    key = artifacts.STORE_PROBE.format(token=secrets.token_hex(4))

    def probe() -> None:
        with tempfile.TemporaryDirectory(prefix="cvat-argo-probe-") as work:
            sample = Path(work) / "probe"
            sample.write_text("written by cvat-argo before a run, to test the store; safe to delete\n")
            runs.put_file(sample, key)
        with suppress(CvatArgoError):  # a store that takes writes but refuses deletes still runs
            runs.delete(key)

    try:
        _bounded("the store", probe)
    except CvatArgoError as exc:
        raise _reworded(exc, named, f"{named}: cannot write a test object there") from None


def check_cvat_task(task_id: int, env: Mapping[str, str] | None = None) -> None:
    """CVAT_HOST and its credentials, by the connection's own rules, then one read of the task."""
    from ..cvat.server import connect, lenient_json, readable_error

    def read_task() -> None:
        client = connect(env, needs=f"--task-id {task_id}")
        try:
            lenient_json(client.api_client.tasks_api.retrieve, task_id)
        except Exception as exc:
            raise readable_error(exc, client.api_map.host, f"reading task {task_id}") from None
        finally:
            client.close()

    named = f"--task-id {task_id}"
    try:
        _bounded("the CVAT server (CVAT_HOST)", read_task)
    except CvatArgoError as exc:
        raise _reworded(exc, named, named) from None


# ----------------------------------------------------------------------------------------- helpers


def _local_path(location: str) -> Path:
    if location.startswith("file://"):
        return Path(unquote(urlsplit(location).path))
    return Path(location).expanduser()


def _readable(path: Path, named: str) -> None:
    if not path.exists():
        raise DatasetError(f"{named}: no such file or folder")
    if not (path.is_file() or path.is_dir()):
        raise DatasetError(f"{named} is neither a file nor a folder")
    needs = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, needs):
        raise DatasetError(f"{named} cannot be read (permission denied)")


def _writable_folder(path: Path, named: str) -> None:
    if path.exists() and not path.is_dir():
        raise CvatArgoError(f"{named} is a file; runs need a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise CvatArgoError(f"{named}: {existing} is a file; runs need a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CvatArgoError(f"{named}: {existing} is not writable")


def _bounded(what: str, call: Callable[[], T], seconds: float = PROBE_SECONDS) -> T:
    """``call()`` in a thread that gets ``seconds``: a server that hangs is an outage, not a hang here."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="cvat-argo-preflight", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TransientError(f"{what} did not answer within {seconds:.0f} s; retry later")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _reworded(exc: CvatArgoError, named: str, context: str) -> CvatArgoError:
    """The same error (type, exit code) with ``context`` in front, unless it names the argument already."""
    text = str(exc)
    reworded = type(exc)(text if text.startswith(named) else f"{context}: {text}")
    reworded.exit_code = exc.exit_code
    return reworded

"""A live CVAT server through cvat-sdk: connect with credentials from the environment, export a task.

``CVAT_HOST`` names the server; ``CVAT_ACCESS_TOKEN`` (a personal access token) or
``CVAT_USERNAME`` + ``CVAT_PASSWORD`` authenticate. In the cluster they come from the
``cvat-credentials`` Secret. Credentials never appear in messages.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import CvatArgoError, DatasetError, TransientError

EXPORT_FORMAT = "CVAT for images 1.1"
# A frame counts as annotated, even without shapes, once a person finished or reviews its job.
REVIEWED_STAGES = ("validation", "acceptance")


def connect(env: Mapping[str, str] | None = None, *, needs: str = "a live CVAT task"):
    """A logged-in cvat-sdk client for ``CVAT_HOST`` with the environment's credentials.

    The SDK's server-version check is off: cvat-sdk 2.80 refuses older servers outright, while the
    few endpoints used here have been stable for years (their answers are read leniently).
    """
    env = os.environ if env is None else env
    host = (env.get("CVAT_HOST") or "").strip()
    if not host:
        raise CvatArgoError("no CVAT server: set CVAT_HOST (and CVAT_ACCESS_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD)")
    _check_host(host)
    try:
        from cvat_sdk import Client
        from cvat_sdk.core.client import AccessTokenCredentials
    except ImportError:
        raise CvatArgoError(f"{needs} needs cvat-sdk: pip install 'cvat-argo[cvat]'") from None
    token, user, password = env.get("CVAT_ACCESS_TOKEN"), env.get("CVAT_USERNAME"), env.get("CVAT_PASSWORD")
    if not token and not (user and password):
        raise CvatArgoError(f"no CVAT credentials for {host}: set CVAT_ACCESS_TOKEN, or CVAT_USERNAME and "
                            "CVAT_PASSWORD")
    try:
        client = Client(host if "://" in host else f"https://{host}", check_server_version=False)
        client.login(AccessTokenCredentials(token) if token else (user, password))
        return client
    except Exception as exc:
        if getattr(exc, "status", None) == 400:  # CVAT's answer to a wrong user name or password
            raise CvatArgoError(f"CVAT at {host} refused the login (HTTP 400): check CVAT_USERNAME and "
                                "CVAT_PASSWORD") from None
        raise readable_error(exc, host, "login") from None


def _check_host(host: str) -> None:
    """``CVAT_HOST`` is ``host[:port]`` (https is tried) or an http(s):// URL; anything else is refused now.

    Credentials inside the address (``user:pass@host``) are refused without echoing the address: they
    would end up in logs, reports and the ledger's key.
    """
    url = urlsplit(host if "://" in host else f"https://{host}")
    if "@" in url.netloc:
        raise CvatArgoError("CVAT_HOST holds credentials (user:password@host): give the bare address and set "
                            "CVAT_ACCESS_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD")
    try:
        port_ok = url.port is None or 0 < url.port < 65536
    except ValueError:
        port_ok = False
    if url.scheme not in ("http", "https") or not url.hostname or not port_ok or any(c.isspace() for c in host):
        raise CvatArgoError(f"CVAT_HOST {host!r} is not a server address: use host[:port] or http(s)://host[:port]")


def readable_error(exc: Exception, host: str, what: str) -> CvatArgoError:
    """One line for a failed CVAT request, typed so the engines retry only what may pass next time."""
    status = getattr(exc, "status", None)
    if isinstance(exc, CvatArgoError):
        return exc
    tls = _tls_failure(exc)
    if tls:
        bare = host.split("://", 1)[-1]
        hint = (f"the server speaks plain HTTP: set CVAT_HOST=http://{bare}" if tls == "WRONG_VERSION_NUMBER"
                else f"check the server's certificate, or set CVAT_HOST=http://{bare} if it speaks plain HTTP")
        return CvatArgoError(f"CVAT at {host}: {what} failed in the TLS handshake ({tls}): {hint}")
    if type(exc).__name__ == "BackgroundRequestException":  # the server ran the export and it failed there
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        said = f": {lines[-1]}" if lines else ""
        return TransientError(f"CVAT at {host}: {what} failed on the server{said}: will retry")
    if status in (401, 403):
        return CvatArgoError(f"CVAT at {host} refused {what} (HTTP {status}): check CVAT_ACCESS_TOKEN or "
                             "CVAT_USERNAME/CVAT_PASSWORD and the user's rights on the task")
    if status == 404:
        return DatasetError(f"CVAT at {host}: {what}: not found (HTTP 404)")
    if status is None or status >= 500:
        return TransientError(f"CVAT at {host} did not answer {what} ({type(exc).__name__}): will retry")
    return CvatArgoError(f"CVAT at {host}: {what} failed with HTTP {status}")


def _tls_failure(exc: BaseException) -> str:
    """The TLS error inside ``exc`` (urllib3 wraps it in MaxRetryError), or '' when it is not one.

    A TLS failure is a configuration error, not an outage: an https:// client talking to a plain
    HTTP server (``WRONG_VERSION_NUMBER``) or a certificate it cannot verify fails the same way on
    every retry.
    """
    import ssl

    from urllib3.exceptions import SSLError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, SSLError | ssl.SSLError):
            text = str(current)
            match = re.search(r"\[SSL: ([A-Z_]+)\]|(CERTIFICATE_VERIFY_FAILED|WRONG_VERSION_NUMBER)", text)
            return (match.group(1) or match.group(2)) if match else text.split("(")[0].strip() or "SSL error"
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else current.__cause__ or current.__context__
    return ""


def reviewed_frames(jobs: Iterable[Any], job_meta: Callable[[Any], Mapping[str, Any]] | None = None) -> set[int]:
    """Task frames of the annotation jobs that are completed or in validation/acceptance.

    A job holds its start..stop range unless its data meta (``job_meta(job)``, ``GET
    /api/jobs/{id}/data/meta``, read for reviewed jobs only) lists ``included_frames``: a job of chosen
    frames, whose range also spans frames of other jobs or of the validation pool that nobody reviewed
    in it. Counting those would train their unseen objects as background. The meta's
    ``deleted_frames`` are left out too. Without ``job_meta``, every job holds its whole range.
    """
    frames: set[int] = set()
    for job in jobs:
        if getattr(job, "type", "annotation") not in (None, "annotation"):
            continue
        if str(job.state) != "completed" and str(job.stage) not in REVIEWED_STAGES:
            continue
        meta = job_meta(job) if job_meta else {}
        start, stop = int(job.start_frame), int(job.stop_frame)
        held: Iterable[int] = range(start, stop + 1)
        if meta.get("included_frames") is not None:
            # data frame numbers: the meta's start_frame is the job's first, the task's frame filter the step
            step = re.search(r"step\s*=\s*(\d+)", meta.get("frame_filter") or "")
            every = int(step[1]) if step else 1
            first = int(meta.get("start_frame", start))
            held = {start + (int(f) - first) // every for f in meta["included_frames"]}.intersection(held)
        frames.update(set(held).difference(meta.get("deleted_frames") or ()))
    return frames


def lenient_json(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """An SDK endpoint's answer as plain JSON. The SDK's strict models refuse answers of servers older
    than it (e.g. a job's data meta without ``chunks_updated_date``), while the fields used here are old."""
    _, response = call(*args, _parse_response=False, **kwargs)
    return json.loads(response.data or b"{}")


def _job_meta(job: Any) -> dict[str, Any]:
    return lenient_json(job.api.retrieve_data_meta, job.id)


def export_task(task_id: int, dest: Path, env: Mapping[str, str] | None = None) -> tuple[Path, set[int]]:
    """Export the task as CVAT for images 1.1 with images; also return the frames people reviewed.

    The jobs are read before the export starts: a job finished while the export runs then counts as
    not reviewed (its empty frames are pre-annotated), never the other way round, where a frame
    exported before its shapes were drawn would train as a negative.
    """
    client = connect(env)
    host = client.api_map.host if hasattr(client, "api_map") else "CVAT"
    try:
        task = client.tasks.retrieve(task_id)
        reviewed = reviewed_frames(task.get_jobs(), _job_meta)
        dest.mkdir(parents=True, exist_ok=True)
        archive = dest / f"task-{task_id}.zip"
        task.export_dataset(EXPORT_FORMAT, archive, include_images=True)
        return archive, reviewed
    except Exception as exc:
        raise readable_error(exc, str(host), f"exporting task {task_id}") from None

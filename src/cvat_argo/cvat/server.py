"""A live CVAT server through cvat-sdk: connect with credentials from the environment, export a task.

``CVAT_HOST`` names the server; ``CVAT_ACCESS_TOKEN`` (a personal access token) or
``CVAT_USERNAME`` + ``CVAT_PASSWORD`` authenticate; ``CVAT_ORG``, ``CVAT_CA_BUNDLE`` and
``CVAT_INSECURE`` say where and how (:mod:`cvat_argo.cvat.connection` owns these rules and cvat-cli's
flags). In the cluster they come from the ``cvat-credentials`` Secret. Credentials never appear in
messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import CvatArgoError, DatasetError, TransientError

EXPORT_FORMAT = "CVAT for images 1.1"
# A frame counts as annotated, even without shapes, once a person finished or reviews its job.
REVIEWED_STAGES = ("validation", "acceptance")


def connect(env: Mapping[str, str] | None = None, *, needs: str = "a live CVAT task"):
    """A logged-in cvat-sdk client for the server ``env`` names (see :mod:`cvat_argo.cvat.connection`)."""
    from .connection import require

    return require(env).connect(needs)


def readable_error(exc: Exception, host: str, what: str) -> CvatArgoError:
    """One line for a failed CVAT request, typed so the engines retry only what may pass next time."""
    status = getattr(exc, "status", None)
    if isinstance(exc, CvatArgoError):
        return exc
    tls = _tls_failure(exc)
    if tls:
        bare = host.split("://", 1)[-1]
        hint = (f"the server speaks plain HTTP: set CVAT_HOST=http://{bare}" if tls == "WRONG_VERSION_NUMBER"
                else "give the CA that signed the server's certificate (--ca-bundle FILE or CVAT_CA_BUNDLE), or "
                "skip the check for a self-signed server (--insecure or CVAT_INSECURE=1)"
                if tls == "CERTIFICATE_VERIFY_FAILED"
                else f"check the server's certificate, or set CVAT_HOST=http://{bare} if it speaks plain HTTP")
        return CvatArgoError(f"CVAT at {host}: {what} failed in the TLS handshake ({tls}): {hint}")
    if type(exc).__name__ == "BackgroundRequestException":  # the server ran the export and it failed there
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        said = f": {lines[-1]}" if lines else ""
        return TransientError(f"CVAT at {host}: {what} failed on the server{said}: will retry")
    if status in (401, 403):
        return CvatArgoError(f"CVAT at {host} refused {what} (HTTP {status}): check CVAT_ACCESS_TOKEN or "
                             "CVAT_USERNAME/CVAT_PASSWORD (--auth), the user's rights on the task and the "
                             "organization (--org, CVAT_ORG)")
    if status == 404 and "organization does not exist" in str(getattr(exc, "body", "") or ""):
        # CVAT's answer to an X-Organization slug it lacks (cvat/apps/iam: get_organization)
        return CvatArgoError(f"CVAT at {host}: {what}: the server has no such organization (HTTP 404): check "
                             "--org or CVAT_ORG (the organization's short name; '' for the personal workspace)")
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

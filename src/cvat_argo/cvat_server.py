"""A live CVAT server through cvat-sdk: connect with credentials from the environment, export a task.

``CVAT_HOST`` names the server; ``CVAT_ACCESS_TOKEN`` (a personal access token) or
``CVAT_USERNAME`` + ``CVAT_PASSWORD`` authenticate. In the cluster they come from the
``cvat-credentials`` Secret. Credentials never appear in messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import CvatArgoError, DatasetError, TransientError

EXPORT_FORMAT = "CVAT for images 1.1"
# A frame counts as annotated, even without shapes, once a person finished or reviews its job.
REVIEWED_STAGES = ("validation", "acceptance")


def client_from_env(env: Mapping[str, str] | None = None):
    env = os.environ if env is None else env
    host = env.get("CVAT_HOST")
    if not host:
        raise CvatArgoError("no CVAT server: set CVAT_HOST (and CVAT_ACCESS_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD)")
    try:
        from cvat_sdk import make_client
    except ImportError:
        raise CvatArgoError("a live CVAT task needs cvat-sdk: pip install 'cvat-argo[cvat]'") from None
    token = env.get("CVAT_ACCESS_TOKEN")
    user, password = env.get("CVAT_USERNAME"), env.get("CVAT_PASSWORD")
    if not token and not (user and password):
        raise CvatArgoError(f"no CVAT credentials for {host}: set CVAT_ACCESS_TOKEN, or CVAT_USERNAME and "
                            "CVAT_PASSWORD")
    try:
        if token:
            return make_client(host, access_token=token)
        return make_client(host, credentials=(user, password))
    except Exception as exc:
        raise _readable(exc, host) from None


def _readable(exc: Exception, host: str) -> CvatArgoError:
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return CvatArgoError(f"CVAT at {host} refused the credentials (HTTP {status}): check CVAT_ACCESS_TOKEN or "
                             "CVAT_USERNAME/CVAT_PASSWORD")
    if status == 404:
        return DatasetError(f"CVAT at {host}: not found (HTTP 404)")
    if status is None or status >= 500:
        return TransientError(f"CVAT at {host} did not answer ({type(exc).__name__}): will retry")
    return CvatArgoError(f"CVAT at {host} answered HTTP {status}")


def reviewed_frames(jobs: Iterable[Any]) -> set[int]:
    """Frames of annotation jobs that are completed or in validation/acceptance."""
    frames: set[int] = set()
    for job in jobs:
        if getattr(job, "type", "annotation") not in (None, "annotation"):
            continue
        if str(job.state) == "completed" or str(job.stage) in REVIEWED_STAGES:
            frames.update(range(int(job.start_frame), int(job.stop_frame) + 1))
    return frames


def export_task(task_id: int, dest: Path, env: Mapping[str, str] | None = None) -> tuple[Path, set[int]]:
    """Export the task as CVAT for images 1.1 with images; also return the frames people reviewed."""
    client = client_from_env(env)
    host = client.api_map.host if hasattr(client, "api_map") else "CVAT"
    try:
        task = client.tasks.retrieve(task_id)
        dest.mkdir(parents=True, exist_ok=True)
        archive = dest / f"task-{task_id}.zip"
        task.export_dataset(EXPORT_FORMAT, archive, include_images=True)
        return archive, reviewed_frames(task.get_jobs())
    except CvatArgoError:
        raise
    except Exception as exc:
        raise _readable(exc, str(host)) from None

"""The sha256 of a file, read in chunks: one definition for every place that pins or records a digest.

:func:`cvat_argo.storage.fetch.fetch` checks a download against it, pull caches base checkpoints by it,
and convert and the local engine record it in their manifests. Standard library only, so a step that
needs a digest does not import minio or requests for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks (checkpoints and exports can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

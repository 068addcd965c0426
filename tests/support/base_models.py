"""Base-model archives for the pull-step tests: a checkpoint folder packed as a release would ship it."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path


def checkpoint_archive(checkpoints: Path, path: Path) -> tuple[Path, str]:
    """``checkpoints`` as ``model/checkpoints`` in the .tar.gz ``path``; the archive and its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(checkpoints, arcname="model/checkpoints")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()

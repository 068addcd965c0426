"""Copy checkpoints to the store while training writes them, so a new pod can resume.

An evicted training pod loses its disk. Every few seconds this thread uploads checkpoint files
that appeared or changed in the model folder, data shards and index before the ``checkpoint``
state file that names them, so the store never points at a checkpoint it does not hold. A
restarted step calls :func:`restore` first and Orbit continues from the newest checkpoint.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from ..storage.store import Store

_CHECKPOINT_FILE = re.compile(r"^(ckpt-\d+\.(index|data-\d+-of-\d+)|checkpoint)$")


def _checkpoint_files(model_dir: Path) -> list[Path]:
    files = [p for p in model_dir.iterdir() if p.is_file() and _CHECKPOINT_FILE.match(p.name)]
    return sorted(files, key=lambda p: (p.name == "checkpoint", p.name))  # the state file last


class CheckpointSync:
    def __init__(self, model_dir: Path, store: Store, key: str, interval: float = 15.0):
        self.model_dir, self.store, self.key, self.interval = model_dir, store, key.strip("/"), interval
        self._seen: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-sync", daemon=True)
        self.uploaded = 0

    def __enter__(self) -> CheckpointSync:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sync()  # the final checkpoint, whatever happened

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()

    def sync(self) -> int:
        count = 0
        for path in _checkpoint_files(self.model_dir):
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(path.name) == stamp:
                continue
            self.store.put_file(path, f"{self.key}/{path.name}", overwrite=True)
            self._seen[path.name] = stamp
            count += 1
        self.uploaded += count
        return count


def restore(store: Store, key: str, model_dir: Path) -> int:
    """Bring back the checkpoints an earlier attempt uploaded; returns how many files."""
    key = key.strip("/")
    names = [n for n in store.list(key) if _CHECKPOINT_FILE.match(n)]
    if "checkpoint" not in names:
        return 0
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        store.get_file(f"{key}/{name}", model_dir / name)
    return len(names)

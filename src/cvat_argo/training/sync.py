"""Copy checkpoints to the store while training writes them, so a new pod can resume.

An evicted training pod loses its disk. Every few seconds this thread uploads checkpoint files
that appeared or changed in the model folder, data shards and index before the ``checkpoint``
state file that names them, so the store never points at a checkpoint it does not hold. The
TensorBoard event files of the training and validation runs (``train/``, ``validation/``) go along,
so a retried pod's TensorBoard, ``metrics.json`` and plot show the whole run, not just its own part. A
restarted step calls :func:`restore` first and Orbit continues from the newest checkpoint.

The store can be away for a while (a MinIO restart, a network blip, a throttling S3): a failed
sync never stops the thread or the training. It retries with exponential back-off (``retry_delay``
doubling up to ``max_delay``), logs one line when a failure streak starts and one when it ends, and
picks up everything it missed, because a file counts as stored only once its upload succeeded.
urllib3's own "Retrying ..." warnings from the syncing threads are dropped while the sync runs (the
store retries each request a few times), so an outage costs two lines of log, not a screenful.

Leaving the ``with`` block runs the last sync and checks it: the newest checkpoint (the one the
state file names, with its index and data shards) must be listed in the store. If the store is
still away after ``final_timeout`` seconds of retries, :class:`~cvat_argo.errors.TransientError`
(exit 75) fails the step, so Argo retries it and the new pod resumes from the store, instead of the
step claiming success with a store that holds an older checkpoint than the one it reports. A
permanent store error (refused credentials) fails at once with its own message. When the training
itself failed, the last sync is one best-effort attempt and the training's error is what propagates.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ..engines import artifacts
from ..errors import CvatArgoError, TransientError, one_line
from ..storage.store import Store

log = logging.getLogger(__name__)

_CHECKPOINT_FILE = re.compile(r"^(ckpt-\d+\.(index|data-\d+-of-\d+)|checkpoint)$")
_STATE_FILE = "checkpoint"  # TensorFlow's state file: names the newest checkpoint prefix
_NEWEST = re.compile(r'^model_checkpoint_path:\s*"([^"]*)"', re.MULTILINE)
#: The event files Orbit writes (and appends to) in the model folder's TensorBoard run folders.
_EVENT_FOLDERS = (artifacts.TRAIN_EVENTS, artifacts.VALIDATION_EVENTS)
_EVENT_FILE = re.compile(rf"^({'|'.join(map(re.escape, _EVENT_FOLDERS))})/events\.out\.tfevents\.[^/]+$")


def _checkpoint_files(model_dir: Path) -> list[Path]:
    if not model_dir.is_dir():  # training has not created it yet
        return []
    files = [p for p in model_dir.iterdir() if p.is_file() and _CHECKPOINT_FILE.match(p.name)]
    return sorted(files, key=lambda p: (p.name == "checkpoint", p.name))  # the state file last


def _event_files(model_dir: Path) -> list[str]:
    """The TensorBoard event files under the model folder, as names relative to it (``train/events...``)."""
    return sorted(f"{folder}/{p.name}" for folder in _EVENT_FOLDERS if (model_dir / folder).is_dir()
                  for p in (model_dir / folder).iterdir() if p.is_file() and _EVENT_FILE.match(f"{folder}/{p.name}"))


class _QuietRetries(logging.Filter):
    """Drops urllib3's per-request "Retrying" warnings logged by the threads in ``threads``."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.thread in self.threads and str(record.msg).startswith("Retrying"))



class CheckpointSync:
    """Upload new checkpoint files every ``interval`` seconds in a thread; see the module docstring."""

    def __init__(self, model_dir: Path, store: Store, key: str, interval: float = 15.0, *,
                 retry_delay: float = 1.0, max_delay: float = 60.0, final_timeout: float = 120.0):
        self.model_dir, self.store, self.key, self.interval = model_dir, store, key.strip("/"), interval
        self.retry_delay, self.max_delay, self.final_timeout = retry_delay, max(max_delay, retry_delay), final_timeout
        self._seen: dict[str, tuple[int, int]] = {}
        self._state_sent: bytes | None = None  # the state file as last uploaded
        self._scratch: Path | None = None  # where the state file is copied before it is uploaded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-sync", daemon=True)
        self.uploaded = 0
        self.failures = 0  # failed sync attempts, all streaks together
        self.last_error: BaseException | None = None
        self._streak = 0  # failed attempts since the last success
        self._streak_started = 0.0
        self._quiet = _QuietRetries()

    def __enter__(self) -> CheckpointSync:
        logging.getLogger("urllib3.connectionpool").addFilter(self._quiet)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._quiet.threads.add(threading.get_ident())
        try:
            if exc_type is None:
                self.finish()
            else:  # the training failed: one try for the newest checkpoint, and its error is what counts
                try:
                    self.sync()
                except Exception as exc:
                    log.warning("last checkpoint sync to %s failed too: %s", self.store.uri(self.key), one_line(exc))
        finally:
            logging.getLogger("urllib3.connectionpool").removeFilter(self._quiet)
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)

    # -- the background thread -------------------------------------------------------------------

    def _loop(self) -> None:
        self._quiet.threads.add(threading.get_ident())
        delay = self.interval
        try:
            while not self._stop.wait(delay):
                delay = self._attempt()
        except BaseException as exc:  # nothing in _attempt should get here; if it does, say so
            log.error("checkpoint sync thread stopped: %s; the last sync runs when training ends", one_line(exc))
            raise

    def _attempt(self) -> float:
        """One sync in the thread; returns the seconds to wait before the next one."""
        try:
            self.sync()
        except Exception as exc:  # any failure: the thread goes on, training is never stopped by it
            self._failed(exc)
            return min(self.retry_delay * 2 ** (self._streak - 1), self.max_delay)
        self._succeeded()
        return self.interval

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = exc
        self._streak += 1
        if self._streak == 1:
            self._streak_started = time.monotonic()
            log.warning("checkpoint sync to %s failed: %s; training goes on, retrying with back-off up to %g s "
                        "(quietly, until it recovers)", self.store.uri(self.key), one_line(exc), self.max_delay)

    def _succeeded(self) -> None:
        if self._streak:
            log.warning("checkpoint sync to %s works again after %d failed attempts over %.0f s; it caught up",
                        self.store.uri(self.key), self._streak, time.monotonic() - self._streak_started)
        self._streak = 0

    # -- syncing ---------------------------------------------------------------------------------

    def sync(self) -> int:
        """Upload checkpoint files that are new or changed since their last successful upload; returns how many.

        The state file is read first and uploaded last, as it was read: the files it names were
        written before it, so the store never names a checkpoint it does not hold, even when training
        writes a newer one during the upload. The first failure raises, and nothing after it is
        uploaded (least of all the state file); the next call starts over with what is still missing.
        """
        state = self._read_state()
        count = 0
        names = [*_event_files(self.model_dir),
                 *(p.name for p in _checkpoint_files(self.model_dir) if p.name != _STATE_FILE)]
        for name in names:
            path = self.model_dir / name
            try:
                stat = path.stat()
            except FileNotFoundError:  # an old checkpoint the manager removed (max_to_keep) since the listing
                continue
            stamp = (stat.st_size, stat.st_mtime_ns)  # event files grow: each new size is uploaded again
            if self._seen.get(name) == stamp:
                continue
            try:
                self.store.put_file(path, f"{self.key}/{name}", overwrite=True)
            except CvatArgoError:
                if not path.exists():  # removed while it was uploading: nothing to keep
                    continue
                raise
            self._seen[name] = stamp
            count += 1
        if state is not None and state != self._state_sent:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="checkpoint-sync-"))
            copy = self._scratch / _STATE_FILE
            copy.write_bytes(state)
            self.store.put_file(copy, f"{self.key}/{_STATE_FILE}", overwrite=True)
            self._state_sent = state
            count += 1
        self.uploaded += count
        return count

    def _read_state(self) -> bytes | None:
        try:
            return (self.model_dir / _STATE_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def newest_files(self) -> list[str]:
        """The state file and the files of the checkpoint it names, as they are in the model folder now."""
        state = self._read_state()
        if state is None:
            return []
        match = _NEWEST.search(state.decode("utf-8", errors="replace"))
        prefix = match.group(1).replace("\\", "/").rsplit("/", 1)[-1] if match else ""
        files = [p.name for p in _checkpoint_files(self.model_dir)
                 if prefix and p.name.startswith(f"{prefix}.") and p.name != _STATE_FILE]
        return [*sorted(files), _STATE_FILE]

    def finish(self) -> None:
        """The last sync, checked: the newest checkpoint must be in the store (see the module docstring).

        Transient failures are retried with back-off for up to ``final_timeout`` seconds, then raise
        :class:`TransientError`; a permanent store error raises at once.
        """
        started = time.monotonic()
        delay = self.retry_delay
        attempts = 0
        while True:
            attempts += 1
            try:
                self.sync()
                wanted = self.newest_files()
                stored = set(self.store.list(self.key)) if wanted else set()
                missing = [name for name in wanted if name not in stored]
                if not missing:
                    self._succeeded()
                    return
                for name in missing:  # upload them again on the next attempt
                    self._seen.pop(name, None)
                    if name == _STATE_FILE:
                        self._state_sent = None
                problem: BaseException = TransientError(f"{', '.join(missing)} not listed in the store after upload")
            except TransientError as exc:
                problem = exc
            self._failed(problem)
            elapsed = time.monotonic() - started
            if elapsed + delay > self.final_timeout:
                newest = next((n.rsplit(".", 1)[0] for n in self.newest_files() if n != _STATE_FILE), "checkpoint")
                raise TransientError(
                    f"checkpoint sync: the newest checkpoint {newest} did not reach {self.store.uri(self.key)} in "
                    f"{attempts} attempts over {elapsed:.0f} s (last: {one_line(problem)}); failing the step so that "
                    "it is retried and resumes from the store, not from an older checkpoint"
                ) from problem
            time.sleep(delay)
            delay = min(delay * 2, self.max_delay)


def restore(store: Store, key: str, model_dir: Path) -> int:
    """Bring back the checkpoints and TensorBoard event files an earlier attempt uploaded; returns how many files."""
    key = key.strip("/")
    stored = store.list(key)
    if _STATE_FILE not in stored:
        return 0
    names = [n for n in stored if _CHECKPOINT_FILE.match(n) or _EVENT_FILE.match(n)]
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        store.get_file(f"{key}/{name}", model_dir / name)
    return len(names)

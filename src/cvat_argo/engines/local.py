"""The local engine: the pipeline declaration run on this machine, no cluster needed.

Each stage is the same ``python -m cvat_argo.steps.<module>`` command with the same arguments that
the Argo container gets, run as a subprocess in dependency order (independent stages at the same
time). Artifacts live in ``<store>/<run-id>/<stage>/<artifact>``; with an ``s3://bucket/prefix``
store they are also uploaded under ``<prefix>/<run-id>/<stage>/<artifact>``, the key layout Argo uses,
and training checkpoints go under the same prefix.

The engine supervises its stages:

- A stage is complete only when its outputs are in the store and its ``manifest.json`` (the size and
  checksum of every output file, and the digests of its inputs) was written after them, atomically.
  ``--resume RUN_ID`` skips a stage only when its outputs still match and its inputs are the ones it
  was made from, so a re-trained model is converted and used again; an interrupted training
  continues from its newest checkpoint.
- Any exception while running a stage fails that stage with its cause in one line; the engine never
  waits on a dead worker. The first failure stops the run at once: the stages running beside it are
  stopped (not left to finish or retry) and nothing finished is deleted; the error names the failed
  stage, its exit code, the tail of its log and the log's path. The engine exits 75 when that failure
  was transient (an outage), so a caller may retry.
- Stage processes run in their own process group and die with the engine: SIGTERM and SIGINT stop
  them, record ``status.json`` and the report, and exit 143 or 130; on Linux the kernel kills them if
  the engine is killed outright (``PR_SET_PDEATHSIG``, see :func:`cvat_argo.entry.die_with_engine`).
- A run folder belongs to one engine at a time (a lock file), and a run id names one request for
  ever: the same id with the same request is a resume, with another request a refusal.

Like Argo's exit handler, ``record-status`` runs at the end whatever happened.

A stage's output goes to its ``log.txt`` only; a person sees its progress events instead (each stage
gets ``CVAT_ARGO_EVENTS``, the ``events.jsonl`` in its folder), drawn by :class:`.console.Reporter`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..entry import ENGINE_PID_ENV
from ..errors import CvatArgoError, StageFailed, StageStopped, TransientError, one_line
from ..progress import EVENTS_ENV, STAGE_ENV, EventTail
from ..request.catalog import Catalog, ResolvedRequest, resolve_request
from ..request.spec import TrainingRequest
from ..storage.digest import file_sha256
from ..storage.store import S3Store, store_from_url
from . import artifacts, preflight
from .console import Reporter
from .pipeline import PLACEHOLDER, TRANSIENT_EXIT_CODE, Pipeline, Stage, build_pipeline

TAIL_LINES = 20
#: Run ids become folder names and store keys: letters, digits, ``.``, ``_`` and ``-``, no leading dot.
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LOCK_FILE = ".engine.lock"
STOP_GRACE_SECONDS = 5.0
EXIT_ON_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class StageResult:
    name: str
    status: str  # "succeeded", "skipped" (resumed), "failed", "stopped" (another stage failed), "not run"
    seconds: float = 0.0
    exit_code: int | None = None
    attempts: int = 0
    tail: list[str] = field(default_factory=list)
    error: str = ""  # the cause, in one line, when the engine itself failed the stage (not the step)


@dataclass
class LocalRun:
    """A run folder: where each stage's artifacts and log go, and what the placeholders mean here."""

    run_id: str
    root: Path
    pipeline: Pipeline
    store_url: str
    results: dict[str, StageResult] = field(default_factory=dict)
    resumed: bool = False  # an existing run folder: finished stages are checked and kept
    stopped_by: int | None = None  # the signal that stopped the run, if one did

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def output_path(self, stage: Stage, artifact: str) -> Path:
        return artifacts.artifact_path(self.root, stage.name, artifact)

    def input_path(self, stage: Stage, name: str) -> Path:
        source = next(a for a in stage.inputs if a.name == name)
        return artifacts.artifact_path(self.root, source.stage, source.artifact)

    def artifact(self, artifact: str) -> Path:
        """Where the stage that produces ``artifact`` writes it in this run folder."""
        return self.output_path(self.pipeline.producer(artifact), artifact)

    def artifact_link(self, artifact: str, *files: str) -> str:
        """A file of ``artifact`` relative to the run folder, for links in the run's report."""
        return artifacts.relative_link(self.pipeline.producer(artifact).name, artifact, *files)

    def store_parameters(self) -> dict[str, str]:
        """Where keys the steps write go: under an ``s3://bucket/prefix`` store's prefix, or in the runs folder.

        For a folder store the prefix is the runs folder itself (``<runs>/<run-id>/<stage>/<artifact>``
        is then literally the key layout), so what outlives one run (the upload ledgers) sits beside the runs.
        """
        if not self.store_url.startswith("s3://"):
            return {"output-prefix": str(Path(self.store_url).resolve())}
        return {"output-prefix": self.store_url.removeprefix("s3://").partition("/")[2].strip("/")}

    def resolve(self, stage: Stage, status: str = "Running", failures: str = "") -> list[str]:
        """The stage's command with this run's values and paths in place of the placeholders."""
        values = {**self.pipeline.parameter_values(), **self.store_parameters()}
        run_fields = {"name": self.run_id, "status": status, "failures": failures}

        def fill(match) -> str:
            kind, name = match.group(1), match.group(2)
            if kind == "param":
                return values[name]
            if kind == "input":
                return str(self.input_path(stage, name))
            if kind == "output":
                return str(self.output_path(stage, name))
            return run_fields[name]

        return [sys.executable if part == "python" and i == 0 else PLACEHOLDER.sub(fill, part)
                for i, part in enumerate(stage.command)]


def new_run_id(request: TrainingRequest) -> str:
    """``<model>-<UTC time>-<4 hex>``: sortable by time, unique enough for one store."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{request.model}-{stamp}-{secrets.token_hex(2)}"


def write_manifest(run: LocalRun, stage: Stage, seconds: float) -> None:
    files = {}
    for artifact in stage.outputs:
        root = run.output_path(stage, artifact)
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            files[path.relative_to(run.stage_dir(stage.name)).as_posix()] = {
                "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    artifacts.StageManifest(stage=stage.name, seconds=round(seconds, 1), files=files,
                            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            inputs=input_digests(run, stage)).write(run.stage_dir(stage.name))


def input_digests(run: LocalRun, stage: Stage) -> dict[str, str]:
    """For each input artifact, a digest of the files its producer's manifest lists for it."""
    digests = {}
    for source in stage.inputs:
        try:
            produced = artifacts.StageManifest.read_if_present(run.stage_dir(source.stage))
        except CvatArgoError:
            produced = None
        prefix = f"{source.artifact}/"
        listed = sorted((name, entry["sha256"]) for name, entry in (produced.files if produced else {}).items()
                        if name == source.artifact or name.startswith(prefix))
        digests[source.name] = hashlib.sha256(json.dumps(listed).encode()).hexdigest()
    return digests


def manifest_problem(run: LocalRun, stage: Stage) -> str | None:
    """Why a stage's finished outputs cannot be reused; None when they and the inputs they came from still match."""
    try:
        manifest = artifacts.StageManifest.read_if_present(run.stage_dir(stage.name))
    except CvatArgoError:
        return f"{artifacts.STAGE_MANIFEST} is unreadable"
    if manifest is None:
        return "not finished"
    for relative, expected in manifest.files.items():
        file = run.stage_dir(stage.name) / relative
        if not file.is_file():
            return f"{relative} is missing"
        if file.stat().st_size != expected["bytes"] or file_sha256(file) != expected["sha256"]:
            return f"{relative} changed"
    current = input_digests(run, stage)
    changed = [name for name, digest in current.items() if manifest.inputs.get(name) != digest]
    if changed:
        return f"its input {', '.join(changed)} changed since it ran"
    return None


class Supervisor:
    """The stage processes of one run: each in its own process group, stopped together on a signal."""

    def __init__(self) -> None:
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()  # cuts a retry's back-off short when the run stops
        self.stopping: int | None = None  # the signal that stops the run
        self.cancelled = ""  # why the stages still running were stopped: another stage failed for good

    def start(self, command: list[str], env: Mapping[str, str]) -> subprocess.Popen:
        with self._lock:
            if self.stopping is not None:
                raise StageStopped(f"not started: the run is stopping ({signal.Signals(self.stopping).name})")
            if self.cancelled:
                raise StageStopped(f"not started: {self.cancelled}")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env={**env, ENGINE_PID_ENV: str(os.getpid())}, bufsize=1,
                                       errors="replace", start_new_session=True)
            self._processes.add(process)
            return process

    def finished(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(process)

    def stop(self, signum: int, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM every stage's process group, then SIGKILL what is still there after ``grace`` seconds."""
        with self._lock:
            self.stopping = signum
            processes = list(self._processes)
        self._terminate(processes, grace)

    def cancel(self, reason: str, grace: float = STOP_GRACE_SECONDS) -> None:
        """A stage failed for good: stop the others now (their retries could only delay the report)."""
        with self._lock:
            if self.cancelled or self.stopping is not None:
                return
            self.cancelled = reason
            processes = list(self._processes)
        self._terminate(processes, grace)

    def pause(self, seconds: float) -> None:
        """A retry's back-off, cut short when the run stops or is cancelled."""
        self._wake.wait(seconds)

    def _terminate(self, processes: list[subprocess.Popen], grace: float) -> None:
        self._wake.set()
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


class StageProcess:
    """One stage's subprocess: its log file, the last lines for errors, and its progress events."""

    def __init__(self, run: LocalRun, stage: Stage, env: Mapping[str, str], status: str = "Running",
                 failures: str = "", supervisor: Supervisor | None = None):
        self.run, self.stage = run, stage
        self.command = run.resolve(stage, status, failures)
        self.env = dict(env)
        self.supervisor = supervisor or Supervisor()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.log_path = run.stage_dir(stage.name) / artifacts.STAGE_LOG
        events_path = run.stage_dir(stage.name) / artifacts.STAGE_EVENTS
        self.env.update({EVENTS_ENV: str(events_path.resolve()), STAGE_ENV: stage.name})
        self.events = EventTail(events_path)  # what this attempt reports, not an earlier attempt's events

    def execute(self) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(self.command)}\n")
            log.flush()
            process = self.supervisor.start(self.command, self.env)
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    log.write(line)
                    log.flush()
                    text = line.rstrip()
                    if text:
                        self.tail.append(text)
                return process.wait()
            finally:
                if process.poll() is None:  # the engine failed while reading: the stage goes with it
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                self.supervisor.finished(process)


def _step_env(run: LocalRun) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["TF_CPP_MIN_LOG_LEVEL"] = env.get("TF_CPP_MIN_LOG_LEVEL", "2")
    if run.store_url.startswith("s3://"):
        env["CVAT_ARGO_STORE"] = "s3://" + run.store_url.removeprefix("s3://").split("/", 1)[0]
    else:
        env.pop("CVAT_ARGO_STORE", None)  # a local run resumes from its own folders
    return env


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def _upload(run: LocalRun, stage: Stage) -> None:
    store = store_from_url(run.store_url)
    if not isinstance(store, S3Store):
        return
    for artifact in stage.outputs:
        key = artifacts.artifact_key("", run.run_id, stage.name, artifact)
        local = run.output_path(stage, artifact)
        if local.is_dir():
            store.put_dir(local, key, overwrite=True)
        elif local.is_file():
            store.put_file(local, key, overwrite=True)



def _run_stage(run: LocalRun, stage: Stage, env: Mapping[str, str], reporter: Reporter,
               running: dict[str, tuple[StageProcess, float]], supervisor: Supervisor) -> StageResult:
    outputs = [run.output_path(stage, a) for a in stage.outputs]
    if not stage.resumable:
        for path in outputs:  # an unfinished earlier attempt: not an output anyone relies on
            shutil.rmtree(path, ignore_errors=True)
    (run.stage_dir(stage.name) / artifacts.STAGE_MANIFEST).unlink(missing_ok=True)
    limit = stage.retry.limit if stage.retry else 0
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        process = StageProcess(run, stage, env, supervisor=supervisor)
        running[stage.name] = (process, time.monotonic())
        try:
            code = process.execute()
            if code == 0:
                _upload(run, stage)  # the outputs are in the store before the manifest says the stage is done
                seconds = time.monotonic() - started
                write_manifest(run, stage, seconds)
                return StageResult(stage.name, "succeeded", seconds, 0, attempt)
            error = ""
        except TransientError as exc:  # the store went away while the outputs were uploaded
            code, error = TRANSIENT_EXIT_CODE, one_line(exc)
        finally:
            running.pop(stage.name, None)
        if supervisor.stopping is not None:
            return StageResult(stage.name, "failed", time.monotonic() - started, code, attempt, list(process.tail),
                               f"stopped by {signal.Signals(supervisor.stopping).name}")
        if supervisor.cancelled:
            return StageResult(stage.name, "stopped", time.monotonic() - started, code, attempt, list(process.tail),
                               supervisor.cancelled)
        if code == TRANSIENT_EXIT_CODE and attempt <= limit:
            wait = min(2 ** attempt, 30)
            reporter.say(f"{stage.name}: transient failure ({error or f'exit {code}'}), retry {attempt}/{limit} "
                         f"in {wait} s")
            supervisor.pause(wait)
            if supervisor.cancelled:
                return StageResult(stage.name, "stopped", time.monotonic() - started, code, attempt,
                                   list(process.tail), supervisor.cancelled)
            if not stage.resumable:
                for path in outputs:
                    shutil.rmtree(path, ignore_errors=True)
            continue
        return StageResult(stage.name, "failed", time.monotonic() - started, code, attempt, list(process.tail), error)


@contextlib.contextmanager
def _run_lock(root: Path):
    """One engine per run folder: a second one refuses in one line instead of sharing the stages' folders."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CvatArgoError(f"run {root.name} is being run by another engine ({holder}): wait for it to end, "
                                "or stop it, before resuming") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _stop_on_signals(supervisor: Supervisor, reporter: Reporter):
    """SIGTERM and SIGINT stop the stages (in the main thread only, where Python can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame) -> None:
        if supervisor.stopping is None:
            reporter.say(f"{signal.Signals(signum).name}: stopping the running stages")
            threading.Thread(target=supervisor.stop, args=(signum,), daemon=True).start()

    previous = {signum: signal.signal(signum, handler) for signum in EXIT_ON_SIGNAL}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def execute(run: LocalRun, *, reporter: Reporter | None = None, resume: bool = False,
            on_stage_done: Callable[[StageResult], None] | None = None) -> dict[str, StageResult]:
    """Run every stage in dependency order, independent ones in parallel; then the exit step."""
    reporter = reporter or Reporter()
    supervisor = Supervisor()
    with _run_lock(run.root), _stop_on_signals(supervisor, reporter):
        try:
            done = _schedule(run, reporter, supervisor, resume, on_stage_done)
        finally:
            reporter.close()
        run.results = done
        run.stopped_by = supervisor.stopping
        _exit_step(run, _step_env(run), done)
    return done


def _schedule(run: LocalRun, reporter: Reporter, supervisor: Supervisor, resume: bool,
              on_stage_done: Callable[[StageResult], None] | None) -> dict[str, StageResult]:
    env = _step_env(run)
    pending = list(run.pipeline.topological_order())
    done: dict[str, StageResult] = {}
    running: dict[str, tuple[StageProcess, float]] = {}
    threads: dict[str, threading.Thread] = {}
    lock = threading.Lock()

    def worker(stage: Stage) -> None:
        try:
            result = _run_stage(run, stage, env, reporter, running, supervisor)
        except Exception as exc:  # the engine's own failure (a full disk, a bug): the stage fails, the run goes on
            result = StageResult(stage.name, "failed", exit_code=None, error=one_line(exc))
        with lock:
            done[stage.name] = result
        verb = {"succeeded": "finished", "stopped": f"stopped ({result.error})"}.get(
            result.status, f"FAILED ({result.error or f'exit {result.exit_code}'})")
        reporter.say(f"{stage.name} {verb} in {_clock(result.seconds)}")
        if result.status == "failed":  # the run has failed: the stages beside this one stop at once
            supervisor.cancel(f"{stage.name} failed")
        if on_stage_done:
            on_stage_done(result)

    while pending or threads:
        with lock:
            failed = next((r for r in done.values() if r.status == "failed"), None)
        if failed is None and supervisor.stopping is None:
            for stage in list(pending):
                if not all(done.get(d) and done[d].status in ("succeeded", "skipped") for d in stage.depends):
                    continue
                pending.remove(stage)
                problem = manifest_problem(run, stage) if resume else "not resumed"
                if problem is None:
                    done[stage.name] = StageResult(stage.name, "skipped")
                    reporter.say(f"{stage.name}: outputs complete and unchanged, skipped")
                    continue
                if resume:
                    reporter.say(f"{stage.name}: runs again ({problem})")
                reporter.say(f"{stage.name} started ({' '.join(stage.command[2:3])})")
                thread = threading.Thread(target=worker, args=(stage,), name=stage.name, daemon=True)
                threads[stage.name] = thread
                thread.start()
        elif not threads:
            break
        for name, thread in list(threads.items()):
            if not thread.is_alive():
                thread.join()
                threads.pop(name)
                with lock:  # a worker cannot die without a result, but the engine never waits on one that did
                    done.setdefault(name, StageResult(name, "failed", error="the engine's worker ended without "
                                                                               "a result"))
        reporter.live([(name, process.events, started) for name, (process, started) in list(running.items())])
        time.sleep(0.2)
    for stage in pending:
        done.setdefault(stage.name, StageResult(stage.name, "not run"))
    return done


def _exit_step(run: LocalRun, env: Mapping[str, str], done: Mapping[str, StageResult]) -> None:
    failures = [{"displayName": r.name, "templateName": r.name, "phase": "Failed",
                 "message": r.error or f"exit code {r.exit_code}"} for r in done.values() if r.status == "failed"]
    status = "Failed" if failures else "Succeeded"
    stage = run.pipeline.exit_stage
    shutil.rmtree(run.stage_dir(stage.name), ignore_errors=True)
    StageProcess(run, stage, env, status=status, failures=json.dumps(failures)).execute()


def failure_message(run: LocalRun, result: StageResult) -> str:
    log = run.stage_dir(result.name) / artifacts.STAGE_LOG
    resume = f"finished stages are kept; continue with: python -m cvat_argo run --resume {run.run_id}"
    if result.error and not result.tail:
        return f"stage {result.name} failed: {result.error}\nlog: {log}\n{resume}"
    tail = "\n".join(f"    {line}" for line in result.tail)
    cause = f": {result.error}" if result.error else ""
    return (f"stage {result.name} failed with exit code {result.exit_code} after {result.attempts} attempt(s)"
            f"{cause}; last lines of its log:\n{tail}\nfull log: {log}\n{resume}")


def check_run_id(run_id: str) -> str:
    """A run id is a folder name and a store key: refuse anything that could leave the store."""
    if not RUN_ID.fullmatch(run_id):
        shown = run_id if len(run_id) <= 60 else run_id[:57] + "..."
        raise CvatArgoError(f"run id {shown!r} is not allowed: use letters, digits, '.', '_' and '-' (at most 100, "
                            "not starting with '.' or '-')")
    return run_id


def prepare(request: TrainingRequest | ResolvedRequest, *, store: str = "runs", run_id: str | None = None,
            catalog: Catalog | None = None) -> LocalRun:
    """A new run folder for ``request``; an existing run with the same id and request is resumed instead.

    A run id names one request for ever: reusing it for another request would mix two runs' data and
    checkpoints, so that is refused.
    """
    resolved = resolve_request(request, catalog)
    pipeline = build_pipeline(resolved)
    run_id = check_run_id(run_id or new_run_id(resolved.request))
    root = _run_root(store, run_id)
    saved = root / artifacts.RUN_REQUEST
    if saved.exists():
        existing = _saved_request(root, run_id)
        if existing != resolved.request:
            raise CvatArgoError(
                f"run {run_id} already exists in {root.parent} for another request (model {existing.model}, "
                f"arguments {existing.arguments.to_string() or 'defaults'}, source {existing.source.describe()}): "
                f"pick a new --run-id, or continue that run with --resume {run_id}")
        return LocalRun(run_id=run_id, root=root, pipeline=pipeline, store_url=store, resumed=True)
    if root.exists() and any(root.iterdir()):
        raise CvatArgoError(f"{root} exists and is not a run folder (no {artifacts.RUN_REQUEST}): pick a new --run-id")
    root.mkdir(parents=True, exist_ok=True)
    artifacts.write_text(saved, resolved.request.model_dump_json(indent=1) + "\n")
    return LocalRun(run_id=run_id, root=root, pipeline=pipeline, store_url=store)


def _run_root(store: str, run_id: str) -> Path:
    if store.startswith("s3://"):
        return Path("runs") / run_id  # work folder; the store gets the same layout
    return Path(store) / run_id


def _saved_request(root: Path, run_id: str) -> TrainingRequest:
    saved = root / artifacts.RUN_REQUEST
    try:
        return TrainingRequest.model_validate_json(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise CvatArgoError(f"{saved}: run {run_id}'s request cannot be read ({first}); start a new run") from None


def reopen(run_id: str, *, store: str = "runs", catalog: Catalog | None = None) -> LocalRun:
    root = _run_root(store, check_run_id(run_id))
    if not (root / artifacts.RUN_REQUEST).exists():
        raise CvatArgoError(
            f"no run {run_id} in {root.parent} (no {artifacts.RUN_REQUEST}): check the run id and --store")
    request = _saved_request(root, run_id)
    return LocalRun(run_id=run_id, root=root, pipeline=build_pipeline(request, catalog), store_url=store,
                    resumed=True)


@dataclass(frozen=True)
class EarlierModel:
    """The trained model of an earlier run, as the next round's base checkpoint (``run --from-run``)."""

    run_id: str
    uri: str  # what pull-base-model fetches: the run's train/model folder (a path or an s3:// folder)
    model: str  # the catalog model it trained


def earlier_model(run_id: str, *, store: str = "runs") -> EarlierModel:
    """Where run ``run_id`` keeps its trained model; refused in one line unless its train stage finished."""
    check_run_id(run_id)
    if store.startswith("s3://"):
        runs = store_from_url(store)
        key = artifacts.artifact_key("", run_id, artifacts.TRAIN, artifacts.MODEL)
        if not runs.exists(f"{key}/{artifacts.MODEL_MANIFEST}"):
            raise CvatArgoError(f"--from-run {run_id}: {store} holds no trained model of that run ({key}/"
                                f"{artifacts.MODEL_MANIFEST} is missing): check the run id and --store")
        with tempfile.TemporaryDirectory(prefix="cvat-argo-from-run-") as work:
            runs.get_file(f"{key}/{artifacts.MODEL_MANIFEST}", Path(work) / artifacts.MODEL_MANIFEST)
            trained = artifacts.TrainedModelManifest.read(Path(work))
        return EarlierModel(run_id, f"{store.rstrip('/')}/{key}/", trained.model)
    run = reopen(run_id, store=store)
    problem = manifest_problem(run, run.pipeline.stage(artifacts.TRAIN))
    if problem is not None:
        state = problem if problem == "not finished" else f"not usable ({problem})"
        raise CvatArgoError(f"--from-run {run_id}: its train stage is {state}; finish it first "
                            f"(python -m cvat_argo run --resume {run_id})")
    folder = run.artifact(artifacts.MODEL)
    trained = artifacts.TrainedModelManifest.read(folder)
    return EarlierModel(run_id, str(folder.resolve()), trained.model)


def summary_of(run: LocalRun) -> dict[str, Any]:
    return {name: {"status": r.status, "seconds": round(r.seconds, 1), "exit_code": r.exit_code}
            for name, r in run.results.items()}


def run_locally(request: TrainingRequest | ResolvedRequest | None = None, *, store: str = "runs",
                run_id: str | None = None, resume: str | None = None, catalog: Catalog | None = None) -> LocalRun:
    """Run a request (or ``resume`` a run) here, write its report; raise :class:`StageFailed` on a failed stage.

    The notebook entry point: ``run = cvat_argo.run_locally(request)``, then read ``run.root``.
    :class:`StageFailed` exits 75 when the failure was transient, 130/143 when a signal stopped the run.
    What can be checked before a stage starts (:mod:`.preflight`) is checked before the run has a folder.
    """
    if resume:
        run = reopen(resume, store=store, catalog=catalog)
        preflight.check_run(run.pipeline.resolved.request, store, resumed=True)
    elif request is not None:
        resolved = resolve_request(request, catalog)
        if run_id is not None:
            check_run_id(run_id)
        preflight.check_run(resolved.request, store)
        run = prepare(resolved, store=store, run_id=run_id, catalog=catalog)
    else:
        raise CvatArgoError("give a request to run, or the id of a run to resume")
    return complete(run)


def complete(run: LocalRun) -> LocalRun:
    """Execute a prepared or reopened run and write its report; raise :class:`StageFailed` as ``run_locally``."""
    from ..reports.run import write_run_report

    resolved = run.pipeline.resolved
    print(f"run {run.run_id}: {resolved.model.name}, arguments {resolved.arguments.to_string()}; folder {run.root}"
          + (" (resumed)" if run.resumed else ""), flush=True)
    results = execute(run, resume=run.resumed)
    write_run_report(run)
    if run.stopped_by is not None:
        name = signal.Signals(run.stopped_by).name
        raise StageFailed(f"run {run.run_id} stopped by {name}; finished stages are kept; continue with: "
                          f"python -m cvat_argo run --resume {run.run_id}", exit_code=EXIT_ON_SIGNAL[run.stopped_by])
    failed = next((r for r in results.values() if r.status == "failed"), None)
    if failed is not None:
        transient = failed.exit_code == TRANSIENT_EXIT_CODE
        raise StageFailed(failure_message(run, failed), exit_code=TRANSIENT_EXIT_CODE if transient else None)
    return run

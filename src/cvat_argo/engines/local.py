"""The local engine: the pipeline declaration run on this machine, no cluster needed.

Each stage is the same ``python -m cvat_argo.steps.<module>`` command with the same arguments that
the Argo container gets, run as a subprocess in dependency order (independent stages at the same
time). Artifacts live in ``<store>/<run-id>/<stage>/<artifact>``; with an ``s3://bucket/prefix``
store they are also uploaded under ``<prefix>/<run-id>/<stage>/<artifact>``, the key layout Argo uses.

Every stage logs to ``<run>/<stage>/log.txt``. A finished stage writes ``manifest.json`` with the
checksum of every output file: ``--resume RUN_ID`` skips stages whose outputs still match it, and a
training stage that did not finish continues from its newest checkpoint. A failure names the stage,
its exit code, the tail of its log and the log's path, and stops the run; nothing finished is
deleted. Like Argo's exit handler, ``record-status`` runs at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import CvatArgoError, StageFailed
from ..request.catalog import Catalog, ResolvedRequest, resolve_request
from ..request.spec import TrainingRequest
from ..storage.digest import file_sha256
from ..storage.store import S3Store, store_from_url
from . import artifacts
from .pipeline import PLACEHOLDER, TRANSIENT_EXIT_CODE, Pipeline, Stage, build_pipeline

TAIL_LINES = 20


@dataclass
class StageResult:
    name: str
    status: str  # "succeeded", "skipped" (resumed), "failed", "not run"
    seconds: float = 0.0
    exit_code: int | None = None
    attempts: int = 0
    tail: list[str] = field(default_factory=list)


@dataclass
class LocalRun:
    """A run folder: where each stage's artifacts and log go, and what the placeholders mean here."""

    run_id: str
    root: Path
    pipeline: Pipeline
    store_url: str
    results: dict[str, StageResult] = field(default_factory=dict)

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

    def resolve(self, stage: Stage, status: str = "Running", failures: str = "") -> list[str]:
        """The stage's command with this run's values and paths in place of the placeholders."""
        values = self.pipeline.parameter_values()
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
                            finished=datetime.now(timezone.utc).isoformat(timespec="seconds")
                            ).write(run.stage_dir(stage.name))


def manifest_problem(run: LocalRun, stage: Stage) -> str | None:
    """Why a stage's finished outputs cannot be reused; None when every file still matches."""
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
    return None


class StageProcess:
    """One stage's subprocess: log file, the last lines for errors and the live status line."""

    def __init__(self, run: LocalRun, stage: Stage, env: Mapping[str, str], status: str = "Running",
                 failures: str = ""):
        self.run, self.stage = run, stage
        self.command = run.resolve(stage, status, failures)
        self.env = dict(env)
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.last_line = ""
        self.log_path = run.stage_dir(stage.name) / artifacts.STAGE_LOG

    def execute(self) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(self.command)}\n")
            log.flush()
            process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=self.env, bufsize=1, errors="replace")
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                text = line.rstrip()
                if text:
                    self.tail.append(text)
                    self.last_line = text
            return process.wait()


def _step_env(run: LocalRun) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["TF_CPP_MIN_LOG_LEVEL"] = env.get("TF_CPP_MIN_LOG_LEVEL", "2")
    if run.store_url.startswith("s3://"):
        env["CVAT_ARGO_STORE"] = "s3://" + run.store_url.removeprefix("s3://").split("/", 1)[0]
    else:
        env.pop("CVAT_ARGO_STORE", None)  # a local run resumes from its own folders
    return env


class Reporter:
    """A live line per running stage in a terminal; plain start/finish lines (and a heartbeat) otherwise."""

    def __init__(self, stream=None, heartbeat: float = 30.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.heartbeat = heartbeat
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self.stream.flush()

    def live(self, processes: list[tuple[StageProcess, float]]) -> None:
        now = time.monotonic()
        parts = [f"[{p.stage.name} {_clock(now - started)}] {p.last_line[-70:]}" for p, started in processes]
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K" + "  ".join(parts)[: shutil.get_terminal_size().columns - 1])
                self.stream.flush()
            else:
                for part in parts:
                    self.stream.write(part + "\n")
                self.stream.flush()


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
               running: dict[str, tuple[StageProcess, float]]) -> StageResult:
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
        process = StageProcess(run, stage, env)
        running[stage.name] = (process, time.monotonic())
        code = process.execute()
        running.pop(stage.name, None)
        if code == 0:
            seconds = time.monotonic() - started
            write_manifest(run, stage, seconds)
            _upload(run, stage)
            return StageResult(stage.name, "succeeded", seconds, 0, attempt)
        if code == TRANSIENT_EXIT_CODE and attempt <= limit:
            wait = min(2 ** attempt, 30)
            reporter.say(f"{stage.name}: transient failure (exit {code}), retry {attempt}/{limit} in {wait} s")
            time.sleep(wait)
            if not stage.resumable:
                for path in outputs:
                    shutil.rmtree(path, ignore_errors=True)
            continue
        return StageResult(stage.name, "failed", time.monotonic() - started, code, attempt, list(process.tail))


def execute(run: LocalRun, *, reporter: Reporter | None = None, resume: bool = False,
            on_stage_done: Callable[[StageResult], None] | None = None) -> dict[str, StageResult]:
    """Run every stage in dependency order, independent ones in parallel; then the exit step."""
    reporter = reporter or Reporter()
    env = _step_env(run)
    pipeline = run.pipeline
    pending = [s for s in pipeline.topological_order()]
    done: dict[str, StageResult] = {}
    running: dict[str, tuple[StageProcess, float]] = {}
    threads: dict[str, threading.Thread] = {}
    lock = threading.Lock()
    failed: StageResult | None = None

    def worker(stage: Stage) -> None:
        result = _run_stage(run, stage, env, reporter, running)
        with lock:
            done[stage.name] = result
        verb = "finished" if result.status == "succeeded" else f"FAILED (exit {result.exit_code})"
        reporter.say(f"{stage.name} {verb} in {_clock(result.seconds)}")
        if on_stage_done:
            on_stage_done(result)

    last_beat = time.monotonic()
    while pending or threads:
        with lock:
            failed = next((r for r in done.values() if r.status == "failed"), None)
        if failed is None:
            for stage in list(pending):
                if not all(done.get(d) and done[d].status in ("succeeded", "skipped") for d in stage.depends):
                    continue
                pending.remove(stage)
                problem = manifest_problem(run, stage) if resume else "not resumed"
                if problem is None:
                    done[stage.name] = StageResult(stage.name, "skipped")
                    reporter.say(f"{stage.name}: outputs complete and unchanged, skipped")
                    continue
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
        if time.monotonic() - last_beat >= (1.0 if reporter.tty else reporter.heartbeat) and running:
            reporter.live(list(running.values()))
            last_beat = time.monotonic()
        time.sleep(0.2)
    for stage in pending:
        done.setdefault(stage.name, StageResult(stage.name, "not run"))
    run.results = done
    _exit_step(run, env, done)
    return done


def _exit_step(run: LocalRun, env: Mapping[str, str], done: Mapping[str, StageResult]) -> None:
    failures = [{"displayName": r.name, "templateName": r.name, "phase": "Failed",
                 "message": f"exit code {r.exit_code}"} for r in done.values() if r.status == "failed"]
    status = "Failed" if failures else "Succeeded"
    stage = run.pipeline.exit_stage
    shutil.rmtree(run.stage_dir(stage.name), ignore_errors=True)
    StageProcess(run, stage, env, status=status, failures=json.dumps(failures)).execute()


def failure_message(run: LocalRun, result: StageResult) -> str:
    tail = "\n".join(f"    {line}" for line in result.tail)
    log = run.stage_dir(result.name) / artifacts.STAGE_LOG
    return (f"stage {result.name} failed with exit code {result.exit_code} after {result.attempts} attempt(s); "
            f"last lines of its log:\n{tail}\nfull log: {log}\n"
            f"finished stages are kept; continue with: python -m cvat_argo run --resume {run.run_id}")


def prepare(request: TrainingRequest | ResolvedRequest, *, store: str = "runs", run_id: str | None = None,
            catalog: Catalog | None = None) -> LocalRun:
    resolved = resolve_request(request, catalog)
    pipeline = build_pipeline(resolved)
    run_id = run_id or new_run_id(resolved.request)
    root = _run_root(store, run_id)
    root.mkdir(parents=True, exist_ok=True)
    saved = root / artifacts.RUN_REQUEST
    saved.write_text(resolved.request.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return LocalRun(run_id=run_id, root=root, pipeline=pipeline, store_url=store)


def _run_root(store: str, run_id: str) -> Path:
    if store.startswith("s3://"):
        return Path("runs") / run_id  # work folder; the store gets the same layout
    return Path(store) / run_id


def reopen(run_id: str, *, store: str = "runs", catalog: Catalog | None = None) -> LocalRun:
    root = _run_root(store, run_id)
    saved = root / artifacts.RUN_REQUEST
    if not saved.exists():
        raise CvatArgoError(
            f"no run {run_id} in {root.parent} (no {artifacts.RUN_REQUEST}): check the run id and --store")
    request = TrainingRequest.model_validate_json(saved.read_text(encoding="utf-8"))
    return LocalRun(run_id=run_id, root=root, pipeline=build_pipeline(request, catalog), store_url=store)


def summary_of(run: LocalRun) -> dict[str, Any]:
    return {name: {"status": r.status, "seconds": round(r.seconds, 1), "exit_code": r.exit_code}
            for name, r in run.results.items()}


def run_locally(request: TrainingRequest | ResolvedRequest | None = None, *, store: str = "runs",
                run_id: str | None = None, resume: str | None = None, catalog: Catalog | None = None) -> LocalRun:
    """Run a request (or ``resume`` a run) here, write its report; raise :class:`StageFailed` on a failed stage.

    The notebook entry point: ``run = cvat_argo.run_locally(request)``, then read ``run.root``.
    """
    from ..reports.run import write_run_report

    if resume:
        run = reopen(resume, store=store, catalog=catalog)
    elif request is not None:
        run = prepare(request, store=store, run_id=run_id, catalog=catalog)
    else:
        raise CvatArgoError("give a request to run, or the id of a run to resume")
    resolved = run.pipeline.resolved
    print(f"run {run.run_id}: {resolved.model.name}, arguments {resolved.arguments.to_string()}; folder {run.root}",
          flush=True)
    results = execute(run, resume=bool(resume))
    write_run_report(run)
    failed = next((r for r in results.values() if r.status == "failed"), None)
    if failed is not None:
        raise StageFailed(failure_message(run, failed))
    return run

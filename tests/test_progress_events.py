"""Progress people can read: stages emit events, the local engine shows counts, rates and metrics, Argo gets N/M.

The engine tests run the real local engine (scheduler, subprocesses, log files) over the stand-in
stages of :mod:`support.fake_stage`, whose ``train`` prints TensorFlow-like noise and reports steps
through the same :func:`cvat_argo.progress.emit` the real steps use. The Orbit test drives a real
``orbit.Controller`` subclass from :mod:`cvat_argo.training.reporting` with a counting trainer.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cvat_argo.engines import artifacts, local
from cvat_argo.engines.console import Reporter, StageView
from cvat_argo.progress import ARGO_PROGRESS_ENV, EVENTS_ENV, STAGE_ENV, EventTail, ProgressEvent
from support.engine_driver import REQUEST, fake_run
from support.fake_stage import NOISE, PLAN_ENV

TESTS = Path(__file__).resolve().parent
STEPS = 12
PLAN = {"train": {"steps": STEPS, "step_seconds": 0.25}}


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, so the reporter draws rich bars into it."""

    def isatty(self) -> bool:
        return True


def _run_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: io.StringIO) -> local.LocalRun:
    monkeypatch.setenv(PLAN_ENV, json.dumps(PLAN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    for name in (EVENTS_ENV, STAGE_ENV, ARGO_PROGRESS_ENV):
        monkeypatch.delenv(name, raising=False)
    run = fake_run(local.prepare(REQUEST, store=str(tmp_path / "runs"), run_id="progress-1"))
    results = local.execute(run, reporter=Reporter(stream=stream, heartbeat=0.5))
    assert {r.status for r in results.values()} == {"succeeded"}
    return run


def test_plain_output_shows_steps_rate_eta_and_metrics_never_log_lines(tmp_path, monkeypatch):
    stream = io.StringIO()
    run = _run_engine(tmp_path, monkeypatch, stream)
    shown = stream.getvalue()

    assert NOISE not in shown  # the stage's raw output stays in its log
    assert NOISE in (run.stage_dir("train") / artifacts.STAGE_LOG).read_text()
    full = re.compile(rf"^train \d+:\d\d  step (\d+)/{STEPS} \(\d+%\)  [\d.]+ steps/s  ETA \d+:\d\d  loss [\d.]+",
                      re.MULTILINE)
    steps = [int(m.group(1)) for m in full.finditer(shown)]
    assert steps, shown
    assert steps == sorted(steps)
    assert "train finished in" in shown

    events = [ProgressEvent.from_json(line)
              for line in (run.stage_dir("train") / artifacts.STAGE_EVENTS).read_text().splitlines()]
    assert all(event is not None for event in events)
    assert {e.stage for e in events} == {"train"} and {e.unit for e in events} == {"step"}
    assert [e.done for e in events] == sorted(e.done for e in events)
    last = events[-1]
    assert (last.done, last.total, last.metrics["AP50"]) == (STEPS, STEPS, 0.875)
    assert len(events) < STEPS + 2  # throttled to about one a second, the end always written


def test_terminal_output_is_a_live_bar_per_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    stream = _Terminal()
    _run_engine(tmp_path, monkeypatch, stream)
    drawn = stream.getvalue()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)  # the words, without rich's colours and cursor moves

    assert NOISE not in shown
    assert "\r\x1b[2K" in drawn  # drawn and redrawn in place
    assert re.search(rf"train\s+\d+:\d\d .*step \d+/{STEPS}  [\d.]+ steps/s  ETA \d+:\d\d  loss [\d.]+", shown)
    assert "train finished in" in shown


def test_argo_progress_file_gets_n_of_m(tmp_path):
    progress = tmp_path / "argo" / "progress"
    env = {k: v for k, v in os.environ.items() if k not in (EVENTS_ENV, STAGE_ENV)}
    env.update({"PYTHONPATH": str(TESTS), ARGO_PROGRESS_ENV: str(progress),
                PLAN_ENV: json.dumps({"train": {"steps": 5}})})
    subprocess.run([sys.executable, "-m", "support.fake_stage", "--stage", "train", "--out", str(tmp_path / "out")],
                   env=env, check=True, capture_output=True, timeout=60)
    assert progress.read_text() == "5/5\n"
    assert not list(tmp_path.rglob("*.jsonl"))  # nobody asked for an events file


def test_rate_eta_and_metrics_from_event_times():
    view = StageView("train", started=0.0)
    assert view.words() == "starting"
    changed = view.feed([ProgressEvent("train", "train", 0, 504, "step", {"loss": 1.5}, t=100.0),
                         ProgressEvent("train", "train", 26, 504, "step", {"AP50": 0.88}, t=110.0),
                         ProgressEvent("train", "train", 52, 504, "step", {"loss": 0.41}, t=120.0)])
    assert changed
    assert view.words() == "step 52/504  2.6 steps/s  ETA 2:53  loss 0.41  AP50 0.88"
    assert not view.feed([ProgressEvent("train", "train", 60, 504, "step", {}, t=121.0)])
    assert view.feed([ProgressEvent("pre-annotate", "evaluating", 60, 504, "step", {}, t=122.0)])
    assert view.words().startswith("evaluating step 60/504  loss 0.41")


def test_events_are_read_whole_lines_only(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []
    line = ProgressEvent("convert", "exporting the model", 0, 4, "phase", t=1.0).to_json()
    path.write_text(line[:20])
    assert tail.read() == []  # the writer is mid-line
    with path.open("a") as handle:
        handle.write(line[20:] + "\nnot json\n")
    events = tail.read()
    assert [(e.stage, e.phase, e.done, e.total) for e in events] == [("convert", "exporting the model", 0, 4)]


def test_orbit_controller_reports_steps_loss_and_ap50(tmp_path, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    orbit = pytest.importorskip("orbit")
    from cvat_argo.training.reporting import reporting_controller

    events_path, progress = tmp_path / "events.jsonl", tmp_path / "progress"
    monkeypatch.setenv(EVENTS_ENV, str(events_path))
    monkeypatch.setenv(STAGE_ENV, "train")
    monkeypatch.setenv(ARGO_PROGRESS_ENV, str(progress))
    step = orbit.utils.create_global_step()

    class Counting(orbit.AbstractTrainer):
        def train(self, num_steps):
            step.assign_add(tf.cast(num_steps, step.dtype))
            return {"training_loss": tf.constant(0.25)}

    class Scoring(orbit.AbstractEvaluator):
        def evaluate(self, num_steps):
            return {"AP50": tf.constant(0.75), "AP": tf.constant(0.5)}

    controller = reporting_controller(6)(trainer=Counting(), evaluator=Scoring(), global_step=step, steps_per_loop=2)
    controller.train_and_evaluate(train_steps=6, eval_steps=1, eval_interval=4)

    events = EventTail(events_path, from_start=True).read()
    phases = [e.phase for e in events]
    assert phases[0] == "train" and "evaluating" in phases
    assert events[-1] == ProgressEvent("train", "train", 6, 6, "step", {"AP50": 0.75}, t=events[-1].t)
    assert any(e.metrics.get("loss") == 0.25 for e in events)
    assert progress.read_text() == "6/6\n"

"""A stand-in stage for engine tests: the engine's real scheduling, processes and store, no TensorFlow.

``python -m support.fake_stage --stage NAME --out DIR [--in DIR ...]`` writes ``DIR/data.txt`` (its
stage name, a token and what its inputs held) and ``DIR/../pid`` (its process id). What it does
besides is read from ``CVAT_ARGO_FAKE_PLAN``, a JSON object by stage name: ``{"sleep": seconds}``
before writing, ``{"exit": code}`` instead of writing, ``{"token": text}`` to make its output differ,
``{"steps": n, "step_seconds": s}`` to train for ``n`` steps first: each prints a noisy log line (the
kind TensorFlow prints) and reports progress through :func:`cvat_argo.progress.emit`, as ``train`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cvat_argo.entry import run_step
from cvat_argo.progress import emit

PLAN_ENV = "CVAT_ARGO_FAKE_PLAN"
#: A log line no person should see in the engine's progress output.
NOISE = "did you forget to provide a loss argument?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--in", dest="inputs", type=Path, action="append", default=[])
    ns = parser.parse_args(argv)
    plan = json.loads(os.environ.get(PLAN_ENV) or "{}").get(ns.stage, {})
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    (ns.out.parent / "pid").write_text(str(os.getpid()))
    print(f"{ns.stage}: started", flush=True)
    time.sleep(float(plan.get("sleep", 0)))
    steps = int(plan.get("steps", 0))
    for step in range(1, steps + 1):
        print(f"W0000 tensorflow/core/noise.cc:42] {NOISE} (step {step})", flush=True)
        time.sleep(float(plan.get("step_seconds", 0)))
        emit("train", step, steps, "step", loss=1.0 / step)
    if steps:
        emit("train", steps, steps, "step", force=True, AP50=0.875)
    if "exit" in plan:
        print(f"{ns.stage}: exiting {plan['exit']} as planned", file=sys.stderr, flush=True)
        return int(plan["exit"])
    inputs = [(path / "data.txt").read_text() for path in ns.inputs]
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "data.txt").write_text(json.dumps({"stage": ns.stage, "token": plan.get("token", ""),
                                                 "inputs": inputs}))
    print(f"{ns.stage}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_step(main))

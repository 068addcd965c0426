"""A stand-in stage for engine tests: the engine's real scheduling, processes and store, no TensorFlow.

``python -m support.fake_stage --stage NAME --out DIR [--in DIR ...]`` writes ``DIR/data.txt`` (its
stage name, a token and what its inputs held) and ``DIR/../pid`` (its process id). What it does
besides is read from ``CVAT_ARGO_FAKE_PLAN``, a JSON object by stage name: ``{"sleep": seconds}``
before writing, ``{"exit": code}`` instead of writing, ``{"token": text}`` to make its output differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cvat_argo.entry import run_step

PLAN_ENV = "CVAT_ARGO_FAKE_PLAN"


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

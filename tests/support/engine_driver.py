"""The local engine over stand-in stages (:mod:`support.fake_stage`), as a process tests can signal.

``python -m support.engine_driver --store DIR --run-id ID [--resume]`` builds the real pipeline of a
small request, keeps its stages' names, wiring, retries and exit step, swaps each stage's command for
the fake one, and runs it through :func:`cvat_argo.engines.local.complete` exactly as ``run`` does:
same locks, signals, manifests, store uploads, status and report, same exit codes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from cvat_argo.engines import local
from cvat_argo.engines.pipeline import Retry
from cvat_argo.entry import run_step
from cvat_argo.request.spec import TrainingRequest

REQUEST = TrainingRequest.create(source="s3://exports/task.zip", args="epochs=1", model="ssd-mobilenet-v2-small",
                                 machine="cpu")


def fake_run(run: local.LocalRun) -> local.LocalRun:
    stages = []
    for stage in run.pipeline.stages:
        args = ["--stage", stage.name, "--out", f"{{output:{stage.outputs[0]}}}"]
        for source in stage.inputs:
            args += ["--in", f"{{input:{source.name}}}"]
        retry = dataclasses.replace(stage.retry, limit=min(stage.retry.limit, 1)) if stage.retry else Retry(limit=0)
        stages.append(dataclasses.replace(stage, module="support.fake_stage", args=tuple(args), retry=retry))
    return dataclasses.replace(run, pipeline=dataclasses.replace(run.pipeline, stages=tuple(stages)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--resume", action="store_true")
    ns = parser.parse_args(argv)
    if ns.resume:
        run = local.reopen(ns.run_id, store=ns.store)
    else:
        run = local.prepare(REQUEST, store=ns.store, run_id=ns.run_id)
    local.complete(fake_run(run))
    print(f"run {ns.run_id} finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_step(main))

"""Multi-node training: which worker this pod is, and ``TF_CONFIG`` for MultiWorkerMirroredStrategy.

A multi-node machine type (``nodes`` > 1) runs the train stage as a JobSet (:mod:`cvat_argo.engines.jobset`):
one Indexed Job whose ``nodes`` pods each run the same ``python -m cvat_argo.steps.train`` command as a
single-node pod. What a pod knows about itself comes from the environment; :func:`configure` turns it
into ``TF_CONFIG`` before the train step builds its strategy:

==========================  =====================================================================================
``CVAT_ARGO_WORKERS``       workers training together (the machine type's ``nodes``); unset or 1: one pod, no
                            ``TF_CONFIG``, the train step uses MirroredStrategy or one device as before
``JOB_COMPLETION_INDEX``    this worker's index, set by the Job controller in Indexed Jobs; worker 0 is the chief
``CVAT_ARGO_JOBSET``        the JobSet's name (downward API: label ``jobset.sigs.k8s.io/jobset-name``)
``CVAT_ARGO_REPLICATED_JOB`` the replicated job's name (label ``jobset.sigs.k8s.io/replicatedjob-name``)
``CVAT_ARGO_WORKER_PORT``   the port the workers' collectives listen on (default 2222)
``CVAT_ARGO_WORKER_HOSTS``  instead of the three above: every worker's ``host:port``, comma separated, in index
                            order (tests on 127.0.0.1, other launchers)
``CVAT_ARGO_PUBLISH_KEY``   the store key the chief copies the finished model folder to: in a JobSet no Argo
                            executor uploads the output artifact, so the step does (same key as the artifact)
==========================  =====================================================================================

Host names: with ``network.enableDNSHostnames`` JobSet gives each pod the hostname
``<jobset>-<replicated job>-<job index>-<pod index>`` in a headless service named ``<subdomain>`` (default: the
JobSet's name) that publishes pods before they are ready. One replicated job of one Job with
parallelism = completions = ``nodes`` makes worker ``i`` ``<jobset>-<replicated job>-0-<i>.<jobset>``.

The chief is worker 0: ``TF_CONFIG`` lists workers only, and MultiWorkerMirroredStrategy makes worker 0 the
chief. TensorFlow's multi-worker checkpoint rule: every worker saves (a save reads variables, which may
need all workers), but only the chief's go to the model folder; Model Garden's runner sends the others'
to a temporary folder. The train step likewise syncs checkpoints to the store and publishes the outputs
from the chief only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from ..errors import ArgumentError

WORKERS_ENV = "CVAT_ARGO_WORKERS"
INDEX_ENV = "JOB_COMPLETION_INDEX"  # Kubernetes' own: Indexed Jobs set it in every pod
JOBSET_ENV = "CVAT_ARGO_JOBSET"
REPLICATED_JOB_ENV = "CVAT_ARGO_REPLICATED_JOB"
PORT_ENV = "CVAT_ARGO_WORKER_PORT"
HOSTS_ENV = "CVAT_ARGO_WORKER_HOSTS"
PUBLISH_ENV = "CVAT_ARGO_PUBLISH_KEY"
TF_CONFIG_ENV = "TF_CONFIG"
DEFAULT_PORT = 2222

# JobSet's pod labels, read through the downward API (jobset.sigs.k8s.io v1alpha2)
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"


@dataclass(frozen=True)
class Worker:
    """This process's place among the workers that train one model together."""

    index: int
    hosts: tuple[str, ...]  # host:port of every worker, in index order
    publish_key: str = ""

    @property
    def count(self) -> int:
        return len(self.hosts)

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def tf_config(self) -> dict[str, object]:
        return tf_config(self.hosts, self.index)


def jobset_hosts(jobset: str, replicated_job: str, workers: int, port: int = DEFAULT_PORT,
                 subdomain: str | None = None) -> tuple[str, ...]:
    """Every worker's stable DNS name and port in a JobSet of one Indexed Job with ``workers`` pods."""
    if not jobset or not replicated_job:
        raise ArgumentError(f"multi-node training: the JobSet name ({JOBSET_ENV}) and replicated job "
                            f"({REPLICATED_JOB_ENV}) must be set to name the workers")
    domain = subdomain or jobset
    return tuple(f"{jobset}-{replicated_job}-0-{index}.{domain}:{port}" for index in range(workers))


def tf_config(hosts: Sequence[str], index: int) -> dict[str, object]:
    """``TF_CONFIG`` of worker ``index``: the cluster of all workers (worker 0 is the chief) and this task."""
    if not 0 <= index < len(hosts):
        raise ArgumentError(f"worker index {index} is not one of the {len(hosts)} workers")
    return {"cluster": {"worker": list(hosts)}, "task": {"type": "worker", "index": index}}


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = (env.get(name) or "").strip()
    if not raw and default is not None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ArgumentError(f"multi-node training: {name}={raw!r} is not a whole number") from None


def worker_from_env(env: Mapping[str, str] | None = None) -> Worker | None:
    """This pod's :class:`Worker` when the environment says it is one of several; None for a lone pod."""
    env = os.environ if env is None else env
    workers = _int(env, WORKERS_ENV, 1)
    if workers < 1:
        raise ArgumentError(f"multi-node training: {WORKERS_ENV}={workers} must be at least 1")
    if workers == 1:
        return None
    index = _int(env, INDEX_ENV)
    explicit = [host.strip() for host in (env.get(HOSTS_ENV) or "").split(",") if host.strip()]
    if explicit:
        if len(explicit) != workers:
            raise ArgumentError(f"multi-node training: {HOSTS_ENV} lists {len(explicit)} workers, "
                                f"{WORKERS_ENV} says {workers}")
        hosts = tuple(explicit)
    else:
        hosts = jobset_hosts(env.get(JOBSET_ENV, "").strip(), env.get(REPLICATED_JOB_ENV, "").strip(), workers,
                             _int(env, PORT_ENV, DEFAULT_PORT))
    if not 0 <= index < workers:
        raise ArgumentError(f"multi-node training: {INDEX_ENV}={index} is not one of the {workers} workers")
    return Worker(index=index, hosts=hosts, publish_key=(env.get(PUBLISH_ENV) or "").strip())


def configure(env: MutableMapping[str, str] | None = None) -> Worker | None:
    """Set ``TF_CONFIG`` for this worker (before TensorFlow builds a strategy); None for a lone pod."""
    env = os.environ if env is None else env
    worker = worker_from_env(env)
    if worker is not None:
        env[TF_CONFIG_ENV] = json.dumps(worker.tf_config(), sort_keys=True)
    return worker


def fetch(pairs: Sequence[tuple[str, str]], env: Mapping[str, str] | None = None) -> int:
    """Download store folders ``key`` into local folders: a JobSet pod's input artifacts (no Argo executor)."""
    from pathlib import Path

    from ..errors import CvatArgoError
    from ..storage.store import store_from_env

    store = store_from_env(env)
    if store is None:
        raise CvatArgoError("multi-node training reads its inputs from the store: CVAT_ARGO_STORE is not set "
                            "(the cvat-argo-store ConfigMap)")
    files = 0
    for key, folder in pairs:
        count = store.get_dir(key, Path(folder))
        print(f"fetched {count} files of {store.uri(key)} into {folder}", flush=True)
        files += count
    return files


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cvat_argo.training.cluster",
                                     description="input artifacts of a multi-node training pod, from the store")
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="download store folders: --key KEY --out DIR, repeated")
    get.add_argument("--key", action="append", required=True, help="store key of a folder (an artifact's key)")
    get.add_argument("--out", action="append", required=True, help="local folder to fill (one per --key)")
    ns = parser.parse_args(argv)
    if len(ns.key) != len(ns.out):
        parser.error("give one --out per --key")
    fetch(list(zip(ns.key, ns.out, strict=True)))
    return 0


if __name__ == "__main__":
    import sys

    from ..entry import run_step

    sys.exit(run_step(main))

"""``python -m cvat_argo``: models, machines, plan, render, submit, run, quickstart, nuclio-bundle, qc-report,
mirror-models.

Every command that builds a run takes the same request flags (``--task-id``/``--source``,
``--model``, ``--machine``, ``--args``), so what works in ``plan`` works in ``submit``. Errors a user
can fix print one readable message and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .engines import artifacts
from .entry import run_step
from .errors import CvatArgoError
from .quickstart import QUICKSTART_BATCH, QUICKSTART_EPOCHS
from .request.catalog import Catalog, ResolvedRequest, load_catalog
from .request.spec import DEFAULT_MACHINE, DEFAULT_OUTPUT_PREFIX, TrainingRequest

DEFAULT_RENDER_DIR = Path("workflow_templates")


def _console(stream=None) -> Console:
    # Outside a terminal (CI logs, pipes) rich would wrap tables at 80 columns.
    stream = stream or sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 160, highlight=False)


def _add_catalog_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", metavar="FILE",
                        help="YAML catalog that extends or overrides the built-in models and machine types "
                             "(default: $CVAT_ARGO_CATALOG)")


def _add_request_flags(parser: argparse.ArgumentParser, *, source_required: bool = True,
                       for_cluster: bool = True) -> None:
    """The flags every command that builds a run shares; the Argo-only ones are hidden from ``run --help``."""
    argo_only = (lambda text: text) if for_cluster else (lambda _text: argparse.SUPPRESS)
    source = parser.add_mutually_exclusive_group(required=source_required)
    source.add_argument("--task-id", type=int, help="CVAT task to train on (server and credentials: CVAT_HOST, ...)")
    source.add_argument("--source", help="CVAT export to train on: s3://bucket/key, https:// URL (or a local path "
                                         "for `run`)")
    parser.add_argument("--model", help="model from the catalog (default: the catalog's default model)")
    parser.add_argument("--machine", default=DEFAULT_MACHINE, help=f"machine type (default: {DEFAULT_MACHINE})")
    parser.add_argument("--args", default="", metavar="ARGS",
                        help="training arguments as CVAT users type them: epochs=100,batch_size=24,"
                             "initial_learning_rate=0.004,num_clones=4 (or YAML)")
    parser.add_argument("--args-file", type=Path, metavar="FILE", help="training arguments from a YAML file")
    parser.add_argument("--base-model", metavar="URI", help="base checkpoint instead of the catalog's")
    parser.add_argument("--base-model-sha256", metavar="HEX", help="expected sha256 of --base-model")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
    parser.add_argument("--output-prefix", default=DEFAULT_OUTPUT_PREFIX, help=argo_only("artifact key prefix"))
    parser.add_argument("--no-tensorboard", action="store_true",
                        help=argo_only("no TensorBoard sidecar on training"))
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help=argo_only("extra workflow label"))
    _add_catalog_flag(parser)


def _request(ns: argparse.Namespace, catalog: Catalog, *, local: bool = False) -> ResolvedRequest:
    """The request the flags describe, resolved once against the catalog (an impossible one is refused here)."""
    try:
        args = ns.args_file.read_text(encoding="utf-8") if ns.args_file else ns.args
    except (OSError, UnicodeDecodeError) as exc:
        raise CvatArgoError(f"--args-file {ns.args_file}: {getattr(exc, 'strerror', None) or exc}") from None
    source = ns.source
    if local and source and "://" not in source:
        source = str(Path(source).expanduser().resolve())  # the run may be resumed from another folder
    labels = {}
    for item in ns.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise CvatArgoError(f"--label {item!r} is not KEY=VALUE")
        labels[key] = value
    request = TrainingRequest.create(
        source=source, task_id=ns.task_id, args=args, model=ns.model or catalog.default_model,
        machine=ns.machine, base_model_uri=ns.base_model, base_model_sha256=ns.base_model_sha256,
        val_fraction=ns.val_fraction, output_prefix=ns.output_prefix, tensorboard=not ns.no_tensorboard,
        labels=labels,
    )
    return catalog.resolve(request)


def cmd_models(ns: argparse.Namespace) -> int:
    catalog = load_catalog(ns.catalog)
    if ns.json:
        print(json.dumps(catalog.model(ns.json).model_dump(mode="json"), indent=2, sort_keys=True))
        return 0
    table = Table(title=f"Model catalog ({' + '.join(catalog.sources)}); default: {catalog.default_model}")
    table.add_column("model", no_wrap=True)  # the name people copy: never folded
    for column in ("architecture", "backbone / decoder", "input", "batch/GPU", "lr", "min GPUs", "TFLite",
                   "base weights", "restores"):
        table.add_column(column, overflow="fold")
    for entry in catalog.models.values():
        backbone = entry.backbone.get("type", "?")
        detail = entry.backbone.get(backbone, {})
        model_id = detail.get("model_id", "") if isinstance(detail, dict) else ""
        stand_in = " (stand-in)" if entry.stand_in else ""
        table.add_row(
            entry.name, entry.architecture, f"{backbone} {model_id}{stand_in} / {entry.decoder.get('type', '?')}",
            str(entry.input_size), str(entry.batch_size), f"{entry.initial_learning_rate:g} {entry.optimizer}",
            str(entry.min_gpus), "yes" if entry.tflite else "no",
            entry.checkpoint.trained_on or (entry.checkpoint.uri or "none (from scratch)"),
            entry.checkpoint.modules if entry.checkpoint.uri else "-",
        )
    console = _console()
    console.print(table)
    for entry in catalog.models.values():
        if entry.stand_in:
            console.print(f"[bold]{entry.name}[/bold]: {entry.stand_in}")
    return 0


def cmd_mirror_models(ns: argparse.Namespace) -> int:
    from .storage.mirror import mirror_models

    catalog = load_catalog(ns.catalog)
    entries = [catalog.model(name) for name in ns.models] if ns.models else list(catalog.models.values())
    uris = [(entry.checkpoint.uri, entry.checkpoint.sha256) for entry in entries if entry.checkpoint.uri]
    mirror_models(uris, ns.to)
    return 0


def cmd_machines(ns: argparse.Namespace) -> int:
    catalog = load_catalog(ns.catalog)
    table = Table(title="Machine types")
    table.add_column("machine", no_wrap=True)
    for column in ("GPUs", "CPU", "memory", "/dev/shm", "node selector", "description"):
        table.add_column(column, overflow="fold")
    for m in catalog.machines.values():
        selector = ", ".join(f"{k}={v}" for k, v in m.node_selector.items()) or "-"
        table.add_row(m.name, str(m.gpus), m.cpu, m.memory, m.shm_size, selector, m.description)
    _console().print(table)
    return 0


def cmd_plan(ns: argparse.Namespace) -> int:
    from .engines.pipeline import build_pipeline

    catalog = load_catalog(ns.catalog)
    pipeline = build_pipeline(_request(ns, catalog), catalog)
    resolved = pipeline.resolved
    out = sys.stdout
    out.write(f"{resolved.model.name} on {resolved.machine.name} ({resolved.machine.description})\n"
              f"arguments: {resolved.arguments.to_string()}\n\n")
    for stage in (*pipeline.topological_order(), pipeline.exit_stage):
        res = stage.resources
        after = ", ".join(stage.depends) or ("when the run ends" if stage is pipeline.exit_stage else "start")
        gpus = f", GPUs {{param:{res.gpu_parameter}}}" if res.gpu_parameter else ""
        deadline = stage.deadline_seconds
        out.write(f"{stage.name}  (after: {after}; cpu {res.cpu}, memory {res.memory}{gpus}; "
                  f"retries {stage.retry.limit if stage.retry else 0}; deadline "
                  f"{f'{deadline // 3600}h' if deadline >= 3600 else f'{deadline}s'})\n")
        out.write(f"    {' '.join(stage.command)}\n")
        if stage.inputs:
            out.write(f"    in:  {', '.join(f'{a.name} <- {a.stage}/{a.artifact}' for a in stage.inputs)}\n")
        out.write(f"    out: {', '.join(stage.outputs)}\n")
    values = pipeline.parameter_values()
    out.write("\nparameters:\n" + "".join(f"    {k} = {v!r}\n" for k, v in values.items() if k != "model-spec"))
    return 0


def cmd_render(ns: argparse.Namespace) -> int:
    from .engines.render import check_or_raise, render_files, settings_for, write_files

    # Flags not given keep the values recorded in the folder's kustomization.yaml (see render.settings_for).
    settings, changes = settings_for(ns.out, check=ns.check, bucket=ns.bucket, s3_endpoint=ns.s3_endpoint,
                                     s3_region=ns.s3_region, s3_tls=ns.s3_tls, catalog=ns.catalog)
    files = render_files(load_catalog(settings.catalog_file(ns.out), env={}), settings)
    if ns.check:
        check_or_raise(files, ns.out)
        print(f"{ns.out}: {len(files)} files match the code")
        return 0
    written, removed = write_files(files, ns.out)
    for change in changes:
        print(f"render setting: {change}")
    print(f"{ns.out}: {len(files)} files, {len(written)} written, {len(removed)} removed (a kustomize base "
          "without Secrets: install it through an overlay, see examples/gitops-overlay)")
    return 0


def cmd_submit(ns: argparse.Namespace) -> int:
    from .engines import yamlio
    from .engines.argo import cluster_pipeline, template_name, workflow_for, workflow_template_for
    from .engines.submission import ArgoConnection, submit

    catalog = load_catalog(ns.catalog)
    request = _request(ns, catalog)
    if ns.dry_run:
        pipeline = cluster_pipeline(request, catalog)
        objects = [workflow_for(pipeline).to_dict()]
        if ns.install_template:
            objects.insert(0, workflow_template_for(pipeline, catalog).to_dict())
        sys.stdout.write(yamlio.dump_all(objects))
        print(f"# dry run: nothing sent; the workflow uses WorkflowTemplate {template_name(pipeline)}",
              file=sys.stderr)
        return 0
    connection = ArgoConnection.from_env(
        server=ns.server, namespace=ns.namespace, token=ns.token, base_href=ns.base_href,
        insecure_skip_verify=True if ns.insecure_skip_verify else None, ca_file=ns.ca_file,
    )
    run = submit(request, connection, catalog=catalog, install_template=ns.install_template)
    print(f"submitted {run.name} in namespace {run.namespace} (WorkflowTemplate {run.template})")
    print(f"  UI: {connection.url}workflows/{run.namespace}/{run.name}")
    for where, key in run.artifacts.items():
        print(f"  {where}: {key}")
    if not ns.wait:
        return 0
    started = time.monotonic()
    phase = run.wait(poll_seconds=ns.poll,
                     on_phase=lambda p: print(f"  [{time.monotonic() - started:7.0f} s] {run.name}: {p}", flush=True))
    return 0 if phase == "Succeeded" else 1


#: The flags that make up a run's request, by the TrainingRequest field each sets. ``run`` leaves them
#: None when not given (its defaults wait in ``ns.request_defaults``), so ``--resume`` can tell them apart.
REQUEST_FLAGS = {"source": "source", "task_id": "source", "model": "model", "machine": "machine",
                 "args": "arguments", "args_file": "arguments", "base_model": "base_model_uri",
                 "from_run": "base_model_uri", "base_model_sha256": "base_model_sha256",
                 "val_fraction": "val_fraction", "output_prefix": "output_prefix", "no_tensorboard": "tensorboard",
                 "label": "labels"}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _shown(request: TrainingRequest, field: str) -> str:
    value = getattr(request, field)
    if field == "source":
        return value.describe()
    if field == "arguments":
        return value.to_string() or "the defaults"
    if field == "labels":
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return "none" if value is None else str(value)


def _from_run(ns: argparse.Namespace) -> None:
    """``--from-run RUN``: that run's trained model becomes the base model (and the model, unless given)."""
    from .engines import local

    if ns.base_model:
        raise CvatArgoError("give --from-run or --base-model, not both")
    try:
        earlier = local.earlier_model(ns.from_run, store=ns.store)
    except CvatArgoError as exc:
        if str(exc).startswith("--from-run"):
            raise
        raise type(exc)(f"--from-run {ns.from_run}: {exc}") from None
    ns.base_model, ns.model = earlier.uri, ns.model or earlier.model


def _check_resume_flags(ns: argparse.Namespace, catalog: Catalog) -> None:
    """``--resume ID`` continues the request saved with the run: request flags may repeat it, never change it.

    A changed flag used to be ignored without a word (``--resume ID --args epochs=50`` trained the saved
    epochs); a run id names one request for ever, so a changed request is a new run.
    """
    from .engines import local

    if ns.run_id and ns.run_id != ns.resume:
        raise CvatArgoError(f"--run-id {ns.run_id} and --resume {ns.resume}: --resume continues run {ns.resume}; "
                            "--run-id NEW (without --resume) starts a new one")
    given = [dest for dest in REQUEST_FLAGS if getattr(ns, dest) is not None]
    if not given:
        return
    saved = local.reopen(ns.resume, store=ns.store, catalog=catalog).pipeline.resolved.request
    if ns.from_run:
        _from_run(ns)
    if ns.source is None and ns.task_id is None:
        ns.source, ns.task_id = saved.source.uri, saved.source.cvat_task_id
    if ns.args is None and ns.args_file is None:
        ns.args = saved.arguments.to_string()
    for dest, value in (("model", saved.model), ("machine", saved.machine), ("base_model", saved.base_model_uri),
                        ("base_model_sha256", saved.base_model_sha256), ("val_fraction", saved.val_fraction),
                        ("output_prefix", saved.output_prefix), ("no_tensorboard", not saved.tensorboard),
                        ("label", [f"{k}={v}" for k, v in saved.labels.items()])):
        if getattr(ns, dest) is None:
            setattr(ns, dest, value)
    asked = _request(ns, catalog, local=True).request
    changed = [field for field in dict.fromkeys(REQUEST_FLAGS.values())
               if getattr(asked, field) != getattr(saved, field)]
    if changed:
        what = "; ".join(
            f"{'the source' if field == 'source' else '/'.join(_flag(d) for d in given if REQUEST_FLAGS[d] == field)} "
            f"{_shown(saved, field)}, not {_shown(asked, field)}" for field in changed)
        raise CvatArgoError(f"run {ns.resume} was started with {what}: --resume continues a run as it was asked; "
                            f"drop those flags, or start a new run with them (--run-id NEW instead of --resume)")


def cmd_run(ns: argparse.Namespace) -> int:
    from .engines import local

    catalog = load_catalog(ns.catalog)
    cvat_env = _cvat_env(ns)  # the CVAT flags, checked before anything else
    request = None
    if ns.resume:
        _check_resume_flags(ns, catalog)
    else:
        for dest, default in ns.request_defaults.items():
            if getattr(ns, dest) is None:
                setattr(ns, dest, default)
        if not ns.source and ns.task_id is None:
            raise CvatArgoError("give --source (a CVAT export) or --task-id, or --resume RUN_ID")
        if ns.from_run:
            _from_run(ns)
        request = _request(ns, catalog, local=True)
    with _environment(cvat_env):  # the preflight and every stage read the CVAT settings from there
        run = local.run_locally(request, store=ns.store, run_id=ns.run_id, resume=ns.resume, catalog=catalog)
    print(f"run {run.run_id} finished: report {run.root / artifacts.RUN_REPORT}")
    return 0


def _cvat_env(ns: argparse.Namespace) -> dict[str, str | None]:
    """The variables cvat-cli's flags (``--server-host``, ``--auth``, ``--org``, ...) set for this run.

    Flags win over the CVAT_* variables; the stages are separate processes that read only their
    environment, so the resolved settings travel there (see :mod:`cvat_argo.cvat.connection`).
    """
    from .cvat import connection

    if not connection.given(ns):
        return {}
    settings = connection.from_namespace(ns)
    if settings is None:
        flag = next(f"--{name.replace('_', '-')}" for name in ("server_port", "auth", "org", "ca_bundle", "insecure")
                    if getattr(ns, name) not in (None, False))
        raise CvatArgoError(f"{flag}: no CVAT server: give --server-host or set CVAT_HOST")
    return settings.to_env()


@contextlib.contextmanager
def _environment(changes: dict[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``changes`` (None: removed) for the block, as it was afterwards."""
    def apply(values: dict[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    saved = {name: os.environ.get(name) for name in changes}
    try:
        apply(changes)
        yield
    finally:
        apply(saved)


#: A quickstart task's size: at least 6 annotated images to train and validate on and 4 left to
#: pre-annotate (60% are annotated); at most what generates in minutes (about 10 GB of JPEGs).
QUICKSTART_IMAGES = (10, 100_000)


def _check_quickstart_numbers(ns: argparse.Namespace) -> None:
    """Refuse quickstart's numbers before its data is generated, by the rules the run itself applies."""
    from . import quickstart

    low, high = QUICKSTART_IMAGES
    if not low <= ns.images <= high:
        raise CvatArgoError(f"--images {ns.images}: give {low} to {high:,} images (60% of them annotated)")
    if ns.seed < 0:
        raise CvatArgoError(f"--seed {ns.seed}: give 0 or more")
    planned = quickstart.QuickstartData(export=Path(ns.store) / "quickstart-data", truth=Path(ns.store),
                                        images=ns.images, annotated=0)
    load_catalog().resolve(quickstart.request_for(planned, epochs=ns.epochs, batch_size=ns.batch_size,
                                                  input_size=ns.input_size))


def cmd_quickstart(ns: argparse.Namespace) -> int:
    from . import quickstart
    from .engines import local, preflight

    started = time.monotonic()
    _check_quickstart_numbers(ns)
    preflight.check_store(ns.store)
    from .reports.run import write_run_report  # matplotlib: only once the numbers are known to be good
    data = quickstart.make_data(Path(ns.store) / "quickstart-data", ns.images, seed=ns.seed)
    print(f"quickstart: a CVAT task export of {data.images} images, {data.annotated} annotated: {data.export}")
    request = quickstart.request_for(data, epochs=ns.epochs, batch_size=ns.batch_size, input_size=ns.input_size)
    run = local.run_locally(None if ns.resume else request, store=ns.store, run_id=ns.run_id, resume=ns.resume)
    metrics = artifacts.read_json(run.artifact(artifacts.MODEL) / artifacts.METRICS, "training metrics")
    score = quickstart.score_against_truth(run.artifact(artifacts.ANNOTATIONS), data.truth)
    artifacts.write_json(run.root / artifacts.QUICKSTART_SCORE,
                         {"validation": metrics.get("final", {}), "pre_annotations": score})
    write_run_report(run)  # again, with the score
    final = metrics.get("final", {})
    print(f"quickstart finished in {(time.monotonic() - started) / 60:.1f} min: validation AP50 "
          f"{final.get('AP50', float('nan')):.3f}; pre-annotations of the {score.get('images', 0)} unannotated images "
          f"against their hidden truth: AP50 {score.get('AP50', float('nan')):.3f}, recall {score.get('AR100', 0):.3f}")
    return 0


# Commands whose parser lives in their own module: its ``main(argv)`` gets the rest of the line.
DELEGATED = {"nuclio-bundle": "cvat.nuclio", "qc-report": "cvat.qc"}


def _delegate(module: str):
    def run(ns: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(f"cvat_argo.{module}").main(ns.rest)

    return run


def _command(sub: Any, name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is its entry in ``--help`` and its own description too."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cvat_argo",
        description="Train a detector on your CVAT annotations and pre-annotate the rest, on Argo or here.",
    )
    parser.add_argument("--version", action="version", version=f"cvat-argo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = _command(sub, "models", "list the model catalog")
    _add_catalog_flag(models)
    models.add_argument("--json", metavar="MODEL", help="print one entry as JSON (the model-spec parameter)")
    models.set_defaults(func=cmd_models)

    mirror = _command(sub, "mirror-models", "copy the catalog's public base checkpoints into a bucket for "
                                            "air-gapped clusters (CVAT_ARGO_MODEL_MIRROR)")
    mirror.add_argument("--to", required=True, metavar="s3://BUCKET/PREFIX/",
                        help="the mirror (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... as for the store)")
    mirror.add_argument("models", nargs="*", metavar="MODEL", help="only these catalog models (default: all)")
    _add_catalog_flag(mirror)
    mirror.set_defaults(func=cmd_mirror_models)

    machines = _command(sub, "machines", "list the machine types")
    _add_catalog_flag(machines)
    machines.set_defaults(func=cmd_machines)

    plan = _command(sub, "plan", "show the stages, commands and parameters of a run without running it")
    _add_request_flags(plan)
    plan.set_defaults(func=cmd_plan)

    render = _command(sub, "render", "write the WorkflowTemplates and cluster objects for GitOps")
    render.add_argument("--out", type=Path, default=DEFAULT_RENDER_DIR, help="folder (default: workflow_templates)")
    render.add_argument("--check", action="store_true",
                        help="exit 1 with a diff when --out differs from the code (rendered with the flags "
                             "recorded in --out/kustomization.yaml)")
    # Not given: the value recorded in --out/kustomization.yaml by the last render, else the default shown.
    render.add_argument("--bucket", help="bucket in the base's ConfigMaps (default: cvat-argo)")
    render.add_argument("--s3-endpoint", help="MinIO/S3 host:port (default: minio.minio.svc.cluster.local:9000)")
    render.add_argument("--s3-region", help="(default: us-east-1)")
    render.add_argument("--s3-tls", action=argparse.BooleanOptionalAction, default=None,
                        help="the S3 endpoint speaks TLS (default: no)")
    _add_catalog_flag(render)
    render.epilog = ("Flags not given keep the values the last render recorded in --out/kustomization.yaml "
                     "(--catalog '' goes back to the built-in catalog).")
    render.set_defaults(func=cmd_render)

    run = _command(sub, "run", "run the whole pipeline on this machine (no cluster)")
    _add_request_flags(run, source_required=False, for_cluster=False)
    run.add_argument("--store", default="runs",
                     help="where runs live: a folder (default ./runs) or s3://bucket/prefix (AWS_ENDPOINT_URL, ...)")
    run.add_argument("--run-id", help="name of the run folder (default: <model>-<time>-<random>)")
    run.add_argument("--resume", metavar="RUN_ID", help="continue a run: skip stages whose outputs are complete")
    run.add_argument("--from-run", metavar="RUN_ID",
                     help="the next round: start training from that run's trained model (every layer; the class "
                          "head too when the labels are the same) instead of the catalog's base checkpoint")
    from .cvat import connection

    connection.add_flags(run)  # cvat-cli's --server-host, --auth, --org, ... for --task-id and the upload
    run.set_defaults(func=cmd_run, request_defaults={dest: run.get_default(dest) for dest in REQUEST_FLAGS})
    run.set_defaults(**dict.fromkeys(REQUEST_FLAGS))  # None: not given (see REQUEST_FLAGS)

    quick = _command(sub, "quickstart", "generate a partly annotated CVAT task and run the whole loop on it here")
    quick.add_argument("--images", type=int, default=300, help="images in the generated task (60%% annotated)")
    quick.add_argument("--epochs", type=int, default=QUICKSTART_EPOCHS,
                       help="training epochs (default: about 500 steps)")
    quick.add_argument("--batch-size", type=int, default=QUICKSTART_BATCH)
    quick.add_argument("--input-size", type=int, help="model input size (default: the model's, 256)")
    quick.add_argument("--seed", type=int, default=0, help="seed of the generated task")
    quick.add_argument("--store", default="runs", help="folder for the data and the run (default ./runs)")
    quick.add_argument("--run-id", help="name of the run folder")
    quick.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted quickstart run")
    quick.set_defaults(func=cmd_quickstart)

    for name, text in (
        ("nuclio-bundle", "write a nuclio function (function.yaml + handler) for CVAT's serverless auto-annotation "
                          "from an exported model"),
        ("qc-report", "after review in CVAT: how many pre-annotations people accepted, corrected, deleted or "
                      "added, per label"),
    ):
        delegated = _command(sub, name, text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
        delegated.set_defaults(func=_delegate(DELEGATED[name]))

    submit = _command(sub, "submit", "submit a run to an Argo server (ARGO_SERVER, ARGO_TOKEN, ...)")
    _add_request_flags(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the run to finish; exit 1 unless it succeeded")
    submit.add_argument("--poll", type=float, default=10.0, help="seconds between status checks with --wait")
    submit.add_argument("--dry-run", action="store_true", help="print the YAML that would be sent; send nothing")
    submit.add_argument("--install-template", action="store_true",
                        help="create or update the machine type's WorkflowTemplate before submitting")
    submit.add_argument("--server", help="Argo server, host:port or URL (default: $ARGO_SERVER)")
    submit.add_argument("-n", "--namespace", help="namespace (default: $ARGO_NAMESPACE or argo)")
    submit.add_argument("--token", help="bearer token (default: $ARGO_TOKEN; prefer the variable)")
    submit.add_argument("--base-href", help="path the server is served under (default: $ARGO_BASE_HREF)")
    submit.add_argument("--insecure-skip-verify", action="store_true", help="do not verify the TLS certificate")
    submit.add_argument("--ca-file", help="CA bundle to verify the server's certificate with")
    submit.set_defaults(func=cmd_submit)
    return parser


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:  # argparse would eat their --help
        ns = argparse.Namespace(func=_delegate(DELEGATED[argv[0]]), rest=argv[1:])
    else:
        ns = parser.parse_args(argv)
    return ns.func(ns)


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry: errors a user can fix print one line and exit with their code, as in every step."""
    return run_step(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())

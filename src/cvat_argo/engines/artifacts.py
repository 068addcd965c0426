"""The artifact contract between stages: the one owner of keys, stage folders, file names and manifests.

Every stage writes its outputs into one folder per artifact; the engines move those folders between
stages under one key layout, ``<prefix>/<run-id>/<stage>/<artifact>``, on Argo (S3 artifacts) and
locally (``<store>/<run-id>/<stage>/<artifact>``). The steps, the engines, the reports and the CVAT
tools spell a stage name, an artifact name or a file name only through this module, so a rename is
one edit and a reader finds the whole contract in one page.

Manifests (``model.json`` and friends) are typed here too: the stage that writes one and the stages
that read it share the same class, and a truncated or foreign file is one readable error.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from ..errors import CvatArgoError, DatasetError
from ..storage.keys import clean_key

# ---- stages (the pipeline's names for them; the Argo task names and the run folder's sub-folders)
CREATE_DATASET = "create-dataset"
PULL_BASE_MODEL = "pull-base-model"
TRAIN = "train"
CONVERT = "convert"
PRE_ANNOTATE = "pre-annotate"
RECORD_STATUS = "record-status"  # the exit handler
STAGE_NAMES = (CREATE_DATASET, PULL_BASE_MODEL, TRAIN, CONVERT, PRE_ANNOTATE)

# ---- artifacts (one output folder each)
DATASET = "dataset"  # create-dataset: TFRecord shards, label map, labels, the images to pre-annotate
BASE_MODEL = "base-model"  # pull-base-model: the unpacked base checkpoint
MODEL = "model"  # train: checkpoints, TensorBoard events, metrics
EXPORTED = "exported"  # convert: SavedModel, TFLite, labels, model card
ANNOTATIONS = "annotations"  # pre-annotate: CVAT XML, COCO JSON, summary
STATUS = "status"  # record-status: status.json

# ---- files inside the dataset artifact
DATASET_SUMMARY = "dataset.json"
LABELS = "labels.json"  # also in the exported model: the label names in class-id order
LABEL_MAP = "label_map.pbtxt"
UNANNOTATED = "unannotated.json"
DATASET_PLOT = "dataset.png"
STAGE_REPORT = "report.md"  # each artifact's own short report

# ---- files inside the base-model, model and exported artifacts
BASE_MODEL_MANIFEST = "base-model.json"
MODEL_MANIFEST = "model.json"  # train: how to rebuild the model; convert: how to serve the export
MODEL_PARAMS = "params.yaml"  # Model Garden's experiment config, as training ran it
METRICS = "metrics.json"
TRAINING_PLOT = "training.png"
TRAIN_EVENTS = "train"  # TensorBoard event folders that training writes inside the model artifact
VALIDATION_EVENTS = "validation"
TFLITE_MANIFEST = "tflite.json"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILES = {"tflite-fp32": "model_fp32.tflite", "tflite-fp16": "model_fp16.tflite"}  # runtime -> file
SELF_TEST = "self_test.json"
THRESHOLDS = "thresholds.json"  # per-label score thresholds chosen on validation: {"default", "per_label", ...}
MODEL_CARD = "model_card.md"

# ---- files inside the annotations and status artifacts
CVAT_XML = "annotations.xml"
COCO_JSON = "coco.json"
ANNOTATION_SUMMARY = "summary.json"
SCORES_PLOT = "scores.png"
NEXT_TO_ANNOTATE = "next-to-annotate.json"  # the frames a person's labels would teach the model most
STATUS_FILE = "status.json"

# ---- files qc-report writes (after people reviewed the pre-annotations in CVAT)
QC_JSON = "qc.json"
QC_MARKDOWN = "qc.md"
QC_PLOT = "qc.png"

# ---- the upload ledgers: what pre-annotate added to each CVAT task, kept across runs (cvat/ledger.py)
LEDGERS = "ledgers"  # <prefix>/ledgers/<cvat host>/task-<id>.json
LEDGER_FILE = "task-{task_id}.json"

# ---- files of a local run folder (``runs/<run-id>/``) and of each stage folder in it
RUN_REQUEST = "request.json"
RUN_REPORT = "report.md"
RUN_REPORT_HTML = "report.html"
PRE_ANNOTATIONS_GRID = "pre-annotations.png"
QUICKSTART_SCORE = "quickstart-score.json"
STAGE_MANIFEST = "manifest.json"
STAGE_LOG = "log.txt"
STAGE_EVENTS = "events.jsonl"  # the stage's progress events (see cvat_argo.progress), beside its log
STORE_PROBE = ".cvat-argo-probe-{token}"  # the object `run` puts and deletes to test an s3:// store first


def artifact_key(prefix: str, run_id: str, stage: str, artifact: str) -> str:
    """``<prefix>/<run-id>/<stage>/<artifact>``: where one artifact lives in the store, on every engine."""
    for name, value in (("run id", run_id), ("stage", stage), ("artifact", artifact)):
        if not value or "/" in value or value in (".", ".."):
            raise CvatArgoError(f"artifact key: {name} {value!r} must be one non-empty path component")
    return clean_key("/".join(part for part in (prefix, run_id, stage, artifact) if part))


def artifact_path(run_root: Path, stage: str, artifact: str) -> Path:
    """The same layout under a local run folder: ``<run-root>/<stage>/<artifact>``."""
    return run_root / stage / artifact


def checkpoint_key(prefix: str, run_id: str) -> str:
    """Where the train stage keeps its checkpoints while it runs, so that a retried pod resumes."""
    return artifact_key(prefix, run_id, TRAIN, MODEL)


def ledgers_root(prefix: str) -> str:
    """``<prefix>/ledgers``: where the upload ledgers of every CVAT server and task live in the store."""
    return clean_key(f"{prefix}/{LEDGERS}")


def host_folder(host: str) -> str:
    """A CVAT server address as one key component: no scheme, lower case, ``:`` and ``/`` made ``_``.

    http:// and https:// name the same server, so both find the same ledgers; a ``user:password@``
    in the address never reaches a key.
    """
    url = urlsplit(host.strip() if "://" in host else f"https://{host.strip()}")
    bare = (url.netloc.rpartition("@")[2] + url.path).strip("/").lower()
    safe = re.sub(r"[^a-z0-9._-]+", "_", bare).strip("._")
    if not safe:
        raise CvatArgoError(f"CVAT host {host!r} cannot name a ledger folder")
    return safe


def ledger_in(root: str, host: str, task_id: int) -> str:
    """``<root>/<host>/task-<id>.json``: one task's ledger under a ledgers root (a store key or a folder)."""
    return clean_key(f"{root}/{host_folder(host)}/{LEDGER_FILE.format(task_id=int(task_id))}")


def ledger_key(prefix: str, host: str, task_id: int) -> str:
    """``<prefix>/ledgers/<host>/task-<id>.json``: the store key of one CVAT task's upload ledger."""
    return ledger_in(ledgers_root(prefix), host, task_id)


def relative_link(stage: str, artifact: str, *files: str) -> str:
    """A path relative to the run folder, for links in the run report (always ``/``-separated)."""
    return str(PurePosixPath(stage, artifact, *files))


def read_json(path: Path, what: str) -> Any:
    """A manifest's JSON; a missing, truncated or foreign file is one error naming it and ``what`` it is."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no {what} here") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable {what} ({exc})") from None


def read_optional_json(path: Path) -> Any:
    """A manifest's JSON, or None when the file is not there (a stage that did not run)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_text(path: Path, text: str) -> Path:
    """Write through a temporary file and a rename, so a reader never sees half of a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


def write_json(path: Path, document: Any, *, indent: int = 1) -> Path:
    """Write a manifest atomically (see :func:`write_text`)."""
    return write_text(path, json.dumps(document, indent=indent) + "\n")


_Manifest = TypeVar("_Manifest", bound="Manifest")


class Manifest:
    """A stage's JSON manifest: a dataclass with a fixed file name, written atomically, read with one-line errors.

    The stage that writes a manifest and every stage or tool that reads it share the subclass, so a
    field is renamed in one place. Optional fields left at None are not written.
    """

    FILE: ClassVar[str]
    WHAT: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        optional = {f.name for f in dataclasses.fields(self) if f.default is None}  # type: ignore[arg-type]
        return {name: value for name, value in dataclasses.asdict(self).items()  # type: ignore[call-overload]
                if value is not None or name not in optional}

    def write(self, folder: Path) -> Path:
        return write_json(folder / self.FILE, self.to_json())

    @classmethod
    def read(cls: type[_Manifest], folder: Path) -> _Manifest:
        path = folder / cls.FILE
        document = read_json(path, cls.WHAT)
        if not isinstance(document, dict):
            raise DatasetError(f"{path}: not a {cls.WHAT} (a JSON object was expected)")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        missing = [f.name for f in fields if f.name not in document
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise DatasetError(f"{path}: {cls.WHAT} lacks {', '.join(missing)}")
        return cls(**{f.name: document[f.name] for f in fields if f.name in document})

    @classmethod
    def read_if_present(cls: type[_Manifest], folder: Path) -> _Manifest | None:
        """The manifest, or None when the folder has none (a stage that did not run, or not ours)."""
        return cls.read(folder) if (folder / cls.FILE).is_file() else None


@dataclass(frozen=True)
class BaseModelManifest(Manifest):
    """``base-model/base-model.json``, written by pull-base-model: which checkpoint training starts from."""

    FILE: ClassVar[str] = BASE_MODEL_MANIFEST
    WHAT: ClassVar[str] = "base model manifest"

    model: str  # catalog name
    uri: str | None  # where the checkpoint came from; None: training starts from scratch
    sha256: str | None = None  # of what was fetched
    pinned: bool | None = None  # whether the catalog (or --base-model-sha256) named that digest
    checkpoint: str | None = None  # the checkpoint prefix inside the artifact (checkpoint/ckpt-N)
    modules: str | None = None  # which parts of the model the checkpoint restores
    trained_on: str | None = None
    note: str | None = None
    labels: list[str] | None = None  # an earlier run's model: the labels its class head was trained on
    mirror: str | None = None  # where it was read instead of ``uri`` (CVAT_ARGO_MODEL_MIRROR or --mirror)
    cache: str | None = None  # the store key it came from instead (base-models/<sha256>); None: fetched


@dataclass(frozen=True)
class TrainedModelManifest(Manifest):
    """``model/model.json``, written by train: what convert needs to rebuild the trained model."""

    FILE: ClassVar[str] = MODEL_MANIFEST
    WHAT: ClassVar[str] = "trained model manifest"

    model: str  # catalog name
    model_spec: dict[str, Any]  # the catalog entry, as JSON (its experiment, backbone, ...)
    experiment: str  # the Model Garden experiment the config started from
    labels: list[str]  # label names in class-id order (1..N)
    input_size: int
    num_classes: int  # labels + background
    arguments: str = ""  # the training arguments as given (epochs=...,batch_size=...)
    # what the base checkpoint restored: {mode, checkpoint, restored: [modules], fresh: [modules, layers]};
    # None: trained from scratch (cvat_argo.training.restore.RestorePlan)
    restored: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExportedModelManifest(Manifest):
    """``exported/model.json``, written by convert: how to serve the exports (pre-annotate, cvat-cli, nuclio).

    Serving needs only ``format`` and ``runtimes`` (and ``tflite``/``saved_model`` for the runtime it
    loads); the rest describes the model for people and the model card.
    """

    FILE: ClassVar[str] = MODEL_MANIFEST
    WHAT: ClassVar[str] = "exported model manifest"

    format: str
    runtimes: list[str]  # what load_detector may run: tflite-fp32, tflite-fp16, saved_model
    version: int | None = None
    model: str | None = None
    experiment: str | None = None
    architecture: str | None = None
    labels: list[str] | None = None
    num_classes: int | None = None
    input_size: int | None = None
    arguments: str | None = None
    masks: bool = False
    score_threshold: float | None = None
    max_detections: int | None = None
    nms_iou_threshold: float | None = None
    source: dict[str, Any] | None = None  # {model_dir, checkpoint, step}
    saved_model: dict[str, Any] | None = None  # {path, signature}
    tflite: dict[str, Any] | None = None  # {available, files, spec, input} or {available: false, reason}
    exports: list[dict[str, Any]] | None = None  # [{file, bytes, sha256}]
    self_test: dict[str, Any] | None = None
    convert_seconds: float | None = None


@dataclass(frozen=True)
class StageManifest(Manifest):
    """``<stage>/manifest.json`` of a local run: every output file's size and digest, written after the outputs."""

    FILE: ClassVar[str] = STAGE_MANIFEST
    WHAT: ClassVar[str] = "stage manifest"

    stage: str
    seconds: float
    files: dict[str, dict[str, Any]]  # path relative to the stage folder -> {bytes, sha256}
    finished: str  # UTC time, ISO 8601
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)  # input artifact -> digest of its files

"""The artifact contract has one owner: engines/artifacts.py.

No other module of the package spells a stage folder, an artifact folder or an artifact file name;
they ask :mod:`cvat_argo.engines.artifacts` (or the pipeline). These tests read the source, so a
new literal ``"model.json"`` or ``root / "train"`` anywhere fails here, naming the file and line.
"""

from __future__ import annotations

import ast
import io
import itertools
import tokenize
from pathlib import Path

import pytest

import cvat_argo
from cvat_argo.engines import artifacts
from cvat_argo.engines.local import LocalRun
from cvat_argo.engines.pipeline import build_pipeline
from cvat_argo.request.spec import TrainingRequest

PACKAGE = Path(cvat_argo.__file__).parent
OWNER = PACKAGE / "engines" / "artifacts.py"

# Literals that equal a contract name but mean something else there.
NOT_THE_CONTRACT = {
    ("steps/dataset.py", "pre-annotate"): "a value of --empty-frames (empty frames are pre-annotated)",
    ("formats/cvat_xml/common.py", "annotations.xml"): "where CVAT's own exports keep their XML",
}


def _constants() -> dict[str, str]:
    """Every string the contract defines (stage, artifact and file names), by value -> constant name."""
    found: dict[str, str] = {}
    for name, value in vars(artifacts).items():
        if not name.isupper():
            continue
        values = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else [value]
        for item in values:
            if isinstance(item, str):
                found.setdefault(item, name)
    return found


CONTRACT = _constants()
# Names that are also plain words ("model", "train", "status") count only where they build a path.
FILE_OR_STAGE = {value for value in CONTRACT if "." in value or "-" in value}
PATH_PART = set(CONTRACT) - FILE_OR_STAGE


def _string_literals(path: Path):
    """(line, value, previous operator) for every plain string literal in a module."""
    previous = ""
    for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if token.type == tokenize.STRING:
            try:
                value = ast.literal_eval(token.string)
            except (ValueError, SyntaxError):  # an f-string
                value = None
            if isinstance(value, str):
                yield token.start[0], value, previous
        if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
            previous = token.string if token.type == tokenize.OP else ""


def _violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == OWNER:
            continue
        relative = path.relative_to(PACKAGE).as_posix()
        for line, value, previous in _string_literals(path):
            if (relative, value) in NOT_THE_CONTRACT:
                continue
            parts = value.split("/") if "/" in value and " " not in value else []
            if value in FILE_OR_STAGE:
                found.append(f"{relative}:{line}: {value!r} (use artifacts.{CONTRACT[value]})")
            elif value in PATH_PART and previous == "/":
                found.append(f"{relative}:{line}: / {value!r} builds an artifact path (use artifacts.{CONTRACT[value]})")
            elif any(part in FILE_OR_STAGE for part in parts) or any(
                    stage in artifacts.STAGE_NAMES and part in PATH_PART for stage, part in itertools.pairwise(parts)):
                found.append(f"{relative}:{line}: {value!r} spells an artifact path")
    return found


def test_no_module_but_the_owner_spells_an_artifact_name():
    assert _violations() == []


def test_the_check_finds_what_it_forbids(tmp_path, monkeypatch):
    """The scan above is not vacuous: a module with the old spellings is caught, line by line."""
    fake = tmp_path / "cvat_argo"
    (fake / "engines").mkdir(parents=True)
    (fake / "engines" / "artifacts.py").write_text("")
    (fake / "report.py").write_text(
        'from pathlib import Path\n'
        'root = Path(".")\n'
        'a = root / "train" / "model"\n'
        'b = "model.json"\n'
        'c = "create-dataset/dataset/dataset.png"\n'
        'd = {"model": 1}  # a dict key that happens to be a word of the contract: fine\n'
        '"""A docstring that mentions model.json is prose: fine."""\n'
    )
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    monkeypatch.setattr(__import__(__name__), "OWNER", fake / "engines" / "artifacts.py")
    assert [v.split(":")[1] for v in _violations()] == ["3", "3", "4", "5"]


def test_every_stage_writes_under_the_key_layout(tmp_path):
    """The pipeline's stage and artifact names are the contract's, and local paths mirror the store keys."""
    pipeline = build_pipeline(TrainingRequest.create(task_id=1))
    assert tuple(s.name for s in pipeline.stages) == artifacts.STAGE_NAMES
    assert pipeline.exit_stage.name == artifacts.RECORD_STATUS
    run = LocalRun(run_id="r1", root=tmp_path / "r1", pipeline=pipeline, store_url=str(tmp_path))
    for stage in pipeline.all_stages():
        for artifact in stage.outputs:
            key = artifacts.artifact_key("", "r1", stage.name, artifact)
            assert run.artifact(artifact) == tmp_path / key
            assert run.artifact_link(artifact, "x.json") == f"{stage.name}/{artifact}/x.json"
    assert [s.name for s in pipeline.stages if s.resumable] == [artifacts.TRAIN]


@pytest.mark.parametrize(("run_id", "stage"), [("a/b", "train"), ("..", "train"), ("r", ""), ("r", "x/y")])
def test_artifact_keys_refuse_what_would_leave_their_folder(run_id, stage):
    with pytest.raises(cvat_argo.CvatArgoError, match="must be one non-empty path component"):
        artifacts.artifact_key("p", run_id, stage, "model")


def test_trained_model_manifest_round_trips_and_names_what_is_wrong(tmp_path):
    manifest = artifacts.TrainedModelManifest(model="m", model_spec={"name": "m"}, experiment="e", labels=["a"],
                                              input_size=256, num_classes=2, arguments="epochs=1")
    manifest.write(tmp_path)
    assert artifacts.TrainedModelManifest.read(tmp_path) == manifest
    (tmp_path / artifacts.MODEL_MANIFEST).write_text('{"model": "m"', encoding="utf-8")
    with pytest.raises(cvat_argo.CvatArgoError, match=r"model\.json: unreadable trained model manifest"):
        artifacts.TrainedModelManifest.read(tmp_path)
    (tmp_path / artifacts.MODEL_MANIFEST).write_text('{"model": "m"}', encoding="utf-8")
    with pytest.raises(cvat_argo.CvatArgoError, match=r"trained model manifest lacks model_spec, experiment"):
        artifacts.TrainedModelManifest.read(tmp_path)

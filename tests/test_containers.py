"""Container images: one Dockerfile per stage image, installing only what the stage needs."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

import cvat_argo
from cvat_argo.engines.images import image_reference
from cvat_argo.engines.pipeline import build_pipeline
from cvat_argo.request.spec import TrainingRequest

REPO = Path(__file__).resolve().parent.parent
CONTAINERS = REPO / "containers"
EXTRAS = {"dataset": {"cvat"}, "pull": set(), "train": {"train"}, "convert": {"train"},
          "annotate": {"train", "cvat", "annotate"}}


def test_package_version_is_single():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == cvat_argo.__version__


def test_every_stage_image_has_a_dockerfile():
    pipeline = build_pipeline(TrainingRequest.create(task_id=1))
    images = {stage.image_name for stage in pipeline.all_stages()}
    assert images == set(EXTRAS)  # every stage image is checked for its extras below
    for image in {*images, "base"}:
        assert (CONTAINERS / image / "Dockerfile").is_file(), image


def test_dockerfiles_install_the_extras_of_their_stage():
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for image, extras in EXTRAS.items():
        text = (CONTAINERS / image / "Dockerfile").read_text()
        installed = set()
        for group in re.findall(r"\[([a-z,]+)\]", text):
            installed |= set(group.split(","))
        assert extras <= installed, f"{image}: installs {installed}, needs {extras}"
        assert installed <= declared, f"{image}: unknown extras {installed - declared}"


def test_build_script_names_images_like_the_workflows():
    script = (CONTAINERS / "build.sh").read_text()
    assert "cvat-argo-" in script and "ghcr.io/cvat-argo" in script
    assert image_reference("train") == "ghcr.io/cvat-argo/cvat-argo-train:0.1.0"

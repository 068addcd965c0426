"""A converted tiny model for the pre-annotation tests, built once per test session.

``CVAT_ARGO_TEST_MODEL`` may name an existing convert output to reuse (handy while developing);
otherwise the model comes from :mod:`trained_model`, which trains and converts a tiny one (its
scores are low: the tests use low thresholds and never depend on label names).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def trained_exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("CVAT_ARGO_TEST_MODEL")
    if given:
        return Path(given)
    pytest.importorskip("official", reason="needs the train extra (tf-models-official)")
    from support.trained_model import converted_ssd

    return converted_ssd(tmp_path_factory).converted


def model_labels(exported: Path) -> tuple[str, ...]:
    from cvat_argo.formats.label_map import read_labels_json

    return tuple(read_labels_json(exported / "labels.json"))

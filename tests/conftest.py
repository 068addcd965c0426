"""Shared fixtures. Tests run offline: no Argo cluster, no network beyond 127.0.0.1."""

from __future__ import annotations

import pytest

from cvat_argo.engines.images import REGISTRY_ENV


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch):
    """The developer's Argo, catalog and registry settings must not leak into what tests render."""
    for name in ("ARGO_SERVER", "ARGO_TOKEN", "ARGO_NAMESPACE", "ARGO_BASE_HREF", "ARGO_SECURE",
                 "ARGO_INSECURE_SKIP_VERIFY", "CVAT_ARGO_CATALOG", REGISTRY_ENV):
        monkeypatch.delenv(name, raising=False)

"""Container images of the pipeline's stages: one image per stage, all from one registry and tag.

The defaults are ``ghcr.io/cvat-argo/cvat-argo-<image>:<package version>``, built from
``containers/<image>/Dockerfile``; each stage of :mod:`cvat_argo.engines.pipeline` names its image.
``CVAT_ARGO_IMAGE_REGISTRY`` moves them all to another registry (a private mirror); a catalog entry
may name other images for its own model.
"""

from __future__ import annotations

import os

from .. import __version__

DEFAULT_REGISTRY = "ghcr.io/cvat-argo"
REGISTRY_ENV = "CVAT_ARGO_IMAGE_REGISTRY"

# The exit handler only writes a small JSON file: the light pull image has all it needs.
EXIT_HANDLER_IMAGE = "pull"


def image_reference(image: str, registry: str | None = None, tag: str = __version__) -> str:
    """``<registry>/cvat-argo-<image>:<tag>``; the registry comes from the environment when not given."""
    registry = (registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).rstrip("/")
    return f"{registry}/cvat-argo-{image}:{tag}"


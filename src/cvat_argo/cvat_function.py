"""``cvat-cli task auto-annotate --function-module cvat_argo.cvat_function``: the path cvat-cli users type.

The detection function lives in :mod:`cvat_argo.cvat.function`; this module keeps the published
path working (cvat-cli calls ``create`` with the ``-p`` parameters).
"""

from .cvat.function import MODEL_ENV, ModelFunction, create

__all__ = ["MODEL_ENV", "ModelFunction", "create"]

"""cvat-argo: annotate some images in CVAT, train a detector on them, pre-annotate the rest.

The pipeline is declared once (:mod:`cvat_argo.pipeline`) and runs on Argo Workflows
(:mod:`cvat_argo.argo`) or on one machine. Notebook use::

    import cvat_argo
    request = cvat_argo.TrainingRequest.create(task_id=42, args="epochs=10,batch_size=8")
    print(cvat_argo.to_yaml(cvat_argo.build_workflow(request)))
    run = cvat_argo.submit(request)          # ARGO_SERVER / ARGO_TOKEN from the environment
    run.wait()
    local = cvat_argo.run_locally(request)   # or the same pipeline on this machine, no cluster
"""

__version__ = "0.1.0"

from .catalog import Catalog, load_catalog
from .errors import ArgumentError, CatalogError, CvatArgoError, RequestError, SubmitError
from .spec import Arguments, DatasetSource, TrainingRequest


def __getattr__(name: str):
    """Argo-side helpers import Hera; load them on first use so `import cvat_argo` stays light."""
    if name in ("build_workflow", "build_workflow_template"):
        from . import argo

        return getattr(argo, name)
    if name in ("submit", "Submission", "ArgoConnection"):
        from . import submission

        return getattr(submission, name)
    if name == "run_locally":
        from .local import run_locally

        return run_locally
    if name == "build_pipeline":
        from .pipeline import build_pipeline

        return build_pipeline
    raise AttributeError(f"module 'cvat_argo' has no attribute {name!r}")


__all__ = [
    "ArgumentError",
    "Arguments",
    "Catalog",
    "CatalogError",
    "CvatArgoError",
    "DatasetSource",
    "RequestError",
    "SubmitError",
    "TrainingRequest",
    "__version__",
    "build_pipeline",
    "build_workflow",
    "build_workflow_template",
    "load_catalog",
    "run_locally",
    "submit",
    "to_yaml",
]

"""cvat-argo: annotate some images in CVAT, train a detector on them, pre-annotate the rest.

The pipeline is declared once (:mod:`cvat_argo.engines.pipeline`) and runs on Argo Workflows
(:mod:`cvat_argo.engines.argo`) or on one machine (:mod:`cvat_argo.engines.local`). The package is a
house with wings, one concern each: ``request``, ``engines``, ``steps``, ``storage``, ``data``,
``formats``, ``training``, ``export``, ``inference``, ``cvat`` and ``reports`` (see the README's
Layout). Notebook use::

    import cvat_argo
    request = cvat_argo.TrainingRequest.create(task_id=42, args="epochs=10,batch_size=8")
    print(cvat_argo.to_yaml(cvat_argo.build_workflow(request)))
    run = cvat_argo.submit(request)          # ARGO_SERVER / ARGO_TOKEN from the environment
    run.wait()
    local = cvat_argo.run_locally(request)   # or the same pipeline on this machine, no cluster
"""

__version__ = "0.1.0"

from importlib import import_module

from .errors import ArgumentError, CatalogError, CvatArgoError, RequestError, SubmitError

#: Public names and the modules that define them, imported on first use: the steps import this
#: package too, and pydantic, YAML and Hera would add a fifth of a second to every stage's start.
_LAZY = {
    "Catalog": "request.catalog", "load_catalog": "request.catalog",
    "Arguments": "request.spec", "DatasetSource": "request.spec", "TrainingRequest": "request.spec",
    "build_workflow": "engines.argo", "build_workflow_template": "engines.argo",
    "submit": "engines.submission", "Submission": "engines.submission", "ArgoConnection": "engines.submission",
    "run_locally": "engines.local",
    "build_pipeline": "engines.pipeline",
    "to_yaml": "engines.yamlio",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cvat_argo' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


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

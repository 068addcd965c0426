# %% [markdown]
# # cvat-argo from a notebook (an Onepanel-style workspace)
#
# Build a training request, look at the DAG it becomes, then either submit it to Argo or run it
# right here, and read the metrics and the pre-annotations. Run it cell by cell (VS Code, Jupyter
# with jupytext) or as a script: `python examples/notebook.py`. With `ARGO_SERVER` set it submits
# to the cluster; without, it runs the same pipeline locally on a small generated CVAT task.

# %%
import json
import os
from pathlib import Path

import cvat_argo
from cvat_argo.data.synthetic import generate_task

# %% [markdown]
# ## The request: a CVAT task (or an export), a model by its CVAT name, the usual argument string

# %%
if os.environ.get("ARGO_SERVER"):
    request = cvat_argo.TrainingRequest.create(task_id=int(os.environ.get("CVAT_TASK_ID", "42")),
                                               model="ssd-mobilenet-v2-coco", machine="gpu-1",
                                               args="epochs=30,batch_size=16")
else:
    data = generate_task(Path("runs/notebook-data"), images=60, seed=1)
    request = cvat_argo.TrainingRequest.create(source=str(data.export.resolve()), model="ssd-mobilenet-v2-small",
                                               machine="cpu", args="epochs=3,batch_size=8,input_size=128")
print(request.model, request.arguments)

# %% [markdown]
# ## The DAG: the same declaration drives Argo and the local engine

# %%
pipeline = cvat_argo.build_pipeline(request)
for stage in pipeline.topological_order():
    after = ", ".join(stage.depends) or "start"
    print(f"{stage.name:16} after {after:32} python -m {stage.module}")

# %% [markdown]
# ## Submit to Argo, or run here

# %%
if os.environ.get("ARGO_SERVER"):
    submitted = cvat_argo.submit(request)  # ARGO_SERVER / ARGO_TOKEN / ARGO_NAMESPACE from the environment
    print("submitted", submitted.name, "- artifacts under", submitted.artifacts["pre-annotate/annotations"])
    print("finished:", submitted.wait())
else:
    run = cvat_argo.run_locally(request, store="runs")
    metrics = json.loads((run.root / "train" / "model" / "metrics.json").read_text())
    print("validation:", metrics["final"])
    print("per label:", metrics["per_label"])
    summary = json.loads((run.root / "pre-annotate" / "annotations" / "summary.json").read_text())
    print("pre-annotated", summary["images"], "images:", summary["shapes_per_label"])
    print("CVAT XML to import into the task:", run.root / "pre-annotate" / "annotations" / "annotations.xml")
    print("report:", run.root / "report.md")

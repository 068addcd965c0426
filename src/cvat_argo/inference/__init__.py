"""An exported model in use: :mod:`.serving` loads it and detects; :mod:`.outputs` turns detections into shapes.

The nuclio bundle copies these two modules and what they import, so they import nothing heavier than
the artifact contract (:mod:`cvat_argo.engines.artifacts`): no Hera, no pydantic, no CVAT client, and
TensorFlow only when a SavedModel is loaded.
"""

"""The way back into CVAT: one connection, the upload, the cvat-cli function, the nuclio bundle, QC.

:mod:`.connection` is the one way to connect to a CVAT server (cvat-cli's flags and variables, the
organization, TLS); :mod:`.server` reads its tasks and jobs;
:mod:`.upload` adds pre-annotations to a task without touching frames people annotated;
:mod:`.function` is the ``cvat_sdk.auto_annotation`` function (published as ``cvat_argo.cvat_function``);
:mod:`.nuclio` writes a serverless function for CVAT; :mod:`.qc` reports what reviewers did.
"""

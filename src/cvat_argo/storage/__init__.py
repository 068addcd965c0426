"""Where bytes come from and go to: the artifact store, fetching sources, safe archive extraction.

- :mod:`~cvat_argo.storage.store`: a run's artifacts, in a local folder or a MinIO/S3 bucket.
- :mod:`~cvat_argo.storage.fetch`: a source a user names (https://, gs://, s3://, a path) to local disk.
- :mod:`~cvat_argo.storage.archive`: zip and tar archives extracted without escaping their folder.
- :mod:`~cvat_argo.storage.digest`: the chunked sha256 of a file.
"""

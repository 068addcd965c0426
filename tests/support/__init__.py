"""What the tests stand on, kept apart from the tests themselves.

Fake servers that behave like the real ones where it matters (``fake_argo_server``, ``fake_cvat_server``),
the Argo schema and lint validator (``argo_validation``), loopback S3/HTTP fixtures
(``fixtures_servers``), and builders of tiny datasets and trained models (``tiny_dataset``,
``trained_model``, ``annotate_fixtures``).
"""

"""Annotation and dataset formats, one per module, reader and writer side by side (like Datumaro's plugins)."""

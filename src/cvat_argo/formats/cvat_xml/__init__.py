"""CVAT for images/video 1.1 XML: :mod:`.reader` streams exports in, :mod:`.writer` writes pre-annotations out.

Reader and writer are separate modules so that writing pulls in no XML parser (and reading no
writer); :mod:`.common` holds the little they share.
"""

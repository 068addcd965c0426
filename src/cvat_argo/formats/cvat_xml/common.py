"""What the CVAT XML reader and writer agree on beyond CVAT's own format, and where CVAT puts the XML.

CVAT keeps no confidence for a shape, so a pre-annotation's score travels as an attribute of this
name: the writer declares and fills it, the reader turns it back into ``Shape.score``.
"""

from __future__ import annotations

SCORE_ATTRIBUTE = "score"

#: The file CVAT puts its XML in, inside a "CVAT for images/video 1.1" export archive.
EXPORT_XML = "annotations.xml"

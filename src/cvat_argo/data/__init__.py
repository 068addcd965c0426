"""The data wing: what the dataset stage does to a CVAT export before anything is written.

- :mod:`.sources`: fetch and extract an export, recognise its annotation format, and hand out a
  :class:`~.sources.Reader` of its annotations and a locator of its image files;
- :mod:`.imagefiles`: image bytes for training, passed through untouched or converted once;
- :mod:`.labels`: which task labels train, under which names and ids (``--labels``, ``--rename``);
- :mod:`.split`: the seeded, stratified train/validation split;
- :mod:`.synthetic`: a generated CVAT task export, for the quickstart, the tests and the benchmarks.
"""

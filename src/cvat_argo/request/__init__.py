"""What a user asks for: the training request, its arguments, the model catalog and the machine types.

:mod:`.spec` parses a request and its ``epochs=...,batch_size=...`` arguments; :mod:`.model_entry` is
one catalog entry (a model by the name CVAT users know, mapped to a Model Garden experiment);
:mod:`.catalog` loads ``catalog.yaml`` plus a user's file and resolves a request against it, once;
:mod:`.machines` holds the machine types. Nothing here imports TensorFlow, Hera or an engine.
"""

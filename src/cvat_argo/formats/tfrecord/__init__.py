"""TFRecord files of ``tf.train.Example`` messages, written and read without TensorFlow.

The dataset stage converts CVAT exports to TFRecords; importing TensorFlow alone costs about 3 s and
hundreds of MB, more than the whole conversion, and both formats are small and stable. One concept
per module, each importable without the others:

* :mod:`.records`: TFRecord framing (length, CRC32C) and atomic single-file and sharded writers;
* :mod:`.example`: the ``tf.train.Example`` protobuf codec;
* :mod:`.detection`: the TF Object Detection API keys Model Garden reads, on top of :mod:`.example`.
"""

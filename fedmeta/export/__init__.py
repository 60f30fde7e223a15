"""The meta-model on the edge: ONNX body and head with head-only adaptation in numpy on the
device (``fedmeta.export.onnx_export``, ``onnx_device``; needs the ``edge`` extra), the
same with a LiteRT (TFLite) body and the LiteRT interpreter (``tflite_export``,
``tflite_device``; the ``litert`` extra), a legacy TorchScript program that adapts with
torch alone (``export``), int8 post-training quantisation of an adapted model
(``fedmeta.export.quantize``), and the fit of a model to the fleet's device profiles
(``fedmeta.export.fit``)."""

from .export import export, meta_model, script

__all__ = ["export", "meta_model", "script"]

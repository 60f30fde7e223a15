"""The meta-model on the edge: a TorchScript program that adapts and predicts with torch
alone (``export``), and int8 post-training quantisation of an adapted model
(``fedmeta.export.quantize``)."""

from .export import export, meta_model, script

__all__ = ["export", "meta_model", "script"]

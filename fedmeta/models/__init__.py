"""Plain ``nn.Module`` models, each with a ``body`` (features) and a ``head`` (output)."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .char_lstm import CharLSTM
from .conv4 import Conv4
from .femnist_cnn import FemnistCNN
from .mlp import MLP

MODELS: dict[str, type[nn.Module]] = {"conv4": Conv4, "mlp": MLP, "femnist-cnn": FemnistCNN,
                                   "lstm": CharLSTM}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """The model called ``name`` (one of ``MODELS``) built with ``kwargs``."""
    if name not in MODELS:
        raise ConfigError("model", name, f"one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["CharLSTM", "Conv4", "FemnistCNN", "MLP", "MODELS", "build_model"]

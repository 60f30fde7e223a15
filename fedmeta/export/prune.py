"""Structured pruning of Conv4: whole channels removed, a smaller Conv4 left.

Each block keeps its ``keep`` highest-scoring output channels, scored by

- ``bn``: the absolute batch-norm scale ``|gamma|`` (Liu et al. 2017, "network slimming":
  a channel whose normalised output is scaled towards 0 contributes little);
- ``norm``: the L2 norm of the channel's convolution filter (Li et al. 2017).

The kept channels' filters, biases and batch-norm parameters are sliced out, with the next
convolution's (or the head's) matching input channels, so the result is a Conv4 of
``channels=keep`` that fedmeta trains, adapts and exports like any other. Every block
keeps the same number of channels (Conv4 has one width). The first block's kept channels
compute exactly what they did (batch-norm is per channel); later blocks lose the removed
channels' contributions, which meta-fine-tuning (``fedmeta compress``) recovers.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..meta import Params

CRITERIA = ("bn", "norm")


def _blocks(params: Params) -> int:
    return sum(1 for k in params if k.startswith("body.") and k.endswith(".0.weight"))


def channel_scores(params: Params, block: int, criterion: str) -> torch.Tensor:
    """One score per output channel of ``block`` (higher: more important)."""
    if criterion == "bn":
        return params[f"body.{block}.1.weight"].abs()
    if criterion == "norm":
        return params[f"body.{block}.0.weight"].flatten(1).norm(dim=1)
    raise ConfigError("prune criterion", criterion, f"one of {list(CRITERIA)}")


def prune_conv4(params: Params, keep: int, criterion: str = "bn") -> Params:
    """Conv4 parameters with ``keep`` channels per block (see the module docstring)."""
    blocks = _blocks(params)
    channels = params["body.0.0.weight"].shape[0]
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= channels:
        raise ConfigError("keep", keep, f"an integer in [1, {channels}] (channels per block)")
    out = dict(params)
    previous: torch.Tensor | None = None  # kept input channels of the current block
    for b in range(blocks):
        kept = channel_scores(params, b, criterion).topk(keep).indices.sort().values
        weight = params[f"body.{b}.0.weight"][kept]
        out[f"body.{b}.0.weight"] = weight if previous is None else weight[:, previous]
        for name in ("0.bias", "1.weight", "1.bias"):
            out[f"body.{b}.{name}"] = params[f"body.{b}.{name}"][kept]
        previous = kept
    out["head.weight"] = params["head.weight"][:, previous]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}

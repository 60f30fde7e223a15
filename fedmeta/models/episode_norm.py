"""Batch-norm on the statistics of the batch it sees, as few-shot practice uses it."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EpisodeBatchNorm2d(nn.Module):
    """Normalises each channel with the mean and variance of the current batch.

    This is ``nn.BatchNorm2d(track_running_stats=False)`` in training mode (MAML's
    transductive batch-norm: a support or query set is normalised by its own statistics),
    written with plain tensor operations: under ``torch.func.vmap`` the native
    ``batch_norm`` kernel gives a wrong second derivative (torch 2.13, ~2% off on the
    convolution weights; ``tests/test_meta_gradients.py`` catches it), these ops do not.
    Parameter names match ``nn.BatchNorm2d`` (``weight``, ``bias``).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
        scale = torch.rsqrt(var + self.eps) * self.weight[:, None, None]
        return (x - mean) * scale + self.bias[:, None, None]

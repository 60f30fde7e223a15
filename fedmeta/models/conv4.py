"""The standard few-shot Conv4 (Vinyals et al. 2016; Finn et al. 2017)."""

from __future__ import annotations

from torch import Tensor, nn

from .episode_norm import EpisodeBatchNorm2d


def _block(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=3, padding=1),
        EpisodeBatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """4 x [3x3 conv, batch-norm, ReLU, 2x2 max-pool] then a linear head.

    A 28x28 input shrinks to 1x1 after four poolings, so the embedding has ``channels`` values.
    ``body`` is the feature extractor and ``head`` the classifier: ANIL adapts only ``head``
    and Prototypical Networks use only ``body``.
    """

    def __init__(self, n_way: int = 5, in_channels: int = 1, channels: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(in_channels, channels), _block(channels, channels),
            _block(channels, channels), _block(channels, channels), nn.Flatten(),
        )
        self.head = nn.Linear(channels, n_way)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

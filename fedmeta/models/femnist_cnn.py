"""The FEMNIST CNN of LEAF and the FedMeta paper (Chen et al. 2018): two 5x5 convolutions
(32, 64 channels, same padding) each with ReLU and 2x2 max-pooling, a 2048-unit dense layer,
and a linear head over every class (62 on FEMNIST)."""

from __future__ import annotations

from torch import Tensor, nn


class FemnistCNN(nn.Module):
    """28x28 one-channel input -> ``num_classes`` logits; ``body`` then ``head``."""

    def __init__(self, num_classes: int = 62, in_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 2048), nn.ReLU(),
        )
        self.head = nn.Linear(2048, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

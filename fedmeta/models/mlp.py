"""The sinusoid-regression MLP of the MAML paper: 1-40-40-1 with ReLU."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``in_features`` -> hidden layers with ReLU -> ``out_features``; ``body`` then ``head``."""

    def __init__(self, in_features: int = 1, hidden: tuple[int, ...] = (40, 40),
                 out_features: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

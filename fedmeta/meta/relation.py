"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

An embedding ``f`` maps images to feature maps; a class's feature map is the *sum* of its
``K`` support examples' maps, and a relation module ``g`` scores each (class, query) pair
from their concatenated maps::

    r_{k,j} = g(C(sum_{i: y_i = k} f(x_i), f(x_j))) in (0, 1)
    loss    = mean_{k,j} (r_{k,j} - [y_j = k])^2

(mean squared error to the one-hot labels, as in the paper; the paper sums, which differs
only by a constant factor). Here ``f`` is the configured Conv4's body with the pooling of
its last two blocks removed (28x28 -> 64x7x7; the paper's Omniglot embedding pads only its
last two convolutions, giving 64x5x5), and ``g`` is the paper's: two conv blocks
(3x3 conv, batch-norm, ReLU, 2x2 max-pool; 7x7 -> 3x3 -> 1x1) then FC to 8, ReLU, FC to 1,
sigmoid, with a global max-pool before the FCs (the identity for 28x28 images) so that other
image sizes work too. Scoring needs no gradient steps and handles any number of classes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError
from ..models.conv4 import Conv4, _block
from .base import Params
from .episodic import EpisodicLearner


class RelationModel(nn.Module):
    """Embedding ``body`` (Conv4 blocks, the last two without pooling) and ``relation``."""

    def __init__(self, conv4: Conv4) -> None:
        super().__init__()
        self.body = copy.deepcopy(conv4.body[:-1])  # no Flatten: feature maps
        for block in list(self.body)[-2:]:
            block[2] = nn.Identity()  # the MaxPool2d of the last two blocks
        channels = conv4.head.in_features
        self.relation = nn.Sequential(
            _block(2 * channels, channels), _block(channels, channels),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
            nn.Linear(channels, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid(), nn.Flatten(0))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class RelationNet(EpisodicLearner):
    """Relation Networks over a Conv4 (classification only)."""

    name = "relation"

    def build(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, Conv4):
            raise ConfigError("model", type(model).__name__,
                              "conv4 for relation (its relation module compares feature maps)")
        return RelationModel(model)

    def classify(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, n_way: int,
                 steps: int | None = None) -> Tensor:
        """Relation scores ``r_{k,j}`` in (0, 1), shape ``(queries, n_way)``."""
        body = {k[len("body."):]: v for k, v in params.items() if k.startswith("body.")}
        relation = {k[len("relation."):]: v for k, v in params.items()
                    if k.startswith("relation.")}
        support = functional_call(self.model.body, body, (sx,))  # (s, C, h, w)
        onehot = F.one_hot(sy, n_way).to(support.dtype)
        classes = torch.einsum("sk,schw->kchw", onehot, support)  # sums of K shots
        query = functional_call(self.model.body, body, (qx,))  # (q, C, h, w)
        q = query.shape[0]
        pairs = torch.cat([classes.unsqueeze(0).expand(q, *classes.shape),
                           query.unsqueeze(1).expand(q, n_way, *query.shape[1:])], dim=2)
        scores = functional_call(self.model.relation, relation, (pairs.flatten(0, 1),))
        return scores.view(q, n_way)

    def episode_loss(self, out: Tensor, qy: Tensor, n_way: int) -> Tensor:
        return F.mse_loss(out, F.one_hot(qy, n_way).to(out.dtype))

"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query ``x`` is labelled by attention over the support set ``{(x_i, y_i)}``::

    P(y = k | x, S) = sum_i a(x, x_i) [y_i = k],   a(x, x_i) = softmax_i c(f(x), g(x_i))

with ``f = g`` the embedding (here the configured model's ``body``) and ``c`` the cosine
similarity; training minimises ``-log P(y | x, S)`` over the queries. As in common
reimplementations, only the support embeddings are normalised,
``c = f(x) . g(x_i) / |g(x_i)|``: the query's norm then acts as a learned inverse
temperature (with both normalised, ``c`` lies in [-1, 1] and the attention stays nearly
uniform). The full-context embeddings (a bidirectional LSTM ``g`` over the support set and
an attention LSTM ``f``) are omitted, as in the paper's Omniglot results, which do not use
them. Adapting is attending: no gradient steps, any number of classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .base import Params
from .episodic import EpisodicLearner


class Embedding(nn.Module):
    """The configured model's body alone (the learner's module)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class MatchingNet(EpisodicLearner):
    """Matching Networks without full-context embeddings (classification only)."""

    name = "matching"

    def build(self, model: nn.Module) -> nn.Module:
        return Embedding(model.body)

    def classify(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, n_way: int,
                 steps: int | None = None) -> Tensor:
        """Log-probabilities ``log P(y = k | x, S)`` of the queries."""
        support = F.normalize(functional_call(self.model, params, (sx,)), dim=1)
        cosine = functional_call(self.model, params, (qx,)) @ support.T  # (q, s)
        mask = torch.log(F.one_hot(sy, n_way).to(cosine.dtype))  # 0 or -inf, (s, n_way)
        per_class = torch.logsumexp(cosine.unsqueeze(2) + mask.unsqueeze(0), dim=1)
        return per_class - torch.logsumexp(cosine, dim=1, keepdim=True)

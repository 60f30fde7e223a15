"""SNAIL: a Simple Neural AttentIve meta-Learner (Mishra, Rohaninejad, Chen & Abbeel,
ICLR 2018).

An episode is a sequence: the support examples with their labels, then a query without::

    (f(x_1), onehot(y_1)), ..., (f(x_s), onehot(y_s)), (f(x), 0)

embedded by ``f`` (here the configured Conv4's body), read by a causal sequence model, and
the output at the last position is the query's logits; training minimises their
cross-entropy. The sequence model interleaves

- TC blocks: dense layers ``[x, tanh(W_f * x) . sigmoid(W_g * x)]`` where ``*`` is a causal
  1-D convolution of kernel 2 with dilations 1, 2, 4, ...;
- attention blocks: ``[x, softmax(mask(Q K^T / sqrt(d_k))) V]``, each position attending to
  itself and the positions before it (causal mask).

Built small, in the paper's order but not its sizes (Omniglot: attention 64/32, TC 128
filters, attention 256/128, TC 128, attention 512/256, then a 1x1 convolution): here
attention(key 32, value 16) -> TC(16 filters) -> attention -> TC(16) -> attention -> linear,
with four dilation levels per TC block (1, 2, 4, 8: a 16-position receptive field; the
attention sees the whole sequence) where the paper takes ``ceil(log2 T)``, so the parameters
do not depend on the episode's length. Each attention block's key projection starts equal to
its query projection, so attention starts as a similarity (``q . k = |W x|^2`` for equal
inputs): on separable vectors a single attention block so started was at 100% after 250
Adam steps, and still near chance after 400 from independent ones. Every query is its own
sequence (the support positions are computed once per query, as the paper's batch of
sequences does). The label input is one-hot over the model head's ``n_way``, so a SNAIL
model scores only episodes of that many classes; no gradient steps at adaptation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError
from .base import Params
from .episodic import EpisodicLearner

FILTERS, KEY, VALUE, LEVELS = 16, 32, 16, 4  # see the module docstring


class DenseBlock(nn.Module):
    """``[x, tanh(conv_f(x)) * sigmoid(conv_g(x))]`` with a causal dilated convolution."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        f, g = self.conv(F.pad(x, (self.dilation, 0))).chunk(2, dim=1)
        return torch.cat([x, torch.tanh(f) * torch.sigmoid(g)], dim=1)


class AttentionBlock(nn.Module):
    """``[x, causal softmax attention(x)]`` over the time axis."""

    def __init__(self, channels: int, key: int, value: int) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(channels, key), nn.Linear(channels, key)
        self.value = nn.Linear(channels, value)
        with torch.no_grad():  # start as a similarity: q . k = |W x|^2 for equal inputs
            self.key.weight.copy_(self.query.weight)
            self.key.bias.copy_(self.query.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        h = x.transpose(1, 2)  # (B, T, C)
        q, k, v = self.query(h), self.key(h), self.value(h)
        logits = q @ k.transpose(1, 2) / math.sqrt(k.shape[-1])
        future = torch.ones(h.shape[1], h.shape[1], dtype=torch.bool,
                            device=h.device).triu(1)
        attended = torch.softmax(logits.masked_fill(future, -math.inf), dim=-1) @ v
        return torch.cat([x, attended.transpose(1, 2)], dim=1)


def tc_block(channels: int) -> tuple[nn.Sequential, int]:
    """``LEVELS`` dense blocks of dilations 1, 2, 4, ...; and the channels they output."""
    blocks = []
    for level in range(LEVELS):
        blocks.append(DenseBlock(channels, FILTERS, 2 ** level))
        channels += FILTERS
    return nn.Sequential(*blocks), channels


class SnailModel(nn.Module):
    """Embedding ``body``, causal ``sequence`` model and ``head`` (logits at each position)."""

    def __init__(self, body: nn.Module, features: int, n_way: int) -> None:
        super().__init__()
        self.body = body
        self.n_way = n_way
        layers, channels = [AttentionBlock(features + n_way, KEY, VALUE)], \
            features + n_way + VALUE
        for _ in range(2):
            tc, channels = tc_block(channels)
            layers += [tc, AttentionBlock(channels, KEY, VALUE)]
            channels += VALUE
        self.sequence = nn.Sequential(*layers)
        self.head = nn.Linear(channels, n_way)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Snail(EpisodicLearner):
    """SNAIL over the configured model's body (classification, the head's ``n_way`` only)."""

    name = "snail"
    any_way = False

    def build(self, model: nn.Module) -> nn.Module:
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise ConfigError("model", type(model).__name__,
                              "a model with a linear head (its width is the embedding's, its "
                              "outputs the classes) for snail")
        return SnailModel(model.body, head.in_features, head.out_features)

    def classify(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, n_way: int,
                 steps: int | None = None) -> Tensor:
        """Logits at each query's sequence's last position, ``(queries, n_way)``."""
        if n_way != self.model.n_way:
            raise ValueError(f"this snail model reads {self.model.n_way}-way episodes, "
                             f"not {n_way}-way")
        sub = {name: {k[len(name) + 1:]: v for k, v in params.items()
                      if k.startswith(name + ".")} for name in ("body", "sequence", "head")}
        support = functional_call(self.model.body, sub["body"], (sx,))
        support = torch.cat([support, F.one_hot(sy, n_way).to(support.dtype)], dim=1)
        query = functional_call(self.model.body, sub["body"], (qx,))
        query = torch.cat([query, query.new_zeros(query.shape[0], n_way)], dim=1)
        sequences = torch.cat([support.unsqueeze(0).expand(len(query), *support.shape),
                               query.unsqueeze(1)], dim=1)  # (q, s + 1, features + n_way)
        out = functional_call(self.model.sequence, sub["sequence"],
                              (sequences.transpose(1, 2),))
        return functional_call(self.model.head, sub["head"], (out[:, :, -1],))

"""Episodes of varying way and shot: Meta-Dataset's sampler (Triantafillou et al., ICLR 2020).

For one episode, with ``|Im(c)|`` the images of class ``c`` (Sec. 3.2 of the paper):

1. way ``N`` uniform in ``[min_way, min(max_way, classes)]`` (paper: 5 to 50), ``N``
   distinct classes uniformly;
2. queries per class ``q = min(max_query, min_c floor(|Im(c)| / 2))`` (paper: 10);
3. support size ``|S| = min(max_support, sum_c ceil(beta * min(max_shot, |Im(c)| - q)))``
   with ``beta ~ U(0, 1]`` (paper: 500 and 100);
4. shots ``k_c = min(floor(R_c / sum R * (|S| - N)) + 1, |Im(c)| - q)`` with
   ``R_c = exp(a_c) * |Im(c)|``, ``a_c ~ U(log 0.5, log 2)``: class imbalance.

Simplified from the paper: one dataset at a time (no sampling of a source among several)
and classes drawn uniformly (no ImageNet-hierarchy or Omniglot-alphabet class selection).
Labels are ``0..N-1`` in random order; the support holds each class's ``k_c`` shots, class
after class, the query ``q`` images per class.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .episode import Episode
from .fewshot import as_images, floats


class VaryingTaskSource:
    """Meta-Dataset episodes over labelled images (``(n, [C,] H, W)``, float or uint8).

    Every class needs 2 images (one support, one query); fewer is a ``DataError`` naming it.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, min_way: int, max_way: int,
                 max_shot: int, max_query: int, max_support: int,
                 class_names: list[str] | None = None) -> None:
        for field, value in (("min_way", min_way), ("max_way", max_way),
                             ("max_shot", max_shot), ("max_query", max_query),
                             ("max_support", max_support)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(field, value, "an integer >= 1")
        if not 2 <= min_way <= max_way <= max_support:
            raise ConfigError("min_way, max_way, max_support", [min_way, max_way, max_support],
                              "2 <= min_way <= max_way <= max_support")
        self.images, labels = as_images(images), np.asarray(labels)
        if labels.shape != self.images.shape[:1]:
            raise DataError(f"few-shot data: images {self.images.shape} and labels "
                            f"{labels.shape} must be (n, [C,] H, W) and (n,)")
        classes, counts = np.unique(labels, return_counts=True)
        if (counts < 2).any():
            c = classes[np.argmax(counts < 2)]
            name = class_names[int(c)] if class_names is not None else c
            raise DataError(f"class {name!r} has {counts.min()} image(s); Meta-Dataset "
                            f"episodes need 2 of every class (a support and a query image)")
        if len(classes) < min_way:
            raise DataError(f"{len(classes)} classes, fewer than min_way = {min_way}")
        self.min_way, self.max_way = int(min_way), int(min(max_way, len(classes)))
        self.max_shot, self.max_query, self.max_support = max_shot, max_query, max_support
        rows = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
        self._index, self._counts = rows, counts
        self.num_classes = len(classes)

    def sample(self, rng: np.random.Generator) -> Episode:
        """One episode, determined by ``rng``."""
        way = int(rng.integers(self.min_way, self.max_way + 1))
        chosen = rng.choice(self.num_classes, way, replace=False)
        counts = self._counts[chosen]
        query = min(self.max_query, int(counts.min()) // 2)
        beta = 1.0 - rng.random()  # (0, 1]: at least one shot per class
        size = min(self.max_support,
                   int(np.ceil(beta * np.minimum(self.max_shot, counts - query)).sum()))
        weight = np.exp(rng.uniform(math.log(0.5), math.log(2.0), way)) * counts
        shots = np.minimum(np.floor(weight / weight.sum() * (size - way)).astype(np.int64) + 1,
                           counts - query)
        labels = rng.permutation(way)
        support, query_x = [], []
        for c, k in zip(chosen, shots):
            rows = self._index[c]
            block = floats(self.images[rows[rng.choice(len(rows), int(k) + query,
                                                       replace=False)]])
            support.append(block[:k])
            query_x.append(block[k:])
        return Episode(torch.from_numpy(np.concatenate(support)),
                       torch.from_numpy(np.repeat(labels, shots)),
                       torch.from_numpy(np.concatenate(query_x)),
                       torch.from_numpy(np.repeat(labels, query)),
                       way)

"""Meta-batches whose episodes differ in shape (way, shots, queries): one shape at a time.

A learner's ``meta_update`` and ``evaluate`` take an ``EpisodeBatch``: episodes of one shape
stacked. Every learner's direction is the mean over the batch's tasks of a per-task
direction (``maml.mean_over_tasks``; Reptile's ``theta - mean(phi)`` too), so a batch of
mixed shapes is split into groups of one shape and the groups' directions and metrics are
averaged with weights ``len(group) / len(batch)``: the per-episode loop's result, up to
float rounding. Episodes of Meta-Dataset's sampler almost never share a shape, so this is
that loop, one episode at a time. A batch of one shape goes through unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from ..tasks.episode import Episode, stack_episodes
from .base import MetaLearner, MetaUpdate, Params


def shape_groups(episodes: Sequence[Episode]) -> list[list[int]]:
    """Indices of the episodes of each shape (support, query, way), in first-seen order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(episodes):
        groups[(tuple(e.support_x.shape), tuple(e.query_x.shape), e.n_way)].append(i)
    return list(groups.values())


def meta_update_episodes(learner: MetaLearner, params: Params, episodes: Sequence[Episode],
                         device: torch.device | str = "cpu") -> MetaUpdate:
    """``learner.meta_update`` on ``episodes`` of any shapes (moved to ``device``)."""
    groups = shape_groups(episodes)
    if len(groups) == 1:
        return learner.meta_update(params, stack_episodes(episodes).to(device))
    direction: Params = {}
    metrics: dict[str, float] = {}
    common: set[str] | None = None  # a metric some group lacks (NaN accuracy) is no mean
    for group in groups:
        share = len(group) / len(episodes)
        update = learner.meta_update(params, stack_episodes([episodes[i] for i in group])
                                     .to(device))
        for k, v in update.direction.items():
            direction[k] = direction[k] + share * v if k in direction else share * v
        for k, v in update.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + share * v
        common = set(update.metrics) if common is None else common & set(update.metrics)
    return MetaUpdate(direction, {k: metrics[k] for k in metrics if k in (common or set())})


def evaluate_episodes(learner: MetaLearner, params: Params, episodes: Sequence[Episode],
                      steps: int | None = None,
                      device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """``learner.evaluate`` on ``episodes`` of any shapes: per-episode scores in order."""
    groups = shape_groups(episodes)
    if len(groups) == 1:
        return learner.evaluate(params, stack_episodes(episodes).to(device), steps)
    parts = [(group, learner.evaluate(params, stack_episodes([episodes[i] for i in group])
                                      .to(device), steps)) for group in groups]
    order = torch.tensor([i for group, _ in parts for i in group])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return {m: torch.cat([scores[m].cpu() for _, scores in parts])[inverse]
            for m in parts[0][1]}

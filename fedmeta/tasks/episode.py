"""One few-shot task: a support set to adapt on and a query set to score on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Episode:
    """Support/query tensors of one task.

    Classification: ``x`` is ``(n, 1, 28, 28)`` float, ``y`` int64 labels in ``[0, n_way)``.
    Regression: ``x`` and ``y`` are ``(n, 1)`` float and ``n_way`` is ``None``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    n_way: int | None = None

    @property
    def is_classification(self) -> bool:
        return self.n_way is not None


@dataclass(frozen=True)
class EpisodeBatch:
    """Episodes of one shape stacked along a leading task dimension (for ``vmap``)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    n_way: int | None

    @property
    def is_classification(self) -> bool:
        return self.n_way is not None

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> "EpisodeBatch":
        """The batch on ``device`` (one transfer per tensor; itself if already there)."""
        return EpisodeBatch(self.support_x.to(device), self.support_y.to(device),
                            self.query_x.to(device), self.query_y.to(device), self.n_way)


def stack_episodes(episodes: Sequence[Episode]) -> EpisodeBatch:
    """Stack episodes that share N-way, shot and query counts into one batch."""
    if not episodes:
        raise ValueError("stack_episodes needs at least one episode")
    first = episodes[0]
    for i, ep in enumerate(episodes):
        if (ep.n_way != first.n_way or ep.support_x.shape != first.support_x.shape
                or ep.query_x.shape != first.query_x.shape):
            raise ValueError(
                f"episode {i} has support {tuple(ep.support_x.shape)} / query "
                f"{tuple(ep.query_x.shape)} / n_way {ep.n_way}, but episode 0 has "
                f"{tuple(first.support_x.shape)} / {tuple(first.query_x.shape)} / "
                f"{first.n_way}: a meta-batch needs episodes of one shape")
    return EpisodeBatch(
        torch.stack([e.support_x for e in episodes]),
        torch.stack([e.support_y for e in episodes]),
        torch.stack([e.query_x for e in episodes]),
        torch.stack([e.query_y for e in episodes]),
        first.n_way,
    )


def unstack(batch: EpisodeBatch, i: int) -> Episode:
    """The ``i``-th episode of a batch."""
    return Episode(batch.support_x[i], batch.support_y[i], batch.query_x[i],
                   batch.query_y[i], batch.n_way)


class TaskSource(Protocol):
    """Anything that draws episodes from a task distribution with a given generator."""

    def sample(self, rng: np.random.Generator) -> Episode: ...


def sample_batch(source: TaskSource, rng: np.random.Generator, n: int) -> list[Episode]:
    """``n`` episodes from ``source``, in order, with ``rng``."""
    return [source.sample(rng) for _ in range(n)]

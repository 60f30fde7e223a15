"""Scoring a meta-model on given episodes of any shapes: episodes of one shape together."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import DataError
from .meta import MetaLearner, Params
from .meta.base import check_positive
from .meta.evaluation import METRICS
from .tasks.episode import Episode, stack_episodes

PROGRESS_FROM = 50  # episodes; fewer are scored without a progress bar


def head_classes(learner: MetaLearner) -> int | None:
    """How many classes the learner's model tells apart; ``None`` if any number (ProtoNet,
    Matching and Relation Networks, LEO)."""
    if learner.any_way:
        return None
    head = learner.model.head
    return head.out_features if isinstance(head, nn.Linear) else None


def check_class_counts(learner: MetaLearner, episodes: Mapping[str, Episode]) -> None:
    """Raise ``DataError`` for the first episode whose class count the model cannot score."""
    classes = head_classes(learner)
    for name, episode in episodes.items():
        if classes is not None and episode.n_way != classes:
            raise DataError(
                f"episode {name}: has {episode.n_way} classes but the checkpoint's "
                f"{learner.name} model classifies {classes}; it can only score {classes}-way "
                f"episodes (a protonet, matching, relation or leo checkpoint scores any number)")


def score_episodes(learner: MetaLearner, params: Params, episodes: Mapping[str, Episode],
                   steps: int | None = None,
                   device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per-episode ``pre_loss``, ``pre_acc``, ``post_loss`` and ``post_acc`` (float64 arrays).

    Each episode is adapted on its support set for ``steps`` steps (default: the learner's
    ``eval_steps``) and scored on its query set by ``learner.evaluate``. Episodes may differ
    in shape: those of one shape (support and query sizes, class count) are scored together
    (batched, see ``MetaLearner.evaluate``), and the rows come back in ``episodes``' order.
    Computes on ``device`` (each group moved there once). Checks class counts first.
    """
    if steps is not None:
        check_positive("steps", steps, integer=True)
    check_class_counts(learner, episodes)
    groups: dict[tuple, list[int]] = defaultdict(list)
    listed = list(episodes.values())
    for i, episode in enumerate(listed):
        groups[_shape(episode)].append(i)
    rows = {m: np.empty(len(listed)) for m in METRICS}
    params = {k: v.to(device) for k, v in params.items()}
    bar = tqdm(total=len(listed), desc="episodes", unit="episode",
               disable=True if len(listed) < PROGRESS_FROM else None)
    for indices in groups.values():
        batch = stack_episodes([listed[i] for i in indices]).to(device)
        scores = learner.evaluate(params, batch, steps)
        for m in METRICS:
            rows[m][indices] = scores[m].double().cpu().numpy()
        bar.update(len(indices))
    bar.close()
    return rows


def _shape(episode: Episode) -> tuple:
    return (tuple(episode.support_x.shape), tuple(episode.query_x.shape), episode.n_way)

"""A device's work in one round, without any transport: local meta-steps and scoring.

``local_meta_train`` takes ``steps`` SGD steps of size ``lr`` along the learner's direction on
fresh meta-batches from the device's own tasks and returns the pseudo-gradient
``theta - theta_local``; with one step of size 1 that is exactly the learner's direction, so
the server's optimizer step equals a central meta-training step (Chen et al. 2018).
Computation runs on ``device`` (episodes built on the CPU, moved once per meta-batch); what
comes back (pseudo-gradient, scores) is on the CPU, ready to send.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .meta import MetaLearner, Params
from .meta.evaluation import METRICS
from .meta.shapes import evaluate_episodes, meta_update_episodes
from .tasks.episode import Episode, TaskSource, sample_batch


@dataclass(frozen=True)
class LocalUpdate:
    """The pseudo-gradient of a device's local steps and the episodes they used."""

    delta: Params
    episodes: int
    scores: dict[str, np.ndarray]


def score(learner: MetaLearner, params: Params, episodes: list[Episode], steps: int,
          device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per-episode pre/post-adaptation loss and accuracy (float64) after ``steps`` steps;
    ``steps=0`` scores without adapting (post equals pre). ``params`` are on ``device``,
    where the episodes (of any shapes) are moved."""
    scores = evaluate_episodes(learner, params, episodes, steps, device)
    return {m: scores[m].double().cpu().numpy() for m in METRICS}


def local_meta_train(learner: MetaLearner, params: Params, source: TaskSource,
                     rng: np.random.Generator, steps: int, lr: float, meta_batch: int,
                     score_steps: int, device: torch.device | str = "cpu") -> LocalUpdate:
    """``steps`` local meta-steps from ``params``; scores are of ``params`` on those episodes.

    The pseudo-gradient is accumulated as ``sum lr * direction`` (equal to
    ``theta - theta_local``, without the rounding of a subtraction).
    """
    theta = {k: v.detach().to(device) for k, v in params.items()}
    local, delta = theta, {k: torch.zeros_like(v) for k, v in theta.items()}
    episodes: list[Episode] = []
    for _ in range(steps):
        batch = sample_batch(source, rng, meta_batch)
        direction = meta_update_episodes(learner, local, batch, device).direction
        step = {k: lr * direction[k].detach() for k in theta}
        local = {k: local[k] - step[k] for k in theta}
        delta = {k: delta[k] + step[k] for k in theta}
        episodes += batch
    return LocalUpdate({k: v.cpu() for k, v in delta.items()}, steps * meta_batch,
                       score(learner, theta, episodes, score_steps, device))


def evaluate_device(learner: MetaLearner, params: Params, source: TaskSource,
                    rng: np.random.Generator, episodes: int,
                    steps: int, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per-episode scores of ``params`` adapted ``steps`` steps on ``episodes`` fresh tasks,
    computed on ``device``."""
    return score(learner, {k: v.to(device) for k, v in params.items()},
                 sample_batch(source, rng, episodes), steps, device)

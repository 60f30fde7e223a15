"""The statistics membership attacks read from a meta-learner, per candidate.

- Against the meta-model, the candidate is a task: its post-adaptation query loss (the
  meta-model adapted ``steps`` steps on the task's support set).
- Against a device's adapted model, the candidate is an example of one task: the adapted
  model was fitted on the support set (members) and never on the query set (non-members).
  LiRA's shadows are re-adaptations of the same meta-model on random halves of the task's
  examples, so each example is IN about half of them and OUT of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...meta import MetaLearner, Params
from ...tasks.episode import EpisodeBatch
from .lira import logit_confidence


def task_losses(learner: MetaLearner, params: Params, batch: EpisodeBatch,
                steps: int) -> np.ndarray:
    """Each task's query loss after ``steps`` steps of adaptation on its support set."""
    return learner.evaluate(params, batch, steps)["post_loss"].double().numpy()


@dataclass(frozen=True)
class AdaptedModelStats:
    """Per example of every task: member or not, loss and logit confidence under the
    adapted model, and the logit confidences of IN and OUT shadows (NaN elsewhere)."""

    is_member: np.ndarray
    loss: np.ndarray
    target: np.ndarray
    inside: np.ndarray
    outside: np.ndarray


def _true_probability(learner: MetaLearner, params: Params, x: torch.Tensor,
                      y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        probs = torch.softmax(learner.predict(params, x), -1)
    return probs.gather(1, y[:, None])[:, 0].double().numpy()


def adapted_model_stats(learner: MetaLearner, params: Params, batch: EpisodeBatch,
                        steps: int, shadows: int, rng: np.random.Generator
                        ) -> AdaptedModelStats:
    """The attack statistics of ``batch``'s tasks (classification episodes)."""
    parts: list[tuple[np.ndarray, ...]] = []
    detached = {k: v.detach() for k, v in params.items()}
    for t in range(len(batch.support_x)):
        x = torch.cat([batch.support_x[t], batch.query_x[t]])
        y = torch.cat([batch.support_y[t], batch.query_y[t]])
        member = np.arange(len(x)) < len(batch.support_x[t])
        adapted = learner.adapt(detached, batch.support_x[t], batch.support_y[t], steps)
        p = _true_probability(learner, adapted, x, y)
        inside = np.full((len(x), shadows), np.nan)
        outside = np.full((len(x), shadows), np.nan)
        for s in range(shadows):
            chosen = rng.random(len(x)) < 0.5
            if not chosen.any():
                chosen[rng.integers(len(x))] = True
            shadow = learner.adapt(detached, x[torch.from_numpy(chosen)],
                                   y[torch.from_numpy(chosen)], steps)
            conf = logit_confidence(_true_probability(learner, shadow, x, y))
            inside[chosen, s], outside[~chosen, s] = conf[chosen], conf[~chosen]
        parts.append((member, -np.log(np.clip(p, 1e-12, 1)), logit_confidence(p), inside,
                      outside))
    return AdaptedModelStats(*(np.concatenate(column) for column in zip(*parts)))

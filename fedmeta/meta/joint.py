"""Joint training: the plain-learning baseline that federated averaging (FedAvg) runs.

No inner loop in training: the update is the gradient of the loss on each episode's pooled
support and query sets at ``theta``. Evaluation may still fine-tune on a support set
(``fedavg-ft``) or not (``fedavg``, ``eval_steps`` of 0 in the federated layer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tasks.episode import EpisodeBatch
from ..models.batched import expand_params
from .base import (MetaLearner, MetaUpdate, Params, task_accuracies, task_accuracy,
                   task_loss, task_losses)
from .maml import _metrics, autograd_grad, mean_over_tasks


class JointTraining(MetaLearner):
    """Gradient of the pooled task loss at the current parameters."""

    name = "joint"

    def meta_update_loop(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        def task_grad(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            def loss(p: Params):
                out = self.predict(p, torch.cat([sx, qx]))
                y = torch.cat([sy, qy])
                value = task_loss(out, y)
                return value, (value.detach(), task_accuracy(out, y).detach())

            return autograd_grad(loss, params)

        direction, losses, accs = mean_over_tasks(task_grad, batch)
        return MetaUpdate(direction, _metrics(losses, accs))

    def meta_update_batched(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)

        def mean_loss(p: Params):
            out = self.predict_many(expand_params(p, len(batch)), x)
            losses = task_losses(out, y)
            return losses.mean(), (losses.detach(), task_accuracies(out, y).detach())

        direction, (losses, accs) = autograd_grad(mean_loss, params)
        return MetaUpdate(direction, _metrics(losses, accs))

"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Each task's weights are trained for k SGD steps from ``theta``; the meta-update moves
``theta`` toward their mean,

    theta <- theta + eps * (1/B sum_i phi_i - theta).

``meta_update`` returns ``theta - mean(phi)`` as the direction, so an SGD outer step with
learning rate ``eps`` is exactly that rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tasks.episode import EpisodeBatch
from ..models.batched import expand_params
from .base import (MetaLearner, MetaUpdate, Params, task_accuracies, task_accuracy,
                   task_loss, task_losses)
from .maml import Aux, _metrics, mean_over_tasks


class Reptile(MetaLearner):
    """Reptile: adapt on the support set, step toward the adapted weights."""

    name = "reptile"

    def meta_update_loop(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        detached = {k: v.detach() for k, v in params.items()}

        def adapted(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Aux]:
            with torch.no_grad():
                fast = self.adapt(detached, sx, sy)
                out = self.predict(fast, qx)
                return fast, (task_loss(out, qy), task_accuracy(out, qy))

        mean_fast, losses, accs = mean_over_tasks(adapted, batch)
        direction = {k: detached[k] - mean_fast[k] for k in detached}
        return MetaUpdate(direction, _metrics(losses, accs))

    def meta_update_batched(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        detached = {k: v.detach() for k, v in params.items()}
        with torch.no_grad():
            fast = self.adapt_many(expand_params(detached, len(batch)), batch.support_x,
                                   batch.support_y)
            out = self.predict_many(fast, batch.query_x)
            losses, accs = task_losses(out, batch.query_y), task_accuracies(out, batch.query_y)
        direction = {k: detached[k] - fast[k].sum(0) / len(batch) for k in detached}
        return MetaUpdate(direction, _metrics(losses, accs))

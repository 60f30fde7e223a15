"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Each task's weights are trained for k SGD steps from ``theta``; the meta-update moves
``theta`` toward their mean,

    theta <- theta + eps * (1/B sum_i phi_i - theta).

``meta_update`` returns ``theta - mean(phi)`` as the direction, so an SGD outer step with
learning rate ``eps`` is exactly that rule.
"""

from __future__ import annotations

import torch
from torch.func import vmap

from ..tasks.episode import EpisodeBatch
from .base import MetaLearner, MetaUpdate, Params, task_accuracy, task_loss
from .maml import _metrics


class Reptile(MetaLearner):
    """Reptile: adapt on the support set, step toward the adapted weights."""

    name = "reptile"

    def meta_update(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        with torch.no_grad():
            detached = {k: v.detach() for k, v in params.items()}
            fast = vmap(self.adapt, in_dims=(None, 0, 0))(
                detached, batch.support_x, batch.support_y)
            out = vmap(self.predict)(fast, batch.query_x)
            losses = vmap(task_loss)(out, batch.query_y)
            accs = vmap(task_accuracy)(out, batch.query_y)
        direction = {k: detached[k] - fast[k].mean(0) for k in detached}
        return MetaUpdate(direction, _metrics(losses, accs))

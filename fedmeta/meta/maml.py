"""MAML: Model-Agnostic Meta-Learning, second order (Finn, Abbeel & Levine, ICML 2017).

For tasks ``T_i`` with support ``S_i`` and query ``Q_i`` and inner step size ``a``::

    phi_i(theta) = theta - a * grad_theta L_{S_i}(theta)          (k times)
    g            = 1/B sum_i grad_theta L_{Q_i}(phi_i(theta))

The outer gradient flows through the inner updates, Hessian-vector products included:
``torch.func.grad`` of a function that itself calls ``grad``, vectorised over tasks by ``vmap``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from ..tasks.episode import EpisodeBatch
from .base import MetaLearner, MetaUpdate, Params, task_accuracy, task_loss


class MAML(MetaLearner):
    """Second-order MAML; subclasses change how ``adapt`` or ``predict`` work."""

    name = "maml"

    def _query_loss(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor,
                    qy: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out = self.predict(self.adapt(params, sx, sy), qx)
        loss = task_loss(out, qy)
        return loss, (loss.detach(), task_accuracy(out, qy).detach())

    def meta_update(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        def batch_loss(p: Params) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            losses, aux = vmap(self._query_loss, in_dims=(None, 0, 0, 0, 0))(
                p, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
            return losses.mean(), aux

        direction, (losses, accs) = grad(batch_loss, has_aux=True)(params)
        return MetaUpdate(direction, _metrics(losses, accs))


def _metrics(losses: Tensor, accs: Tensor) -> dict[str, float]:
    """Mean post-adaptation query loss (and accuracy, for classification) of a batch."""
    metrics = {"query_loss": float(losses.mean())}
    if not torch.isnan(accs).any():
        metrics["query_acc"] = float(accs.mean())
    return metrics

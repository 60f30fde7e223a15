"""First-order MAML (Finn et al. 2017, section 5.2).

Drops the second-order terms: the meta-gradient is the query-loss gradient taken at the
adapted weights and applied to the initialisation,

    g = 1/B sum_i grad_phi L_{Q_i}(phi)  at  phi = phi_i(theta),

so adaptation needs no graph back to ``theta``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tasks.episode import EpisodeBatch
from ..models.batched import expand_params
from .base import (MetaUpdate, Params, task_accuracies, task_accuracy, task_loss,
                   task_losses)
from .maml import MAML, Aux, _metrics, autograd_grad, mean_over_tasks


class FirstOrderMAML(MAML):
    """MAML without differentiating through the inner loop."""

    name = "fomaml"
    first_order = True

    def meta_update_loop(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        detached = {k: v.detach() for k, v in params.items()}

        def query_grad(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Aux]:
            with torch.no_grad():
                fast = self.adapt(detached, sx, sy)

            def query_loss(p: Params) -> tuple[Tensor, Aux]:
                out = self.predict(p, qx)
                loss = task_loss(out, qy)
                return loss, (loss.detach(), task_accuracy(out, qy).detach())

            return autograd_grad(query_loss, fast)

        direction, losses, accs = mean_over_tasks(query_grad, batch)
        return MetaUpdate(direction, _metrics(losses, accs))

    def meta_update_batched(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        detached = {k: v.detach() for k, v in params.items()}
        with torch.no_grad():
            fast = self.adapt_many(expand_params(detached, len(batch)), batch.support_x,
                                   batch.support_y)

        def query_loss(p: Params) -> tuple[Tensor, Aux]:
            out = self.predict_many(p, batch.query_x)
            losses = task_losses(out, batch.query_y)
            return losses.sum(), (losses.detach(),
                                  task_accuracies(out, batch.query_y).detach())

        per_task, (losses, accs) = autograd_grad(query_loss, fast)
        direction = {k: g.sum(0) / len(batch) for k, g in per_task.items()}
        return MetaUpdate(direction, _metrics(losses, accs))

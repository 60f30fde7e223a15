"""First-order MAML (Finn et al. 2017, section 5.2).

Drops the second-order terms: the meta-gradient is the query-loss gradient taken at the
adapted weights and applied to the initialisation,

    g = 1/B sum_i grad_phi L_{Q_i}(phi)  at  phi = phi_i(theta),

so adaptation needs no graph back to ``theta``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from ..tasks.episode import EpisodeBatch
from .base import MetaUpdate, Params, task_accuracy, task_loss
from .maml import MAML, _metrics


class FirstOrderMAML(MAML):
    """MAML without differentiating through the inner loop."""

    name = "fomaml"

    def meta_update(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        with torch.no_grad():
            detached = {k: v.detach() for k, v in params.items()}
            fast = vmap(self.adapt, in_dims=(None, 0, 0))(
                detached, batch.support_x, batch.support_y)

        def query_loss(p: Params, qx: Tensor, qy: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            out = self.predict(p, qx)
            loss = task_loss(out, qy)
            return loss, (loss.detach(), task_accuracy(out, qy).detach())

        grads, (losses, accs) = vmap(grad(query_loss, has_aux=True))(
            fast, batch.query_x, batch.query_y)
        direction = {k: g.mean(0) for k, g in grads.items()}
        return MetaUpdate(direction, _metrics(losses, accs))

"""Per-FedAvg (Fallah, Mokhtari & Ozdaglar, NeurIPS 2020), the MAML objective in FedAvg.

With support ``D``, query ``D'`` and a third batch ``D''`` for curvature::

    phi = theta - a * grad f(theta, D)
    g   = (I - a * H f(theta, D'')) grad f(phi, D')

The first-order variant (Per-FedAvg FO) drops the Hessian term; the Hessian-free variant
(Per-FedAvg HF) approximates the Hessian-vector product by a central difference of
gradients, ``H v ~ (grad f(theta + d v) - grad f(theta - d v)) / (2 d)``. ``D''`` is the
support set here, so no extra data is drawn.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad

from ..tasks.episode import EpisodeBatch
from ..models.batched import expand_params
from .base import (MetaLearner, MetaUpdate, Params, task_accuracies, task_accuracy,
                   task_loss, task_losses)
from .maml import _metrics, mean_over_tasks


class PerFedAvgFO(MetaLearner):
    """Per-FedAvg, first-order: the query gradient at the one-step-adapted weights."""

    name = "perfedavg-fo"

    def _direction(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor,
                   qy: Tensor) -> tuple[Params, tuple[Tensor, Tensor]]:
        fast = self.adapt(params, sx, sy, steps=1)

        def query_loss(p: Params):
            out = self.predict(p, qx)
            value = task_loss(out, qy)
            return value, (value.detach(), task_accuracy(out, qy).detach())

        return grad(query_loss, has_aux=True)(fast)

    def _directions_many(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor,
                         qy: Tensor) -> tuple[Params, tuple[Tensor, Tensor]]:
        """``_direction`` of every task at once (``params`` lead with the task)."""
        fast = self.adapt_many(params, sx, sy, steps=1)

        def query_loss(p: Params):
            out = self.predict_many(p, qx)
            values = task_losses(out, qy)
            return values.sum(), (values.detach(), task_accuracies(out, qy).detach())

        return grad(query_loss, has_aux=True)(fast)

    def meta_update_loop(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        with torch.no_grad():
            detached = {k: v.detach() for k, v in params.items()}
            direction, losses, accs = mean_over_tasks(
                lambda *task: self._direction(detached, *task), batch)
        return MetaUpdate(direction, _metrics(losses, accs))

    def meta_update_batched(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        with torch.no_grad():
            tasks = expand_params({k: v.detach() for k, v in params.items()}, len(batch))
            per_task, (losses, accs) = self._directions_many(
                tasks, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        direction = {k: v.sum(0) / len(batch) for k, v in per_task.items()}
        return MetaUpdate(direction, _metrics(losses, accs))


class PerFedAvgHF(PerFedAvgFO):
    """Per-FedAvg, Hessian-free: the FO direction corrected by a finite-difference HVP."""

    name = "perfedavg-hf"
    first_order = False
    delta: float = 1e-3

    def _direction(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor,
                   qy: Tensor) -> tuple[Params, tuple[Tensor, Tensor]]:
        v, aux = super()._direction(params, sx, sy, qx, qy)
        support_grad = grad(lambda p: task_loss(self.predict(p, sx), sy))
        plus = support_grad({k: params[k] + self.delta * v[k] for k in params})
        minus = support_grad({k: params[k] - self.delta * v[k] for k in params})
        scale = self.inner_lr / (2 * self.delta)
        return {k: v[k] - scale * (plus[k] - minus[k]) for k in params}, aux

    def _directions_many(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor,
                         qy: Tensor) -> tuple[Params, tuple[Tensor, Tensor]]:
        v, aux = super()._directions_many(params, sx, sy, qx, qy)
        support_grad = grad(lambda p: task_losses(self.predict_many(p, sx), sy).sum())
        plus = support_grad({k: params[k] + self.delta * v[k] for k in params})
        minus = support_grad({k: params[k] - self.delta * v[k] for k in params})
        scale = self.inner_lr / (2 * self.delta)
        return {k: v[k] - scale * (plus[k] - minus[k]) for k in params}, aux

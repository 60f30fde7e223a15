"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

MAML with the inner loop restricted to the head: the body's features of the support set
are computed once, only the head adapts, and the outer (second-order) gradient still
reaches the body through those features. Evaluation computes the query set's features once
too: the body is the same before and after adapting, so only the head runs twice.
"""

from __future__ import annotations

from torch import Tensor
from torch.func import functional_call

from ..models.batched import batched_call, expand_params
from .base import (Params, step_grad, task_accuracies, task_accuracy, task_loss,
                   task_losses)
from .maml import MAML


def _sub(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class ANIL(MAML):
    """Second-order MAML adapting only ``model.head``."""

    name = "anil"

    def adapt(self, params: Params, support_x: Tensor, support_y: Tensor,
              steps: int | None = None) -> Params:
        features = functional_call(self.model.body, _sub(params, "body."), (support_x,))
        head = _sub(params, "head.")
        for _ in range(self.inner_steps if steps is None else steps):
            g = step_grad(lambda h: task_loss(functional_call(self.model.head, h, (features,)),
                                              support_y), head)
            head = {k: head[k] - self.inner_lr * g[k] for k in head}
        return params | {"head." + k: v for k, v in head.items()}

    def adapt_many(self, params: Params, support_x: Tensor, support_y: Tensor,
                   steps: int | None = None) -> Params:
        features = batched_call(self.model.body, _sub(params, "body."), support_x)
        head = _sub(params, "head.")
        for _ in range(self.inner_steps if steps is None else steps):
            g = step_grad(lambda h: task_losses(batched_call(self.model.head, h, features),
                                                support_y).sum(), head)
            head = {k: head[k] - self.inner_lr * g[k] for k in head}
        return params | {"head." + k: v for k, v in head.items()}

    def _scores(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                steps: int, n_way: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        features = functional_call(self.model.body, _sub(params, "body."), (qx,))
        after = _sub(self.adapt(params, sx, sy, steps), "head.")
        before = functional_call(self.model.head, _sub(params, "head."), (features,))
        after = functional_call(self.model.head, after, (features,))
        return (task_loss(before, qy), task_accuracy(before, qy),
                task_loss(after, qy), task_accuracy(after, qy))

    def _scores_many(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                     steps: int, n_way: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tasks = expand_params(params, sx.shape[0])
        features = batched_call(self.model.body, _sub(tasks, "body."), qx)
        before = batched_call(self.model.head, _sub(tasks, "head."), features)
        after = batched_call(self.model.head,
                             _sub(self.adapt_many(tasks, sx, sy, steps), "head."), features)
        return (task_losses(before, qy), task_accuracies(before, qy),
                task_losses(after, qy), task_accuracies(after, qy))

"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017): the metric-based baseline.

A class's prototype is the mean embedding of its support examples; a query is scored by
minus its squared Euclidean distance to each prototype. Only ``model.body`` is learned, and
"adapting" is computing the prototypes, so there is no pre-adaptation score (NaN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..models.batched import batched_call, expand_params
from ..tasks.episode import EpisodeBatch
from .base import (MetaLearner, MetaUpdate, Params, task_accuracies, task_accuracy,
                   task_loss, task_losses)
from .maml import _metrics, autograd_grad, mean_over_tasks


class ProtoNet(MetaLearner):
    """Prototypical Networks over the body of a model (classification only)."""

    name = "protonet"
    few_shot_only = True
    any_way = True

    def init_params(self) -> Params:
        return {k: v for k, v in super().init_params().items() if k.startswith("body.")}

    def embed(self, params: Params, x: Tensor) -> Tensor:
        """Embeddings of ``x`` by the body."""
        body = {k[len("body."):]: v for k, v in params.items()}
        return functional_call(self.model.body, body, (x,))

    def adapt(self, params: Params, support_x: Tensor, support_y: Tensor,
              steps: int | None = None) -> Params:
        """Unchanged parameters: a ProtoNet adapts by computing prototypes, in ``classify``."""
        return params

    def classify(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor,
                 n_way: int) -> Tensor:
        """Logits of the queries: minus squared distances to the support prototypes."""
        onehot = F.one_hot(sy, n_way).to(sx.dtype)
        prototypes = onehot.T @ self.embed(params, sx) / onehot.sum(0).unsqueeze(1)
        return -torch.cdist(self.embed(params, qx), prototypes).pow(2)

    def classify_many(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor,
                      n_way: int) -> Tensor:
        """``classify`` for every task at once (``params`` and tensors lead with the task)."""
        body = {k[len("body."):]: v for k, v in params.items()}
        onehot = F.one_hot(sy, n_way).to(sx.dtype)
        prototypes = (torch.bmm(onehot.transpose(1, 2), batched_call(self.model.body, body, sx))
                      / onehot.sum(1).unsqueeze(2))
        return -torch.cdist(batched_call(self.model.body, body, qx), prototypes).pow(2)

    def meta_update(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        if not batch.is_classification:
            raise ValueError("Prototypical Networks need a classification task")
        return super().meta_update(params, batch)

    def meta_update_batched(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        def mean_loss(p: Params):
            out = self.classify_many(expand_params(p, len(batch)), batch.support_x,
                                     batch.support_y, batch.query_x, batch.n_way)
            losses = task_losses(out, batch.query_y)
            return losses.mean(), (losses.detach(),
                                   task_accuracies(out, batch.query_y).detach())

        direction, (losses, accs) = autograd_grad(mean_loss, params)
        return MetaUpdate(direction, _metrics(losses, accs))

    def meta_update_loop(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        def task_grad(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            def loss(p: Params):
                out = self.classify(p, sx, sy, qx, batch.n_way)
                value = task_loss(out, qy)
                return value, (value.detach(), task_accuracy(out, qy).detach())

            return autograd_grad(loss, params)

        direction, losses, accs = mean_over_tasks(task_grad, batch)
        return MetaUpdate(direction, _metrics(losses, accs))

    def _scores(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                steps: int, n_way: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.classify(params, sx, sy, qx, n_way)
        loss, nan = task_loss(out, qy), torch.full((), math.nan, dtype=out.dtype)
        return nan, nan, loss, task_accuracy(out, qy)

    def _scores_many(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                     steps: int, n_way: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.classify_many(expand_params(params, sx.shape[0]), sx, sy, qx, n_way)
        loss = task_losses(out, qy)
        nan = torch.full_like(loss, math.nan)
        return nan, nan, loss, task_accuracies(out, qy)

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
from torch.func import functional_call, grad, vmap

from ..tasks.episode import EpisodeBatch
from .base import MetaLearner, MetaUpdate, Params, task_accuracy, task_loss
from .maml import _metrics


class ProtoNet(MetaLearner):
    """Prototypical Networks over the body of a model (classification only)."""

    name = "protonet"

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

    def meta_update(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        if not batch.is_classification:
            raise ValueError("Prototypical Networks need a classification task")

        def loss(p: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            out = self.classify(p, sx, sy, qx, batch.n_way)
            value = task_loss(out, qy)
            return value, (value.detach(), task_accuracy(out, qy).detach())

        def batch_loss(p: Params):
            losses, aux = vmap(loss, in_dims=(None, 0, 0, 0, 0))(
                p, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
            return losses.mean(), aux

        direction, (losses, accs) = grad(batch_loss, has_aux=True)(params)
        return MetaUpdate(direction, _metrics(losses, accs))

    def evaluate(self, params: Params, batch: EpisodeBatch,
                 steps: int | None = None) -> dict[str, Tensor]:
        with torch.no_grad():
            out = vmap(lambda sx, sy, qx: self.classify(params, sx, sy, qx, batch.n_way))(
                batch.support_x, batch.support_y, batch.query_x)
            loss = vmap(task_loss)(out, batch.query_y)
            acc = vmap(task_accuracy)(out, batch.query_y)
        nan = torch.full_like(loss, math.nan)
        return {"pre_loss": nan, "pre_acc": nan, "post_loss": loss, "post_acc": acc}

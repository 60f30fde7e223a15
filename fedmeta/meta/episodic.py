"""Learners whose query predictions are a function of the whole episode.

Matching Networks, Relation Networks, SNAIL and LEO do not adapt a fixed model by gradient
steps on the meta-parameters: a query's scores come from the support set directly (a
metric, a learned comparison, a sequence model over the episode, or classifier weights
decoded from the support set). Each defines ``classify(params, sx, sy, qx, n_way)`` and its
loss; the meta-gradient is the gradient of the mean query loss over the batch's episodes,
taken one episode at a time (``mean_over_tasks``). ``learner.model`` is the learner's own
module, built around the configured model's ``body`` (the image embedding); only what
``classify`` uses is a meta-parameter. There is no pre-adaptation score (NaN): without its
support set the model has no classes.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..tasks.episode import EpisodeBatch
from .base import MetaLearner, MetaUpdate, Params, task_accuracy, task_loss
from .maml import _metrics, autograd_grad, mean_over_tasks


class EpisodicLearner(MetaLearner):
    """A classification learner scoring queries from their episode's support set.

    Subclasses build ``self.model`` in ``build`` (from the configured ``model``, which must
    have a ``body``) and define ``classify``; ``episode_loss`` is cross-entropy unless
    overridden (Relation Networks: squared error to the one-hot labels).
    """

    few_shot_only = True
    any_way = True  # SNAIL: only its head's number of classes
    runs_episodes_together = False

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1,
                 eval_steps: int | None = None, batched: bool | None = None,
                 precision: str = "float32") -> None:
        if not isinstance(getattr(model, "body", None), nn.Module):
            raise ConfigError("model", type(model).__name__,
                              f"a model with a body (an embedding) for {self.name}")
        if precision != "float32":  # their episode loops run no autocast
            raise ConfigError("train.precision", precision,
                              f"\"float32\" for {self.name} (bfloat16 covers the MAML family, "
                              f"Reptile, ANIL and Prototypical Networks)")
        super().__init__(model, inner_lr, inner_steps, eval_steps, batched, precision)
        dtype = next(model.parameters()).dtype
        self.model = self.build(model).to(dtype).train()

    @abstractmethod
    def build(self, model: nn.Module) -> nn.Module:
        """The learner's module around ``model.body``."""

    @abstractmethod
    def classify(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, n_way: int,
                 steps: int | None = None) -> Tensor:
        """The queries' scores ``(len(qx), n_way)`` given the support set; ``steps`` is
        LEO's latent steps (``None``: ``inner_steps``), which the metric learners ignore."""

    def episode_loss(self, out: Tensor, qy: Tensor, n_way: int) -> Tensor:
        """The query loss the learner is trained and scored with."""
        return task_loss(out, qy)

    def adapt(self, params: Params, support_x: Tensor, support_y: Tensor,
              steps: int | None = None) -> Params:
        """Unchanged parameters: the support set enters through ``classify``."""
        return params

    def meta_update(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        if not batch.is_classification:
            raise ValueError(f"{self.name} needs a classification task")
        return super().meta_update(params, batch)

    def meta_update_loop(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        def task_grad(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            def loss(p: Params):
                out = self.classify(p, sx, sy, qx, batch.n_way)
                value = self.episode_loss(out, qy, batch.n_way)
                return value, (value.detach(), task_accuracy(out, qy).detach())

            return autograd_grad(loss, params)

        direction, losses, accs = mean_over_tasks(task_grad, batch)
        return MetaUpdate(direction, _metrics(losses, accs))

    def meta_update_batched(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        """The loop: these learners always run one episode at a time
        (``runs_episodes_together`` False)."""
        return self.meta_update_loop(params, batch)

    def _scores(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                steps: int, n_way: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.classify(params, sx, sy, qx, n_way, steps)
        nan = torch.full((), math.nan, dtype=out.dtype)
        return nan, nan, self.episode_loss(out, qy, n_way), task_accuracy(out, qy)

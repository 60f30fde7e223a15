"""What every meta-learner offers: adapt on a support set, a meta-update, and evaluation.

Parameters travel as dicts ``name -> Tensor`` and the model is only a template for
``torch.func.functional_call``, so a learner never mutates a module and every step is a pure
function of its inputs (Finn et al. 2017; the torch.func MAML example).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad

from ..errors import ConfigError
from ..models.batched import batched_call, expand_params, supports_batching
from ..tasks.episode import EpisodeBatch

Params = dict[str, Tensor]

PRECISIONS = ("float32", "bfloat16")
"""``precision`` settings: ``bfloat16`` runs first-order meta-updates and evaluation under
``torch.autocast`` (see ``MetaLearner``)."""

EVAL_IMAGES = 2048
"""Images (support plus query, all tasks) per batched evaluation call: bounds its memory
(about 1 GB of activations for Conv4 on 28x28 images)."""


@dataclass(frozen=True)
class MetaUpdate:
    """A direction to descend, keyed like the meta-parameters, and its batch's metrics.

    For gradient-based learners ``direction`` is the meta-gradient; for Reptile it is
    ``theta - mean(phi)``, so one optimizer step serves every algorithm.
    """

    direction: Params
    metrics: dict[str, float]


def task_loss(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for integer labels, mean squared error for real targets."""
    if target.dtype == torch.int64:
        return F.cross_entropy(output, target)
    return F.mse_loss(output, target)


def task_accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Fraction of correct arg-max predictions (NaN for regression)."""
    if target.dtype == torch.int64:
        return (output.argmax(-1) == target).to(_score_dtype(output)).mean()
    return torch.full((), math.nan, dtype=_score_dtype(output))


def task_losses(output: Tensor, target: Tensor) -> Tensor:
    """``task_loss`` of each task of ``(T, n, ...)`` outputs and targets: shape ``(T,)``."""
    if target.dtype == torch.int64:
        return F.cross_entropy(output.flatten(0, 1), target.flatten(),
                               reduction="none").view(target.shape).mean(1)
    return (output - target).pow(2).flatten(1).mean(1)


def task_accuracies(output: Tensor, target: Tensor) -> Tensor:
    """``task_accuracy`` of each task of ``(T, n, ...)`` outputs and targets: ``(T,)``."""
    if target.dtype == torch.int64:
        return (output.argmax(-1) == target).to(_score_dtype(output)).mean(1)
    return torch.full(target.shape[:1], math.nan, dtype=_score_dtype(output),
                      device=output.device)


def _score_dtype(output: Tensor) -> torch.dtype:
    """Scores in at least float32 (bfloat16 outputs under autocast: an accuracy of 11/15
    would round to 0.734)."""
    return torch.promote_types(output.dtype, torch.float32)


def step_grad(loss_fn: Callable[[Params], Tensor], params: Params) -> Params:
    """``torch.func.grad(loss_fn)(params)``: the gradient an inner step descends.

    Where grad mode is off (first-order learners' inner loops, evaluation: nothing
    differentiates through the step) the same gradient comes from ``torch.autograd`` on
    detached leaves, which does not record a graph of the backward pass (``func.grad``
    always does, for differentiating through it): on Conv4 (one CPU thread, torch 2.13,
    paired on a busy host) first-order MAML 1.12x and evaluation 1.14x faster, Reptile
    unchanged. The kernels, and so the numbers, are the same.
    """
    if torch.is_grad_enabled():
        return grad(loss_fn)(params)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(leaves), list(leaves.values()))
    return dict(zip(leaves, grads))


def check_positive(field: str, value: float | int, integer: bool = False) -> None:
    """Raise ``ConfigError`` unless ``value`` is a positive number (an int if ``integer``)."""
    kind = "a positive integer" if integer else "a positive number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(field, value, kind)


class MetaLearner(ABC):
    """A meta-learning algorithm over a model template.

    ``inner_lr`` and ``inner_steps`` define the adaptation on a support set; ``eval_steps``
    (default ``inner_steps``) is how many steps evaluation adapts for.

    ``precision="bfloat16"`` runs evaluation, and the meta-updates of first-order learners
    (``first_order``), under ``torch.autocast`` to bfloat16 on the episodes' device:
    convolutions and matrix products in bfloat16, losses, batch-norm statistics,
    parameters, gradients and directions in float32. Second-order meta-updates stay in the
    parameters' precision (differentiating through an inner step in bfloat16 is not
    measured here). Default ``float32``: no autocast.

    ``batched`` says how a meta-batch's episodes run: together, one set of kernels for all
    tasks (``True``; the ``*_many`` methods, on parameters with a leading task dimension, see
    ``fedmeta.models.batched``), one at a time (``False``; the reference the tests compare
    against), or ``None`` (default): together where the episodes are on an accelerator, one
    at a time on the CPU, where the loop was measured faster (see ``batches``). Models that
    ``supports_batching`` rejects, and learners that run one episode at a time
    (``runs_episodes_together`` False), refuse ``True``.
    """

    name: str = ""
    first_order: bool = True
    """Whether ``meta_update`` needs no second derivatives (``precision`` applies to it)."""
    few_shot_only = False  # True: classifies N-way K-shot episodes only (metric learners...)
    any_way = False  # True: scores episodes of any number of classes (not its head's)
    runs_episodes_together = True  # False: one episode at a time, whatever ``batched`` says

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1,
                 eval_steps: int | None = None, batched: bool | None = None,
                 precision: str = "float32") -> None:
        check_positive("inner_lr", inner_lr)
        check_positive("inner_steps", inner_steps, integer=True)
        if eval_steps is not None:
            check_positive("eval_steps", eval_steps, integer=True)
        if batched is not None and not isinstance(batched, bool):
            raise ConfigError("batched", batched, "true, false or null (by device)")
        if precision not in PRECISIONS:
            raise ConfigError("precision", precision, f"one of {list(PRECISIONS)}")
        self.model = model.train()
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.eval_steps = int(eval_steps) if eval_steps is not None else self.inner_steps
        self.batched = batched
        self.precision = precision
        self.batchable = self.runs_episodes_together and supports_batching(model)
        if batched and not self.batchable:
            raise ConfigError("train.batched", batched,
                              f"\"auto\" or false for {self.name} on {type(model).__name__} "
                              f"(it runs one episode at a time)")

    def batches(self, batch: EpisodeBatch) -> bool:
        """Whether ``batch``'s episodes run together (see the class docstring).

        By default (``batched=None``) on an accelerator only: on the CPU the loop was faster
        wherever the host was not shared (torch 2.13, Conv4 5-way 1-shot, meta-batch 8,
        benchmarks/results/meta_throughput_avx512.md, a quiet 2-core AMD EPYC with
        AVX-512): batched second-order MAML ran at 0.62x the loop on one thread and 0.53x on
        two, first-order 0.66x and 0.56x, evaluation 0.60x and 0.81x; a task's kernels (75
        query images) already keep a core near oneDNN's rate, and batching only makes the
        working sets T times larger. Batching paid on the CPU only on two threads of a host
        busy with other jobs (1.2-2.5x; meta_throughput.md), where each of the loop's many
        small kernels ends in an OpenMP barrier waiting for a core another job holds.
        """
        if not self.batchable or self.batched is False:
            return False
        return self.batched is True or batch.support_x.device.type != "cpu"

    # -- what a learner defines -------------------------------------------------------------
    def init_params(self) -> Params:
        """Fresh meta-parameters: a detached copy of the template's parameters."""
        return {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def predict(self, params: Params, x: Tensor) -> Tensor:
        """The model's output on ``x`` with parameters ``params``."""
        return functional_call(self.model, params, (x,))

    def adapt(self, params: Params, support_x: Tensor, support_y: Tensor,
              steps: int | None = None) -> Params:
        """Fast weights after ``steps`` SGD steps (``inner_lr``) on the support set."""
        fast = params
        for _ in range(self.inner_steps if steps is None else steps):
            g = step_grad(lambda p: task_loss(self.predict(p, support_x), support_y), fast)
            fast = {k: fast[k] - self.inner_lr * g[k] for k in fast}
        return fast

    def predict_many(self, params: Params, x: Tensor) -> Tensor:
        """``predict`` for every task at once: ``params`` and ``x`` lead with the task."""
        return batched_call(self.model, params, x)

    def adapt_many(self, params: Params, support_x: Tensor, support_y: Tensor,
                   steps: int | None = None) -> Params:
        """``adapt`` for every task at once: the sum of the tasks' support losses has, per
        task, exactly that task's gradient."""
        fast = params
        for _ in range(self.inner_steps if steps is None else steps):
            g = step_grad(lambda p: task_losses(self.predict_many(p, support_x),
                                                support_y).sum(), fast)
            fast = {k: fast[k] - self.inner_lr * g[k] for k in fast}
        return fast

    def autocast(self, batch: EpisodeBatch, applies: bool = True) -> torch.autocast:
        """``torch.autocast`` to bfloat16 on ``batch``'s device where ``precision`` asks for
        it and ``applies``; otherwise a disabled one."""
        return torch.autocast(batch.support_x.device.type, dtype=torch.bfloat16,
                              enabled=applies and self.precision == "bfloat16")

    def meta_update(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        """The direction in which to move ``params`` to improve adaptation on ``batch``."""
        with self.autocast(batch, self.first_order):
            if self.batches(batch):
                return self.meta_update_batched(params, batch)
            return self.meta_update_loop(params, batch)

    @abstractmethod
    def meta_update_loop(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        """``meta_update`` one episode at a time (the reference)."""

    @abstractmethod
    def meta_update_batched(self, params: Params, batch: EpisodeBatch) -> MetaUpdate:
        """``meta_update`` with all episodes together (parameters with a task dimension)."""

    # -- evaluation, the same for every learner ---------------------------------------------
    def _scores(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                steps: int, n_way: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        before = self.predict(params, qx)
        after = self.predict(self.adapt(params, sx, sy, steps), qx)
        return (task_loss(before, qy), task_accuracy(before, qy),
                task_loss(after, qy), task_accuracy(after, qy))

    def evaluate(self, params: Params, batch: EpisodeBatch,
                 steps: int | None = None) -> dict[str, Tensor]:
        """Per-episode query loss and accuracy before and after adapting on the support set.

        Returns tensors of shape ``(len(batch),)`` under ``pre_loss``, ``pre_acc``,
        ``post_loss`` and ``post_acc`` (accuracies are NaN for regression). Batched (see
        ``batches``), in chunks of at most ``EVAL_IMAGES`` images; otherwise one episode at
        a time (on Conv4, CPU, torch 2.13, a loop scores 100 5-way episodes about 6x faster
        than ``vmap`` over them).
        """
        steps = self.eval_steps if steps is None else steps
        with self.autocast(batch):
            return self._evaluate(params, batch, steps)

    def _evaluate(self, params: Params, batch: EpisodeBatch, steps: int) -> dict[str, Tensor]:
        if self.batches(batch):
            return self.evaluate_batched(params, batch, steps)
        with torch.no_grad():
            detached = {k: v.detach() for k, v in params.items()}
            per_episode = [self._scores(detached, batch.support_x[i], batch.support_y[i],
                                        batch.query_x[i], batch.query_y[i], steps, batch.n_way)
                           for i in range(len(batch))]
        return dict(zip(("pre_loss", "pre_acc", "post_loss", "post_acc"),
                        (torch.stack(s) for s in zip(*per_episode))))

    def _scores_many(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                     steps: int, n_way: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tasks = expand_params(params, sx.shape[0])
        before = self.predict_many(tasks, qx)
        after = self.predict_many(self.adapt_many(tasks, sx, sy, steps), qx)
        return (task_losses(before, qy), task_accuracies(before, qy),
                task_losses(after, qy), task_accuracies(after, qy))

    def evaluate_batched(self, params: Params, batch: EpisodeBatch,
                         steps: int) -> dict[str, Tensor]:
        """``evaluate`` with the episodes together, ``EVAL_IMAGES`` images at a time."""
        per_task = batch.support_x.shape[1] + batch.query_x.shape[1]
        chunk = max(1, EVAL_IMAGES // per_task)
        with torch.no_grad():
            detached = {k: v.detach() for k, v in params.items()}
            parts = [self._scores_many(detached, batch.support_x[i:i + chunk],
                                       batch.support_y[i:i + chunk],
                                       batch.query_x[i:i + chunk],
                                       batch.query_y[i:i + chunk], steps, batch.n_way)
                     for i in range(0, len(batch), chunk)]
        return dict(zip(("pre_loss", "pre_acc", "post_loss", "post_acc"),
                        (torch.cat(s) for s in zip(*parts))))

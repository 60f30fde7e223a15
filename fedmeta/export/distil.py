"""Meta-distillation: a smaller student meta-trained so that, adapted on a task's support
set, it predicts the query set as the adapted teacher does.

For an episode with support ``S`` and query ``Q``, teacher meta-parameters ``theta_t`` and
student meta-parameters ``theta_s`` (the same learner, so the same inner rule)::

    z_t = f_t(Q; adapt(theta_t, S))         (no gradient: the teacher is fixed)
    z_s = f_s(Q; adapt(theta_s, S))
    L   = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
          + (1 - alpha) * CE(z_s, y_Q)

(Hinton, Vinyals & Dean 2015, with both models adapted as meta-learning adapts them; the
KL is summed over classes and averaged over queries, the ``T^2`` keeps its gradient's
scale independent of ``T``). The student's meta-gradient is the learner's own kind:
through the inner steps for second-order learners (MAML, ANIL; Per-FedAvg HF exactly,
not by its finite differences), taken at the adapted weights and applied to the
initialisation for first-order ones (FOMAML, Reptile, joint training, Per-FedAvg FO), as
first-order MAML does. Adaptation uses the learner's
training steps (``inner_steps``), as its meta-updates do. Each meta-update averages the
gradients of ``meta_batch`` training episodes and steps the outer optimizer; episodes
come from ``np.random.default_rng(seed)``, so a run is deterministic given its seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoint import Checkpoint
from ..errors import ConfigError
from ..meta import MetaLearner, Params
from ..meta.base import check_positive
from ..meta.maml import autograd_grad
from ..meta.trainer import make_optimizer
from ..tasks.episode import Episode, TaskSource, sample_batch

TEMPERATURE = 4.0
"""Default softmax temperature ``T`` of the KL term."""
ALPHA = 0.5
"""Default weight of the KL term; ``1 - alpha`` weighs the query cross-entropy."""
LEARNERS = ("maml", "fomaml", "anil", "reptile", "joint", "perfedavg-fo", "perfedavg-hf")
"""Learners that adapt by gradient steps and predict logits with the adapted weights."""


def distillation_loss(student_out: Tensor, teacher_out: Tensor, target: Tensor,
                      temperature: float = TEMPERATURE, alpha: float = ALPHA) -> Tensor:
    """``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, target)``."""
    kl = F.kl_div(F.log_softmax(student_out / temperature, -1),
                  F.log_softmax(teacher_out / temperature, -1), reduction="batchmean",
                  log_target=True)
    return alpha * temperature ** 2 * kl + (1 - alpha) * F.cross_entropy(student_out, target)


def teacher_outputs(teacher: MetaLearner, params: Params, episode: Episode) -> Tensor:
    """The teacher's query logits after adapting on the support set (no gradient)."""
    with torch.no_grad():
        detached = {k: v.detach() for k, v in params.items()}
        fast = teacher.adapt(detached, episode.support_x, episode.support_y)
        return teacher.predict(fast, episode.query_x)


def student_grad(student: MetaLearner, params: Params, episode: Episode, target: Tensor,
                 temperature: float = TEMPERATURE,
                 alpha: float = ALPHA) -> tuple[Params, Tensor]:
    """The student's meta-gradient of the episode's distillation loss against the teacher's
    logits ``target``, and the loss (see the module docstring)."""
    sx, sy, qx, qy = episode.support_x, episode.support_y, episode.query_x, episode.query_y

    def loss(out: Tensor) -> tuple[Tensor, Tensor]:
        value = distillation_loss(out, target, qy, temperature, alpha)
        return value, value.detach()

    if student.first_order:
        with torch.no_grad():
            fast = student.adapt({k: v.detach() for k, v in params.items()}, sx, sy)
        grads, value = autograd_grad(lambda p: loss(student.predict(p, qx)), fast)
        return {k: grads[k] for k in params}, value
    return autograd_grad(lambda p: loss(student.predict(student.adapt(p, sx, sy), qx)), params)


def check_settings(algorithm: str, temperature: float, alpha: float,
                   names: tuple[str, str] = ("temperature", "alpha")) -> None:
    """Raise ``ConfigError`` unless checkpoints of ``algorithm`` can be distilled with
    ``temperature`` and ``alpha`` (reported under ``names``)."""
    if algorithm not in LEARNERS:
        raise ConfigError("checkpoint algorithm (distillation)", algorithm,
                          f"one of {list(LEARNERS)}")
    check_positive(names[0], temperature)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError(names[1], alpha, "a number in [0, 1]")


def distil(teacher: Checkpoint, student: Checkpoint, source: TaskSource, iterations: int,
           meta_batch: int, meta_lr: float, optimizer: str = "adam", seed: int = 0,
           temperature: float = TEMPERATURE, alpha: float = ALPHA,
           callback: Callable[[int, float], None] | None = None) -> Checkpoint:
    """``student`` meta-trained ``iterations`` meta-updates to match ``teacher`` after
    adaptation on ``source``'s episodes; ``callback(iteration, mean loss)`` after each."""
    check_settings(teacher.algorithm, temperature, alpha)
    if student.algorithm != teacher.algorithm:
        raise ConfigError("student algorithm", student.algorithm,
                          f"the teacher's ({teacher.algorithm})")
    check_positive("iterations", iterations, integer=True)
    check_positive("meta_batch", meta_batch, integer=True)
    teacher_learner, student_learner = teacher.learner(), student.learner()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in student.params.items()}
    outer = make_optimizer(optimizer, list(params.values()), meta_lr)
    rng = np.random.default_rng(seed)
    for it in range(iterations):
        total: Params = {}
        losses = []
        episodes = sample_batch(source, rng, meta_batch)
        for episode in episodes:
            target = teacher_outputs(teacher_learner, teacher.params, episode)
            grads, value = student_grad(student_learner, params, episode, target,
                                        temperature, alpha)
            total = {k: total[k] + g if k in total else g for k, g in grads.items()}
            losses.append(float(value))
        for k, p in params.items():
            p.grad = total[k] / len(episodes)
        outer.step()
        outer.zero_grad(set_to_none=True)
        if callback is not None:
            callback(it, sum(losses) / len(losses))
    return Checkpoint(student.algorithm, student.model, student.model_kwargs,
                      student.learner_kwargs, {k: v.detach().clone() for k, v in params.items()},
                      student.task)

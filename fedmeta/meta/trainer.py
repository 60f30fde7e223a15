"""Central meta-training: sample a meta-batch, take the learner's meta-update, step."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..tasks.episode import TaskSource, sample_batch
from .base import MetaLearner, MetaUpdate, Params, check_positive
from .shapes import meta_update_episodes

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The outer optimizer ``name`` (``adam`` or ``sgd``) over ``params``."""
    check_positive("meta_lr", lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ConfigError("meta_optimizer", name, f"one of {list(OPTIMIZERS)}")


class MetaTrainer:
    """Meta-trains ``learner``'s parameters with an outer optimizer (Adam or SGD).

    Parameters and optimizer live on ``device``; episodes are built on the CPU and moved
    there once per meta-batch (of each shape in it: ``shapes.meta_update_episodes``).
    """

    def __init__(self, learner: MetaLearner, meta_lr: float = 1e-3,
                 optimizer: str = "adam", device: torch.device | str = "cpu") -> None:
        self.learner = learner
        self.device = torch.device(device)
        self.params = {k: v.to(self.device) for k, v in learner.init_params().items()}
        self.optimizer = make_optimizer(optimizer, list(self.params.values()), meta_lr)

    def step(self, update: MetaUpdate) -> None:
        """Apply one meta-update's direction (moved to ``device``) with the outer optimizer."""
        for k, p in self.params.items():
            p.grad = update.direction[k].detach().to(p.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self, source: TaskSource, iterations: int, meta_batch: int, seed: int = 0,
              progress: bool = True,
              callback: Callable[[int, dict[str, float]], None] | None = None) -> Params:
        """Run ``iterations`` meta-updates of ``meta_batch`` episodes each; return the params.

        Episodes are drawn from ``np.random.default_rng(seed)``, so the same seed (and the
        same initial model) gives the same parameters. ``callback(iteration, metrics)`` is
        called after every step.
        """
        check_positive("iterations", iterations, integer=True)
        check_positive("meta_batch", meta_batch, integer=True)
        rng = np.random.default_rng(seed)
        bar = tqdm(range(iterations), desc=f"meta-train {self.learner.name}",
                   disable=not progress, dynamic_ncols=True)
        for it in bar:
            update = meta_update_episodes(self.learner, self.params,
                                          sample_batch(source, rng, meta_batch), self.device)
            self.step(update)
            bar.set_postfix(update.metrics, refresh=False)
            if callback is not None:
                callback(it, update.metrics)
        return self.params

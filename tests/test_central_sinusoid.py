"""Central meta-training on sinusoid regression: it must learn to adapt, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmeta.errors import ConfigError
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.meta.evaluation import evaluate_source, mean_ci95, summarize
from fedmeta.models import MLP
from fedmeta.tasks.sinusoid import SinusoidTasks


def _train(algorithm: str, seed: int = 0, iterations: int = 1500):
    torch.manual_seed(seed)
    learner = build_learner(algorithm, MLP(), inner_lr=0.01, inner_steps=1, eval_steps=1)
    trainer = MetaTrainer(learner, meta_lr=2e-3)
    params = trainer.train(SinusoidTasks(k_shot=10, q_query=10), iterations, meta_batch=10,
                           seed=seed, progress=False)
    return learner, params


def test_maml_10_shot_one_step_adapts_far_better_than_before_and_than_random_init() -> None:
    tasks = SinusoidTasks(k_shot=10, q_query=10)
    learner, params = _train("maml")
    trained = summarize(evaluate_source(learner, params, tasks, episodes=300, seed=123))
    torch.manual_seed(99)
    scratch = build_learner("maml", MLP(), inner_lr=0.01, inner_steps=1, eval_steps=1)
    random = summarize(evaluate_source(scratch, scratch.init_params(), tasks, episodes=300,
                                       seed=123))
    # one step of 10-shot adaptation: the meta-learned start must gain a lot from it ...
    assert trained["post_loss"] < 0.5 * trained["pre_loss"]
    # ... and end far below what the same step gives from a random initialisation
    assert trained["post_loss"] < 0.5 * random["post_loss"]
    assert random["post_loss"] > 0.8 * random["pre_loss"]


def test_same_seed_same_parameters_different_seed_different() -> None:
    _, a = _train("fomaml", seed=3, iterations=20)
    _, b = _train("fomaml", seed=3, iterations=20)
    _, c = _train("fomaml", seed=4, iterations=20)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_mean_ci95() -> None:
    mean, ci = mean_ci95(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    assert ci == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)


@pytest.mark.parametrize("kwargs, field", [
    ({"k_shot": 0}, "k_shot"), ({"amplitude": (5.0, 0.1)}, "amplitude"),
    ({"amplitude": (-1.0, 1.0)}, "amplitude"), ({"x_range": (0.0, float("nan"))}, "x_range"),
])
def test_bad_sinusoid_ranges_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SinusoidTasks(**kwargs)


@pytest.mark.parametrize("name, kwargs, field", [
    ("mamll", {}, "algorithm"), ("maml", {"inner_lr": 0.0}, "inner_lr"),
    ("maml", {"inner_steps": 1.5}, "inner_steps"), ("reptile", {"inner_steps": -2}, "inner_steps"),
])
def test_bad_learner_arguments_name_the_field(name: str, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_learner(name, MLP(), **kwargs)

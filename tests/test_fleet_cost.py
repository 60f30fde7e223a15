"""The analytic FLOP count of fedmeta.fleet.cost against torch.utils.flop_counter: a Conv4
5-way 1-shot MAML step (the acceptance check, within 5%) and the other learners."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedmeta.fleet import ModelCost, episode_flops
from fedmeta.meta import build_learner
from fedmeta.models import MLP, Conv4
from fedmeta.tasks.episode import EpisodeBatch, unstack



def counted(learner_name: str, model: torch.nn.Module, batch: EpisodeBatch,
            inner_steps: int) -> float:
    learner = build_learner(learner_name, model, inner_lr=0.4, inner_steps=inner_steps)
    with FlopCounterMode(display=False) as counter:
        learner.meta_update(learner.init_params(), batch)
    return counter.get_total_flops()


def omniglot_batch(tasks: int, n_way: int = 5, k_shot: int = 1, queries: int = 15
                   ) -> EpisodeBatch:
    torch.manual_seed(0)
    return EpisodeBatch(torch.randn(tasks, n_way * k_shot, 1, 28, 28),
                        torch.arange(n_way).repeat_interleave(k_shot).repeat(tasks, 1),
                        torch.randn(tasks, n_way * queries, 1, 28, 28),
                        torch.arange(n_way).repeat_interleave(queries).repeat(tasks, 1), n_way)


@pytest.mark.parametrize("learner, inner_steps, queries", [
    ("maml", 1, 15), ("maml", 2, 3), ("fomaml", 2, 3), ("reptile", 3, 3), ("anil", 2, 3),
    ("metasgd", 1, 3), ("joint", 1, 3), ("perfedavg-fo", 1, 3), ("perfedavg-hf", 1, 3)])
def test_conv4_5way_1shot_counts_agree_with_flop_counter(learner: str, inner_steps: int,
                                                         queries: int) -> None:
    model, batch = Conv4(n_way=5), omniglot_batch(tasks=2, queries=queries)
    cost = ModelCost.of(model, (1, 28, 28))
    ours = len(batch) * episode_flops(cost, learner, 5, 5 * queries, inner_steps)
    assert ours == pytest.approx(counted(learner, model, batch, inner_steps), rel=0.05)


@pytest.mark.parametrize("learner", ["maml", "fomaml", "reptile", "perfedavg-fo",
                                     "perfedavg-hf"])
def test_sinusoid_mlp_counts_agree_with_flop_counter(learner: str) -> None:
    torch.manual_seed(0)
    batch = EpisodeBatch(*(torch.randn(3, 10, 1) for _ in range(4)), None)
    model = MLP()
    ours = 3 * episode_flops(ModelCost.of(model, (1,)), learner, 10, 10, 1)
    assert ours == pytest.approx(counted(learner, model, batch, 1), rel=0.05)


@pytest.mark.parametrize("learner, n_way", [("protonet", 5), ("matching", 5), ("relation", 5),
                                            ("snail", 5), ("leo", 5), ("matching", 20),
                                            ("relation", 20)])
def test_episodic_learners_counts_agree_with_flop_counter(learner: str, n_way: int) -> None:
    """Per-episode measurement (``ModelCost.of_episode``) of the metric and model-based
    learners against the counter, 1-shot with 3 queries a class."""
    batch = omniglot_batch(tasks=2, n_way=n_way, queries=3)
    torch.manual_seed(0)
    model = Conv4(n_way=n_way)
    cost = ModelCost.of_episode(build_learner(learner, model), unstack(batch, 0))
    ours = len(batch) * episode_flops(cost, learner, n_way, 3 * n_way, 1)
    assert cost.per_episode and ours == pytest.approx(counted(learner, model, batch, 1),
                                                      rel=0.05)

"""Membership inference: AUC and TPR at 1% FPR are computed right, and on a deliberately
overfit meta-model and adapted models both attacks score clearly above chance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP
from fedmeta.privacy.attacks import lira, loss_threshold, roc_auc, tpr_at_fpr
from fedmeta.privacy.attacks.targets import adapted_model_stats, task_losses
from fedmeta.tasks.episode import EpisodeBatch

N_WAY, SHOTS, DIM = 5, 4, 16



def random_label_tasks(count: int, seed: int) -> EpisodeBatch:
    """Tasks of random points with random labels: only memorising them lowers a loss."""
    g = torch.Generator().manual_seed(seed)
    n = N_WAY * SHOTS
    x = torch.randn(count, 2 * n, DIM, generator=g)
    y = torch.randint(0, N_WAY, (count, 2 * n), generator=g)
    return EpisodeBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:], N_WAY)


def learner():
    torch.manual_seed(0)
    return build_learner("maml", MLP(DIM, (32,), N_WAY), inner_lr=0.5, inner_steps=1)


def test_auc_is_the_pairwise_win_rate_and_tpr_respects_the_fpr() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 50).round(1)
    pairs = [(m > n) + 0.5 * (m == n) for m, n in itertools.product(members, nonmembers)]
    assert roc_auc(members, nonmembers) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.ones(3), np.ones(3)) == 0.5
    separated = tpr_at_fpr(np.array([5.0, 6.0, 0.0]), np.arange(100) / 100)
    assert separated == pytest.approx(2 / 3)  # above every non-member: 2 of 3 members
    assert tpr_at_fpr(np.zeros(10), np.zeros(10)) == 0.0


def test_loss_threshold_finds_the_tasks_an_overfit_meta_model_trained_on() -> None:
    ml = learner()
    members, nonmembers = random_label_tasks(16, 1), random_label_tasks(16, 2)
    trainer = MetaTrainer(ml, meta_lr=0.01, optimizer="adam")
    for _ in range(150):  # the same 16 tasks over and over: memorised
        trainer.step(ml.meta_update(trainer.params, members))
    result = loss_threshold(task_losses(ml, trainer.params, members, 1),
                            task_losses(ml, trainer.params, nonmembers, 1))
    assert result.auc > 0.9 and result.members == result.nonmembers == 16


def test_both_attacks_find_the_support_examples_of_an_adapted_model() -> None:
    ml = learner()
    stats = adapted_model_stats(ml, ml.init_params(), random_label_tasks(6, 3), steps=10,
                                shadows=8, rng=np.random.default_rng(0))
    assert stats.is_member.sum() == stats.is_member.size // 2 == 6 * N_WAY * SHOTS
    by_loss = loss_threshold(stats.loss[stats.is_member], stats.loss[~stats.is_member])
    by_lira = lira(stats.target, stats.inside, stats.outside, stats.is_member)
    assert by_loss.auc > 0.75 and by_lira.auc > 0.75
    assert 0 <= by_lira.tpr_at_1pct_fpr <= 1

"""Membership inference: AUC and TPR at 1% FPR are computed right, their intervals match
independent references (exact binomial tails, the bootstrap's coverage and the Hanley-McNeil
standard error), and on a deliberately overfit meta-model and adapted models both attacks
score clearly above chance."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP
from fedmeta.privacy.attacks import lira, loss_threshold, roc_auc, tpr_at_fpr
from fedmeta.privacy.attacks.metrics import auc_interval, clopper_pearson, evaluate
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
    assert tpr_at_fpr(np.zeros(10), np.zeros(100)) == 0.0
    # with 30 non-members no threshold admits one false positive in a hundred: undefined
    assert math.isnan(tpr_at_fpr(np.array([5.0, 6.0]), np.arange(30) / 30))


def reference_tpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> tuple:
    """Every candidate threshold tried: the highest TPR whose FPR is at most ``fpr``."""
    best = (0.0, 0.0)
    for t in np.unique(np.concatenate([members, nonmembers, [np.inf]])):
        rate = np.mean(nonmembers >= t)
        if rate <= fpr:
            best = max(best, (float(np.mean(members >= t)), -float(rate)))
    return best[0], -best[1]


@pytest.mark.parametrize("seed", range(3))
def test_tpr_at_1pct_fpr_is_the_best_admissible_threshold_with_hundreds_of_nonmembers(
        seed: int) -> None:
    rng = np.random.default_rng(seed)
    members, nonmembers = rng.normal(1.5, 1, 300).round(1), rng.normal(0, 1, 500).round(1)
    result = evaluate("x", members, nonmembers)
    tpr, fpr = reference_tpr(members, nonmembers, 0.01)
    assert result.tpr_at_1pct_fpr == pytest.approx(tpr) and result.fpr == pytest.approx(fpr)
    assert result.fpr <= 0.01 and result.nonmembers == 500
    hits = round(tpr * 300)
    assert result.tpr_ci == pytest.approx(clopper_pearson(hits, 300))
    assert result.auc_ci[0] < result.auc < result.auc_ci[1]


def binomial_tail_bound(successes: int, trials: int, tail: float, upper: bool) -> float:
    """The p at which P(X <= k) (upper) or P(X >= k) (lower) equals ``tail``, by bisection
    on exact binomial sums: Clopper and Pearson's definition, without beta quantiles."""
    def cdf(p: float, k: int) -> float:
        return sum(math.comb(trials, i) * p ** i * (1 - p) ** (trials - i)
                   for i in range(k + 1))
    low, high = 0.0, 1.0
    for _ in range(80):
        p = (low + high) / 2
        if upper:  # P(X <= k) falls with p
            low, high = (p, high) if cdf(p, successes) > tail else (low, p)
        else:  # P(X >= k) = 1 - P(X <= k - 1) rises with p
            low, high = (p, high) if 1 - cdf(p, successes - 1) < tail else (low, p)
    return (low + high) / 2


@pytest.mark.parametrize("successes,trials", [(0, 10), (10, 10), (3, 30), (5, 500),
                                              (1, 100), (250, 500)])
def test_clopper_pearson_matches_exact_binomial_tails(successes: int, trials: int) -> None:
    low, high = clopper_pearson(successes, trials)
    expected_low = 0.0 if successes == 0 else binomial_tail_bound(successes, trials, 0.025,
                                                                 upper=False)
    expected_high = 1.0 if successes == trials else binomial_tail_bound(successes, trials,
                                                                       0.025, upper=True)
    assert (low, high) == pytest.approx((expected_low, expected_high), abs=1e-7)
    if successes == 0:  # the closed form: 1 - (alpha/2)^(1/n)
        assert high == pytest.approx(1 - 0.025 ** (1 / trials))


def test_the_auc_bootstrap_interval_covers_the_true_auc_at_its_level() -> None:
    d, covered, rng = 1.0, 0, np.random.default_rng(7)
    true_auc = 0.5 * (1 + math.erf(d / 2))  # P(X > Y), X ~ N(d, 1), Y ~ N(0, 1)
    for _ in range(200):
        low, high = auc_interval(rng.normal(d, 1, 40), rng.normal(0, 1, 40), rng,
                                 resamples=400)
        covered += low <= true_auc <= high
    assert 0.89 <= covered / 200 <= 0.99  # 95% nominal; binomial spread of 200 trials


def test_perfect_separation_gets_a_finite_auc_interval() -> None:
    low, high = auc_interval(np.arange(100) + 1000.0, np.arange(200.0),
                             np.random.default_rng(0))
    assert (low, high) == (1.0, 1.0)  # every resample separates perfectly


def test_the_auc_interval_width_matches_hanley_mcneil() -> None:
    rng = np.random.default_rng(3)
    members, nonmembers = rng.normal(1, 1, 400), rng.normal(0, 1, 400)
    auc = roc_auc(members, nonmembers)
    q1, q2, m, n = auc / (2 - auc), 2 * auc ** 2 / (1 + auc), 400, 400
    se = math.sqrt((auc * (1 - auc) + (m - 1) * (q1 - auc ** 2) + (n - 1) * (q2 - auc ** 2))
                   / (m * n))  # Hanley and McNeil 1982
    low, high = auc_interval(members, nonmembers, rng)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)


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

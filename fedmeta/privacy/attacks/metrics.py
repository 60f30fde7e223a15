"""How well scores separate members from non-members: ROC AUC and TPR at a low FPR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AttackResult:
    """An attack's AUC and TPR at 1% FPR over ``members`` + ``nonmembers`` candidates."""

    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    members: int
    nonmembers: int


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(score of a random member > that of a random non-member), ties counting one half
    (the Mann-Whitney statistic, equal to the area under the ROC curve)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    ranks = _average_ranks(np.concatenate([members, nonmembers]))
    m, n = len(members), len(nonmembers)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float = 0.01) -> float:
    """The fraction of members scored above a threshold that at most ``fpr`` of
    non-members exceed (0 when no threshold admits so few)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    thresholds = np.unique(np.concatenate([members, nonmembers, [np.inf]]))
    best = 0.0
    for t in thresholds:
        if np.mean(nonmembers >= t) <= fpr:
            best = max(best, float(np.mean(members >= t)))
    return best


def evaluate(attack: str, members: np.ndarray, nonmembers: np.ndarray) -> AttackResult:
    """An ``AttackResult`` from scores (higher: more likely a member)."""
    return AttackResult(attack, roc_auc(members, nonmembers), tpr_at_fpr(members, nonmembers),
                        len(members), len(nonmembers))

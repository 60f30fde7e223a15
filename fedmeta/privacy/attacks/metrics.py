"""How well scores separate members from non-members: ROC AUC and TPR at a low FPR, each
with a confidence interval.

- AUC: a stratified bootstrap (members and non-members resampled separately, ``scipy.stats.
  bootstrap``, BCa) around the Mann-Whitney statistic.
- TPR at FPR ``f``: the lowest threshold that at most ``f`` of the non-members reach, and
  the Clopper-Pearson (exact binomial) interval of the members that reach it. The interval
  is conditional on that threshold, which the non-members estimate: the threshold's own
  FPR on them is reported with its Clopper-Pearson interval beside it. With fewer than
  ``1 / f`` non-members no threshold admits a single false positive, so TPR at FPR ``f``
  is undefined (NaN) rather than silently the TPR at FPR 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
FPR = 0.01


@dataclass(frozen=True)
class AttackResult:
    """An attack's AUC and TPR at 1% FPR over ``members`` + ``nonmembers`` candidates, with
    95% intervals; ``fpr`` is the FPR the chosen threshold has on the non-members."""

    attack: str
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1pct_fpr: float
    tpr_ci: tuple[float, float]
    fpr: float
    fpr_ci: tuple[float, float]
    members: int
    nonmembers: int


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(score of a random member > that of a random non-member), ties counting one half
    (the Mann-Whitney statistic, equal to the area under the ROC curve)."""
    return float(_auc(np.asarray(members, float), np.asarray(nonmembers, float), axis=-1))


def _auc(members: np.ndarray, nonmembers: np.ndarray, axis: int = -1) -> np.ndarray:
    """``roc_auc`` along ``axis`` (vectorised for the bootstrap), from average ranks."""
    m, n = members.shape[axis], nonmembers.shape[axis]
    ranks = stats.rankdata(np.concatenate([members, nonmembers], axis=axis), axis=axis)
    member_ranks = np.take(ranks, np.arange(m), axis=axis).sum(axis=axis)
    return (member_ranks - m * (m + 1) / 2) / (m * n)


def auc_interval(members: np.ndarray, nonmembers: np.ndarray, rng: np.random.Generator,
                 resamples: int = 2000, confidence: float = CONFIDENCE
                 ) -> tuple[float, float]:
    """BCa bootstrap interval of ``roc_auc``, resampling members and non-members apart;
    the percentile interval where BCa is undefined (every resample scores the same, as
    under perfect separation)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if np.ptp(np.concatenate([members, nonmembers])) == 0:  # one value: AUC is 0.5 always
        return 0.5, 0.5
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (stats.DegenerateDataWarning, RuntimeWarning))
            interval = stats.bootstrap(
                (members, nonmembers), _auc, n_resamples=resamples,
                confidence_level=confidence, method=method, vectorized=True, paired=False,
                rng=rng).confidence_interval
        if not (math.isnan(interval.low) or math.isnan(interval.high)):
            break
    return float(interval.low), float(interval.high)


def clopper_pearson(successes: int, trials: int,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion; (nan, nan) for 0
    trials."""
    if trials == 0:
        return math.nan, math.nan
    interval = stats.binomtest(successes, trials).proportion_ci(confidence, "exact")
    return float(interval.low), float(interval.high)


def operating_point(members: np.ndarray, nonmembers: np.ndarray,
                    fpr: float = FPR) -> tuple[int, int]:
    """(members, non-members) at or above the lowest threshold that at most ``fpr`` of the
    non-members reach (the threshold with the highest TPR at that FPR)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    allowed = math.floor(fpr * len(nonmembers) + 1e-9)  # false positives admitted
    ordered = np.sort(nonmembers)[::-1]
    # a threshold just above the (allowed+1)-th highest non-member admits at most `allowed`
    above = ordered[allowed] if allowed < len(ordered) else -np.inf
    hits = int(np.sum(members > above))
    return hits, int(np.sum(nonmembers > above))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float = FPR) -> float:
    """The fraction of members scored above a threshold that at most ``fpr`` of
    non-members exceed; NaN with fewer than ``1 / fpr`` non-members (see the module)."""
    if len(nonmembers) * fpr < 1 - 1e-9:
        return math.nan
    return operating_point(members, nonmembers, fpr)[0] / len(members)


def evaluate(attack: str, members: np.ndarray, nonmembers: np.ndarray,
             rng: np.random.Generator | None = None) -> AttackResult:
    """An ``AttackResult`` from scores (higher: more likely a member); ``rng`` draws the
    bootstrap (seeded by default, so a result repeats)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    rng = np.random.default_rng(0) if rng is None else rng
    tpr = tpr_at_fpr(members, nonmembers)
    hits, false_positives = operating_point(members, nonmembers)
    defined = not math.isnan(tpr)
    return AttackResult(
        attack, roc_auc(members, nonmembers), auc_interval(members, nonmembers, rng), tpr,
        clopper_pearson(hits, len(members)) if defined else (math.nan, math.nan),
        false_positives / len(nonmembers) if defined else math.nan,
        clopper_pearson(false_positives, len(nonmembers)) if defined else (math.nan, math.nan),
        len(members), len(nonmembers))

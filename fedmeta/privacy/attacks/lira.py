"""The likelihood-ratio attack, LiRA (Carlini et al. 2022, "Membership Inference Attacks
From First Principles"), online variant.

For every candidate, shadow models trained with it (IN) and without it (OUT) give its
logit-scaled confidence ``phi = log(p / (1 - p))`` on the true label; Gaussians fitted to
the IN and OUT values give the score ``log N(phi_target; IN) - log N(phi_target; OUT)``.
Variances are pooled over candidates (the paper's "global variance"), which is steadier
with few shadows.
"""

from __future__ import annotations

import numpy as np

from .metrics import AttackResult, evaluate

EPS = 1e-12


def logit_confidence(probability: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of the true label's probability, kept finite."""
    p = np.clip(np.asarray(probability, float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def lira_scores(target: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Per-candidate log-likelihood ratios. ``target``: (n,) logit confidences under the
    attacked model; ``inside``/``outside``: (n, shadows) with NaN where a shadow did not
    (or did) hold the candidate."""
    mu_in, mu_out = _row_means(inside), _row_means(outside)
    var_in = np.nanvar(inside - mu_in[:, None]) + EPS
    var_out = np.nanvar(outside - mu_out[:, None]) + EPS
    return (-(target - mu_in) ** 2 / (2 * var_in) - 0.5 * np.log(var_in)
            + (target - mu_out) ** 2 / (2 * var_out) + 0.5 * np.log(var_out))


def _row_means(values: np.ndarray) -> np.ndarray:
    """Each candidate's mean over its shadows; the overall mean where it has none."""
    counts = np.sum(~np.isnan(values), axis=1)
    sums = np.nansum(values, axis=1)
    overall = np.nanmean(values)
    return np.where(counts > 0, sums / np.maximum(counts, 1), overall)


def lira(target: np.ndarray, inside: np.ndarray, outside: np.ndarray,
         is_member: np.ndarray) -> AttackResult:
    """AUC and TPR at 1% FPR of LiRA over candidates labelled by ``is_member``, with
    their intervals."""
    scores = lira_scores(target, inside, outside)
    is_member = np.asarray(is_member, bool)
    return evaluate("lira", scores[is_member], scores[~is_member])

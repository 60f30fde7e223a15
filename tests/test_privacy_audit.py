"""An empirical privacy audit that can fail: a lower bound on epsilon measured from the
mechanism's own code must not exceed the epsilon the run reports.

Worst-case neighbouring fleets, one round, many runs at once (vectorised):

- ``fixed`` sampling (replace-one): every training device's update is ``+C``; in the
  neighbour, device 0's is ``-C``. The noised mean of the sampled devices shifts by
  ``2C / n`` whenever device 0 is sampled.
- ``poisson`` sampling (add/remove): device 0's update is ``+C`` or it has no data (it is
  never in the sum); the other devices' updates are 0 in both.

The runs use the code's own pieces: ``sampling.draw`` picks the devices, ``clip`` clips the
raw updates, ``poisson_mean`` / the FedAvg mean and ``mean_sensitivity`` calibrate,
``add_noise`` with ``SecretNoise`` noises, and ``PrivateFedMeta.planned_epsilon`` (the
accounting a run reports) gives epsilon. The attack is the best threshold on the released
scalar, chosen on one half of the runs; on the other half, Clopper-Pearson upper bounds on
its false-positive and false-negative rates give, for (epsilon, delta)-DP,
``epsilon >= log((1 - delta - FNR) / FPR)`` (and with the rates swapped), at 95% confidence.
That bound and the Clopper-Pearson interval are written here from their definitions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta

from fedmeta.app.privacy_wrap import PrivateFedMeta
from fedmeta.config import from_dict
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP
from fedmeta.privacy import accounting, sampling
from fedmeta.privacy.clipping import clip
from fedmeta.privacy.mechanism import SecretNoise, add_noise, mean_sensitivity, poisson_mean

RUNS = 1_000_000  # one-round runs per fleet (half choose the threshold, half measure)
NUM_TRAIN, PER_ROUND, Z, C, DELTA = 4, 2, 2.0, 1.0, 1e-3
CONFIDENCE = 0.95


def reported_epsilon(scheme: str) -> float:
    """What a one-round private run of this fleet reports (the code's accounting)."""
    cfg = from_dict({"federation": {"num_devices": NUM_TRAIN + 1, "num_held_out": 1,
                                    "fraction_train": PER_ROUND / NUM_TRAIN, "rounds": 1},
                     "privacy": {"clipping": "fixed", "clip_norm": C, "noise": "central",
                                 "noise_multiplier": Z, "delta": DELTA,
                                 "sampling": scheme}})
    learner = build_learner("maml", MLP(hidden=(2,)), inner_lr=0.1)
    return PrivateFedMeta(cfg, MetaTrainer(learner)).planned_epsilon(1)


def released(scheme: str, device0: float | None, others: float, rng: np.random.Generator,
             z: float = Z) -> np.ndarray:
    """``RUNS`` one-round releases (a 1-parameter model) of the noised mean, device 0's raw
    update ``device0`` (``None``: it has no data) and the others' ``others``."""
    raw = {0: device0, **{d: others for d in range(1, NUM_TRAIN)}}
    clipped = {d: clip({"w": torch.tensor([u], dtype=torch.float64)}, C)[0]["w"]
               for d, u in raw.items() if u is not None}
    mask = torch.from_numpy(sampling.draw(rng, NUM_TRAIN, scheme, PER_ROUND / NUM_TRAIN,
                                          PER_ROUND, runs=RUNS))
    per_device = [{"w": mask[:, d:d + 1].double() * u} for d, u in clipped.items()]
    like = {"w": torch.zeros(RUNS, 1, dtype=torch.float64)}
    if scheme == "poisson":
        expected = PER_ROUND / NUM_TRAIN * NUM_TRAIN
        mean, std = poisson_mean(per_device, expected, like), z * C / expected
    else:  # FedAvg's mean over the n sampled (equal episodes), noise z C max(w) / sum(w)
        mean = {"w": sum(u["w"] for u in per_device) / PER_ROUND}
        std = z * mean_sensitivity(C, [1.0] * PER_ROUND)
    return add_noise(mean, std, SecretNoise())["w"][:, 0].numpy()


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided upper confidence bound of a binomial rate."""
    return 1.0 if k >= n else float(beta.ppf(1 - alpha, k + 1, n - k))


def empirical_epsilon(a: np.ndarray, b: np.ndarray) -> float:
    """A lower bound on epsilon at ``DELTA`` (confidence ``CONFIDENCE``) from releases
    ``a`` and ``b`` of two neighbouring fleets, by the best threshold test."""
    half = len(a) // 2
    a_pick, a_test, b_pick, b_test = np.sort(a[:half]), a[half:], np.sort(b[:half]), b[half:]
    thresholds = np.quantile(np.concatenate([a_pick, b_pick]), np.linspace(1e-4, 1 - 1e-4,
                                                                           2001))

    def rates(x_sorted: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.searchsorted(x_sorted, t, side="right") / len(x_sorted)  # P(x <= t)

    best, choice = -math.inf, None
    for below in (True, False):  # say "b" when x <= t, or when x > t
        fpr = rates(a_pick, thresholds) if below else 1 - rates(a_pick, thresholds)
        fnr = 1 - rates(b_pick, thresholds) if below else rates(b_pick, thresholds)
        with np.errstate(divide="ignore", invalid="ignore"):
            eps = np.maximum(np.log((1 - DELTA - fnr) / fpr), np.log((1 - DELTA - fpr) / fnr))
        usable = (fpr * half >= 30) & (fnr * half >= 30) & np.isfinite(eps)
        eps = np.where(usable, eps, -math.inf)
        i = int(np.argmax(eps))
        if eps[i] > best:
            best, choice = eps[i], (below, thresholds[i])
    below, t = choice
    n = len(a_test)
    false_pos = int(np.sum(a_test <= t)) if below else int(np.sum(a_test > t))
    false_neg = int(np.sum(b_test > t)) if below else int(np.sum(b_test <= t))
    alpha = (1 - CONFIDENCE) / 2  # two rates bounded at once
    fpr_up = clopper_pearson_upper(false_pos, n, alpha)
    fnr_up = clopper_pearson_upper(false_neg, len(b_test), alpha)
    bounds = [(1 - DELTA - fnr_up) / fpr_up, (1 - DELTA - fpr_up) / fnr_up]
    return max(math.log(x) for x in bounds if x > 0) if max(bounds) > 0 else 0.0


def test_the_worst_case_fixed_size_pair_stays_within_the_reported_epsilon() -> None:
    rng = np.random.default_rng(20)
    a = released("fixed", 3.0, 3.0, rng)  # raw updates above C: clip() brings them to C
    b = released("fixed", -3.0, 3.0, rng)
    measured = empirical_epsilon(a, b)
    reported = reported_epsilon("fixed")
    old = accounting.epsilon("rdp", Z, PER_ROUND / NUM_TRAIN, 1, DELTA)  # Poisson at z
    assert reported == pytest.approx(accounting.epsilon("rdp", Z / 2, 0.5, 1, DELTA))
    assert measured <= reported, (measured, reported)
    # the old accounting (fixed-size sampling accounted as Poisson at z) is exceeded
    assert measured > old, (measured, old)


def test_the_worst_case_poisson_pair_stays_within_the_reported_epsilon() -> None:
    rng = np.random.default_rng(21)
    a = released("poisson", None, 0.0, rng)  # device 0 has no data
    b = released("poisson", 3.0, 0.0, rng)
    measured = empirical_epsilon(a, b)
    reported = reported_epsilon("poisson")
    assert reported == pytest.approx(accounting.epsilon("rdp", Z, 0.5, 1, DELTA))
    assert 0 < measured <= reported, (measured, reported)


def test_the_audit_has_power_it_catches_a_mechanism_with_half_the_noise() -> None:
    """A fixed-size release with half the calibrated noise must exceed the epsilon reported
    for the calibrated one: the audit can fail."""
    rng = np.random.default_rng(22)
    a = released("fixed", 3.0, 3.0, rng, z=Z / 2)
    b = released("fixed", -3.0, 3.0, rng, z=Z / 2)
    assert empirical_epsilon(a, b) > reported_epsilon("fixed")

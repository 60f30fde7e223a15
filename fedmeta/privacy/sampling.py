"""Which training devices a private round samples, and the neighbouring relation it implies.

- ``poisson``: every eligible device trains independently with probability ``q``. The
  number of participants is itself random, so the mean divides by the *expected* count
  (DP-FedAvg, McMahan et al. 2018) and adding or removing one device moves the sum by at
  most ``C``: add/remove adjacency, the one Opacus' accountants assume.
- ``fixed``: exactly ``n`` of the eligible devices, without replacement (plain FedAvg).
  Who else is sampled does not depend on the device, so the neighbouring fleets differ in
  one device's *data*: replace-one adjacency, under which one device moves the sum by up to
  ``2C`` while the noise is calibrated to ``C``. A replace-one release at noise multiplier
  ``z`` is an add/remove release at ``z / 2`` (the shift in units of the noise doubles), so
  it is accounted as Poisson sampling with ``q = n / eligible`` at ``z / 2``: a bound that
  holds (the worst pair of fleets, one device's update ``+C`` against ``-C``, is exactly the
  subsampled Gaussian at ``z / 2``; ``tests/test_privacy_audit.py`` measures it).
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("poisson", "fixed")
ADJACENCY = {"poisson": "add/remove one device", "fixed": "replace one device"}
NOISE_SCALE = {"poisson": 1.0, "fixed": 0.5}  # accounted noise multiplier / the configured


def draw(rng: np.random.Generator, eligible: int, scheme: str, rate: float, count: int,
         runs: int | None = None) -> np.ndarray:
    """A boolean mask over ``eligible`` devices (``(runs, eligible)`` with ``runs``): each
    device with probability ``rate`` (``poisson``), or ``min(count, eligible)`` of them
    uniformly without replacement (``fixed``)."""
    if scheme == "poisson":
        return rng.random(eligible if runs is None else (runs, eligible)) < rate
    size = min(count, eligible)
    if runs is None:
        mask = np.zeros(eligible, dtype=bool)
        mask[rng.choice(eligible, size=size, replace=False)] = True
        return mask
    order = np.argsort(rng.random((runs, eligible)), axis=1)[:, :size]
    mask = np.zeros((runs, eligible), dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def inclusion_rate(scheme: str, rate: float, count: int, eligible: int) -> float:
    """The probability that a given eligible device is sampled."""
    if eligible == 0:
        return 0.0
    return rate if scheme == "poisson" else min(count, eligible) / eligible

"""Epsilon spent, from Opacus' maintained accountants (RDP or PRV).

Central noise: every round is one subsampled Gaussian release with noise multiplier ``z``
and the true sampling rate ``q`` = devices sampled per round / training devices; the
accountant composes them. Local noise: a device's updates are seen one by one by the server,
which chose who trains, so sampling amplifies nothing: each round a device took part in is
a Gaussian release with ``q = 1``; the run's epsilon is the worst device's.

Opacus' accountants assume Poisson sampling; fedmeta samples exactly ``n`` devices without
replacement, the usual approximation (docs/privacy.md says more).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

_ROOT_HANDLERS = list(logging.getLogger().handlers)
from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant  # noqa: E402

# Importing Opacus calls logging.basicConfig (opacus.utils.module_utils), which gives the root
# logger a stderr handler: every Flower/fedmeta log line, propagated to it, printed twice.
for _handler in [h for h in logging.getLogger().handlers if h not in _ROOT_HANDLERS]:
    logging.getLogger().removeHandler(_handler)

ACCOUNTANTS: dict[str, Callable[[], IAccountant]] = {"rdp": RDPAccountant,
                                                      "prv": PRVAccountant}
NAMES = {"rdp": "opacus.accountants.RDPAccountant", "prv": "opacus.accountants.PRVAccountant"}


def epsilon(kind: str, noise_multiplier: float, sample_rate: float, steps: int,
            delta: float) -> float:
    """Epsilon after ``steps`` Gaussian releases (0 steps: 0; no noise: infinity)."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    accountant = ACCOUNTANTS[kind]()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def rounds_within(target: float, kind: str, noise_multiplier: float, sample_rate: float,
                  rounds: int, delta: float) -> int:
    """The most rounds (at most ``rounds``) whose epsilon stays within ``target``."""
    low, high = 0, rounds  # epsilon grows with steps: bisect for the last one within
    while low < high:
        mid = (low + high + 1) // 2
        if epsilon(kind, noise_multiplier, sample_rate, mid, delta) <= target:
            low = mid
        else:
            high = mid - 1
    return low

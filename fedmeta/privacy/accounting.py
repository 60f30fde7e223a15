"""Epsilon spent, from Opacus' maintained accountants (RDP or PRV), device by device.

Every release is a subsampled Gaussian step ``(z_acc, q)``: Opacus composes a device's
steps (``history``) for add/remove adjacency under Poisson sampling.

- Central noise, ``poisson`` sampling: each round is one step at the configured ``z`` with
  ``q`` = the device's inclusion probability (``q`` while eligible, e.g. available).
- Central noise, ``fixed`` sampling: replace-one adjacency; each released round is a step
  at ``z / 2`` with ``q`` = devices sampled / devices eligible that round
  (``fedmeta.privacy.sampling`` says why ``z / 2`` bounds it).
- Local noise: the server sees every update and chose who trains, so sampling amplifies
  nothing: every noised reply the server received (retried attempts too) is a step at
  ``z / 2`` (replace-one: the device's data changed, its clipped update moves by ``2C``)
  with ``q = 1``.

The run's epsilon is the worst device's; ``Ledger.epsilons`` gives the distribution.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

_ROOT_HANDLERS = list(logging.getLogger().handlers)
from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant  # noqa: E402

# Importing Opacus calls logging.basicConfig (opacus.utils.module_utils), which gives the root
# logger a stderr handler: every Flower/fedmeta log line, propagated to it, printed twice.
for _handler in [h for h in logging.getLogger().handlers if h not in _ROOT_HANDLERS]:
    logging.getLogger().removeHandler(_handler)

ACCOUNTANTS: dict[str, Callable[[], IAccountant]] = {"rdp": RDPAccountant,
                                                      "prv": PRVAccountant}
NAMES = {"rdp": "opacus.accountants.RDPAccountant", "prv": "opacus.accountants.PRVAccountant"}

Step = tuple[float, float]  # (noise multiplier accounted, sampling rate)


def epsilon(kind: str, noise_multiplier: float, sample_rate: float, steps: int,
            delta: float) -> float:
    """Epsilon after ``steps`` Gaussian releases (0 steps: 0; no noise: infinity)."""
    return history_epsilon(kind, ((noise_multiplier, sample_rate, steps),), delta)


@lru_cache(maxsize=4096)
def history_epsilon(kind: str, history: tuple[tuple[float, float, int], ...],
                    delta: float) -> float:
    """Epsilon after the steps ``(noise multiplier, sample rate, count)`` of ``history``."""
    history = tuple(h for h in history if h[2] > 0 and h[1] > 0)
    if not history:
        return 0.0
    if any(z == 0 for z, _, _ in history):
        return math.inf
    accountant = ACCOUNTANTS[kind]()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


@dataclass
class Ledger:
    """Every device's releases, and the epsilon each has spent."""

    kind: str
    delta: float
    steps: dict[int, Counter[Step]] = field(default_factory=dict)

    def record(self, device: int, noise_multiplier: float, rate: float, count: int = 1) -> None:
        """``count`` more releases of ``device`` at ``(noise_multiplier, rate)``."""
        self.steps.setdefault(device, Counter())[(noise_multiplier, rate)] += count

    def device_epsilon(self, device: int) -> float:
        """What ``device`` has spent so far."""
        steps = self.steps.get(device, Counter())
        return history_epsilon(self.kind, tuple(sorted((z, q, n) for (z, q), n in
                                                       steps.items())), self.delta)

    def epsilons(self) -> dict[int, float]:
        """Each device's epsilon (devices that never released anything are left out)."""
        return {d: self.device_epsilon(d) for d in sorted(self.steps)}

    def worst(self) -> float:
        """The run's epsilon: the worst device's (0 before any release)."""
        return max(self.epsilons().values(), default=0.0)


def rounds_within(target: float, spent: Callable[[int], float], rounds: int) -> int:
    """The most rounds (at most ``rounds``) whose epsilon ``spent(r)`` stays within
    ``target``; ``spent`` grows with ``r``."""
    low, high = 0, rounds
    while low < high:
        mid = (low + high + 1) // 2
        if spent(mid) <= target:
            low = mid
        else:
            high = mid - 1
    return low

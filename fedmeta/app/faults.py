"""Simulated faulty devices (``[faults]``), injected inside the ClientApp's training handler,
so the simulation engine and real SuperNodes run the very same faults.

Whether device ``d``'s reply in round ``r`` (attempt ``a`` of it) fails, and how, is drawn
from ``(seed, r, d, a)`` alone, so runs and resumed runs fail identically and the server can
count the Byzantine replies it cannot tell apart from honest ones. Besides these per-reply
draws, ``faults.byzantine_devices`` makes a fixed set of training devices, drawn from the
seed alone (``byzantine_devices``), Byzantine in every round they train. A reply fails one
way:

- ``crash``: the ClientApp raises (Flower replies an error message);
- ``hang``: it sleeps ``federation.round_timeout + faults.hang_extra_s`` before working, so its
  reply comes after the server stopped waiting for the round;
- ``nan``: every entry of the update is NaN (or +Inf);
- ``malformed``: the update has a wrong dtype (float64), a wrong shape or a missing array;
- ``byzantine``: ``sign-flip`` replies ``-factor * update``, ``scale`` ``factor * update``;
  ``omit`` raises like ``crash`` (an omission fault: what a rule that recognised every
  attacker would leave the federation with).

Evaluation on held-out devices is the measurement and stays fault-free.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np
import torch

from ..config import FAULT_KINDS, Config, FaultsConfig
from ..meta import Params

FAULT_STREAM = 0xFA17  # rng stream of fault draws, apart from the devices' training streams


class InjectedCrash(RuntimeError):
    """The exception a device configured to crash raises."""


def _rng(seed: int, server_round: int, partition: int, attempt: int,
         part: int) -> np.random.Generator:
    return np.random.default_rng([seed, server_round, partition, attempt, FAULT_STREAM, part])


@lru_cache(maxsize=64)
def byzantine_devices(fraction: float, seed: int, num_train: int) -> frozenset[int]:
    """The training devices (of partitions ``[0, num_train)``) that are Byzantine in every
    round: ``fraction * num_train`` of them, rounded half up, drawn from ``seed`` alone."""
    count = math.floor(fraction * num_train + 0.5)
    rng = np.random.default_rng([seed, FAULT_STREAM, 2])
    return frozenset(int(d) for d in rng.choice(num_train, size=count, replace=False))


def fault_of(faults: FaultsConfig, seed: int, server_round: int, partition: int,
             attempt: int = 0, num_train: int = 0) -> str | None:
    """The way this reply fails (one of ``FAULT_KINDS``), or ``None``; ``num_train``: the
    training devices, of which ``faults.byzantine_devices`` always reply Byzantine."""
    if faults.byzantine_devices and partition in byzantine_devices(
            faults.byzantine_devices, seed, num_train):
        return "byzantine"
    probabilities = [getattr(faults, kind) for kind in FAULT_KINDS]
    if not any(probabilities):
        return None
    u = _rng(seed, server_round, partition, attempt, 0).random()
    for kind, edge in zip(FAULT_KINDS, np.cumsum(probabilities)):
        if u < edge:
            return kind
    return None


def before_training(fault: str | None, cfg: Config) -> None:
    """Crash or hang, as the fault says."""
    if fault == "crash":
        raise InjectedCrash("injected fault: the device crashed (faults.crash)")
    if fault == "byzantine" and cfg.faults.byzantine_mode == "omit":
        raise InjectedCrash("injected fault: the Byzantine device sent no update "
                            "(faults.byzantine_mode = omit)")
    if fault == "hang":
        time.sleep(cfg.federation.round_timeout + cfg.faults.hang_extra_s)


def corrupt(fault: str | None, delta: Params, faults: FaultsConfig, seed: int,
            server_round: int, partition: int, attempt: int = 0) -> Params:
    """The update a faulty device replies instead of ``delta``."""
    if fault is None:
        return delta
    if fault == "byzantine":
        factor = faults.byzantine_factor * (-1 if faults.byzantine_mode == "sign-flip" else 1)
        return {k: factor * v for k, v in delta.items()}
    variant = int(_rng(seed, server_round, partition, attempt, 1).integers(3))
    if fault == "nan":
        value = (torch.nan, torch.inf)[variant % 2]
        return {k: torch.full_like(v, value) for k, v in delta.items()}
    if fault == "malformed":
        keys = list(delta)
        if variant == 0:
            return {k: v.double() for k, v in delta.items()}
        if variant == 1:
            return {k: torch.cat([v.flatten(), v.new_zeros(1)]) if k == keys[0] else v
                    for k, v in delta.items()}
        return {k: delta[k] for k in keys[:-1]}
    return delta

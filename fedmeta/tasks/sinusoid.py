"""Sinusoid regression as in the MAML paper (Finn et al. 2017, section 5.1).

A task is ``y = A sin(x - phase)`` with ``A ~ U[amplitude]``, ``phase ~ U[phase]`` and
``x ~ U[x_range]``; the defaults are the paper's (0.1-5, 0-pi, -5..5). Devices get their own
ranges to make a heterogeneous fleet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .episode import Episode


def _check_range(field: str, value: tuple[float, float], low: float = -math.inf) -> None:
    ok = (len(value) == 2 and all(math.isfinite(v) for v in value)
          and low <= value[0] <= value[1])
    if not ok:
        raise ConfigError(field, value, f"a pair (low, high) of finite numbers with "
                          f"{'' if low == -math.inf else f'{low} <= '}low <= high")


@dataclass(frozen=True)
class SinusoidTasks:
    """A distribution of sinusoid tasks with ``k_shot`` support and ``q_query`` query points."""

    k_shot: int = 10
    q_query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        for field in ("k_shot", "q_query"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(field, value, "a positive integer")
        _check_range("amplitude", self.amplitude, low=0.0)
        _check_range("phase", self.phase)
        _check_range("x_range", self.x_range)

    def sample(self, rng: np.random.Generator) -> Episode:
        """One task's support and query points, as float32 ``(n, 1)`` tensors."""
        amplitude = rng.uniform(*self.amplitude)
        phase = rng.uniform(*self.phase)
        x = rng.uniform(*self.x_range, size=(self.k_shot + self.q_query, 1))
        y = amplitude * np.sin(x - phase)
        x, y = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
        k = self.k_shot
        return Episode(x[:k], y[:k], x[k:], y[k:], n_way=None)

"""A heterogeneous sinusoid fleet: every device draws tasks from its own sub-ranges."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .sinusoid import SinusoidTasks


def _sub_range(rng: np.random.Generator, low: float, high: float,
               width: float) -> tuple[float, float]:
    if width >= 1.0:  # the whole range (high - span may round to just below low)
        return (float(low), float(high))
    span = (high - low) * width
    start = rng.uniform(low, high - span)
    return (float(start), float(start + span))


def device_sinusoid(base: SinusoidTasks, device: int, seed: int,
                    width: float = 0.3) -> SinusoidTasks:
    """Device ``device``'s task distribution: ``width`` of the base amplitude and phase ranges.

    The sub-ranges are placed at random, from ``(seed, device)`` alone, so a device's
    distribution does not depend on the fleet size or on which devices run; ``width=1``
    gives every device the whole base distribution.
    """
    if not 0.0 < width <= 1.0:
        raise ConfigError("task.device_width", width, "a number in (0, 1]")
    rng = np.random.default_rng([seed, device, 0x5151])
    return SinusoidTasks(base.k_shot, base.q_query,
                         _sub_range(rng, *base.amplitude, width),
                         _sub_range(rng, *base.phase, width), base.x_range)

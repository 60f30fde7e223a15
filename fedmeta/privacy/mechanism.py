"""The Gaussian mechanism on meta-updates: on the server's mean (central) or on a device's
own update (local); draws come from seeded torch generators only.

The server's mean is FedAvg's, weighted by episodes: replacing one device's clipped update
moves it by at most ``C * max(w) / sum(w)`` (``C / n`` for equal weights, as in Flower's
``compute_stdv``), so the noise std is ``z`` times that.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import PrivacyConfig
from ..meta import Params
from .clipping import clip

NOISE_STREAM = 0xD1FF  # rng stream of DP noise, apart from sampling's and devices' streams


def generator(*seed: int) -> torch.Generator:
    """A torch generator seeded from integers (seed, round, device, stream...)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1, np.uint64)[0]
                      >> np.uint64(1)))
    return g


def mean_sensitivity(clip_norm: float, weights: list[float]) -> float:
    """How far one device's clipped update can move the weighted mean."""
    return clip_norm * max(weights) / sum(weights)


def add_noise(update: Params, std: float, gen: torch.Generator) -> Params:
    """``update`` plus N(0, std^2) on every entry (unchanged, bit for bit, when std is 0)."""
    if std == 0:
        return update
    return {k: v + std * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for k, v in update.items()}


def device_release(delta: Params, privacy: PrivacyConfig, *seed: int) -> Params:
    """What a device sends: ``delta`` clipped on the device when ``privacy.clip_on`` says
    so, plus local noise of std ``noise_multiplier * clip_norm`` under ``noise = "local"``;
    ``seed`` (seed, round, partition) fixes the draw."""
    if privacy.clip_on != "device" or privacy.clipping == "none":
        return delta
    clipped, _ = clip(delta, privacy.clip_norm)
    if privacy.noise != "local":
        return clipped
    return add_noise(clipped, privacy.noise_multiplier * privacy.clip_norm,
                     generator(*seed, NOISE_STREAM))

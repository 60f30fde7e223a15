"""The Gaussian mechanism on meta-updates: on the server's mean (central) or on a device's
own update (local), with noise the config cannot reproduce.

Noise is secret: ``SecretNoise`` draws it from the operating system's CSPRNG
(``os.urandom``) by the Box-Muller transform, so nobody who reads the config, its seed or
the code can regenerate and subtract it. ``SeededNoise`` (a torch generator seeded from
``(seed, round, ...)``) exists only behind ``privacy.insecure_reproducible_noise``: runs
repeat bit for bit, and the epsilon they report is not a guarantee against anyone who knows
the seed. (Floating-point Gaussian samples leak through their low bits, Mironov 2012; that
attack is not defended against here.)

Calibration: under ``fixed`` sampling the server's mean is FedAvg's, weighted by episodes;
changing one device's clipped update moves it by at most ``2 C max(w) / sum(w)``, the noise
std is ``z C max(w) / sum(w)`` and the accountant is run at ``z / 2``
(``fedmeta.privacy.sampling``). Under ``poisson`` sampling every device weighs the same and
the sum is divided by the expected count ``m = q * eligible`` (``poisson_mean``); adding
or removing one device moves it by ``C / m`` and the noise std is ``z C / m``.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch

from ..config import PrivacyConfig
from ..meta import Params
from .clipping import clip

NOISE_STREAM = 0xD1FF  # rng stream of DP noise, apart from sampling's and devices' streams


class NoiseSource(Protocol):
    """Where Gaussian draws come from."""

    secret: bool

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Standard normal draws of ``shape``."""


class SecretNoise:
    """N(0, 1) from ``os.urandom`` (Box-Muller on 53-bit uniforms): not reproducible."""

    secret = True

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        count = int(np.prod(shape, dtype=np.int64))
        pairs = (count + 1) // 2
        bits = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(2, pairs)
        u1 = ((bits[0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53  # (0, 1]
        u2 = (bits[1] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # [0, 1)
        radius, angle = np.sqrt(-2.0 * np.log(u1)), 2.0 * np.pi * u2
        draws = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
        return torch.from_numpy(draws.reshape(shape)).to(dtype)


class SeededNoise:
    """N(0, 1) from a torch generator seeded from integers: reproducible, hence INSECURE."""

    secret = False

    def __init__(self, *seed: int) -> None:
        self.generator = generator(*seed)

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=dtype)


def generator(*seed: int) -> torch.Generator:
    """A torch generator seeded from integers (seed, round, device, stream...)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1, np.uint64)[0]
                      >> np.uint64(1)))
    return g


def noise_source(privacy: PrivacyConfig, *seed: int) -> NoiseSource:
    """Secret noise, or seeded by ``seed`` under ``privacy.insecure_reproducible_noise``."""
    if privacy.insecure_reproducible_noise:
        return SeededNoise(*seed, NOISE_STREAM)
    return SecretNoise()


def mean_sensitivity(clip_norm: float, weights: list[float]) -> float:
    """How far one device's clipped update, left out, moves the weighted mean (a change of
    that update moves it twice as far: the ``fixed`` scheme's accounting at ``z / 2``)."""
    return clip_norm * max(weights) / sum(weights)


class PoissonSum:
    """``poisson_mean`` one update at a time: a float64 sum shaped as ``like``, O(model)."""

    def __init__(self, like: Params) -> None:
        self.like = like
        self.total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in like.items()}

    def add(self, update: Params) -> None:
        """Add one device's (clipped) update."""
        for k, v in update.items():
            self.total[k] += v.double()

    def mean(self, expected: float) -> Params:
        """The sum so far over ``expected``, in ``like``'s dtypes."""
        return {k: (v / expected).to(self.like[k].dtype) for k, v in self.total.items()}


def poisson_mean(updates: list[Params], expected: float, like: Params) -> Params:
    """The sum of ``updates`` over the expected count ``expected`` (zeros shaped as ``like``
    when no device took part): the Poisson scheme's unbiased mean, sensitivity ``C /
    expected``."""
    total = PoissonSum(like)
    for update in updates:
        total.add(update)
    return total.mean(expected)


def add_noise(update: Params, std: float, source: NoiseSource) -> Params:
    """``update`` plus N(0, std^2) on every entry (unchanged, bit for bit, when std is 0)."""
    if std == 0:
        return update
    return {k: v + std * source.normal(tuple(v.shape), v.dtype) for k, v in update.items()}


def device_release(delta: Params, privacy: PrivacyConfig, *seed: int) -> Params:
    """What a device sends: ``delta`` clipped on the device when ``privacy.clip_on`` says
    so, plus local noise of std ``noise_multiplier * clip_norm`` under ``noise = "local"``
    (secret; seeded by ``seed`` = (seed, round, partition, attempt) only under
    ``privacy.insecure_reproducible_noise``). Replacing the device's data moves the clipped
    update by up to ``2C``: each release is accounted at ``z / 2`` without amplification."""
    if privacy.clip_on != "device" or privacy.clipping == "none":
        return delta
    clipped, _ = clip(delta, privacy.clip_norm)
    if privacy.noise != "local":
        return clipped
    return add_noise(clipped, privacy.noise_multiplier * privacy.clip_norm,
                     noise_source(privacy, *seed))

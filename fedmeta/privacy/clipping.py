"""Per-device L2 clipping of a meta-update, with a fixed or an adaptive norm.

A device's contribution is its whole pseudo-gradient ``theta - theta_local``, flattened over
every tensor (Flower's "flat clipping", McMahan et al. 2018): scaled by
``min(1, C / ||delta||)`` so its L2 norm is at most ``C``.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping") moves ``C`` geometrically towards the ``target_quantile`` of update norms, from a
noisy count of updates that fit under it: ``C <- C * exp(-lr * (unclipped_fraction -
quantile))``. (Flower 1.41's adaptive wrappers put the *clipped* fraction in that formula,
which shrinks ``C`` when too many updates are clipped; this follows the paper.) That
count is itself a Gaussian release of std ``count_std``, of the *centred* count
``sum(b_i - 1/2)`` (``b_i = 1`` when device ``i`` fits under ``C``) divided by the expected
number of devices ``m``: adding or removing a device moves it by at most 1/2, replacing one
by at most 1, in both cases half the update's sensitivity in units of ``C``. The update
noise is raised to ``(z^-2 - (2 count_std)^-2)^-1/2`` so the two together cost what noise
multiplier ``z`` does under either adjacency (``config`` refuses a ``z >= 2 count_std``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..meta import Params


def l2_norm(update: Params) -> float:
    """The L2 norm of all of ``update``'s tensors as one flat vector."""
    return float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(v.double()) for v in update.values()])))


def clip(update: Params, clip_norm: float) -> tuple[Params, bool]:
    """``update`` scaled to L2 norm at most ``clip_norm``, and whether it was scaled."""
    norm = l2_norm(update)
    if norm <= clip_norm:
        return update, False
    scale = clip_norm / norm
    return {k: v * scale for k, v in update.items()}, True


def split_noise(noise_multiplier: float, count_std: float) -> float:
    """The update's noise multiplier once the clipped count's release is paid for."""
    if noise_multiplier == 0:
        return 0.0
    if noise_multiplier >= 2 * count_std:
        raise ValueError(f"noise multiplier {noise_multiplier} must be below 2 * the clipped "
                         f"count's std ({count_std}); sample more devices per round")
    return (noise_multiplier ** -2 - (2 * count_std) ** -2) ** -0.5


@dataclass
class AdaptiveClip:
    """The clip norm of Andrew et al.; ``count_std`` defaults to devices per round / 20."""

    clip_norm: float
    target_quantile: float
    lr: float
    count_std: float

    def update(self, clipped: int, devices: int, noise: float, expected: float) -> None:
        """Move the norm after a round where ``clipped`` of ``devices`` updates were scaled:
        up when fewer than ``target_quantile`` of them fit under it, down when more do.
        ``noise`` is a standard normal draw (times ``count_std``); ``expected`` the
        expected number of devices (``devices`` itself under fixed-size sampling)."""
        centred = devices - clipped - devices / 2 + self.count_std * noise
        unclipped_fraction = centred / expected + 0.5
        self.clip_norm *= math.exp(-self.lr * (unclipped_fraction - self.target_quantile))

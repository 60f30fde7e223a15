"""FedMeta's protocol (Chen et al. 2018): the device is the task. Each episode splits the
device's own images at random into a support set (``support_fraction`` of them, at least
one) and a query set (the rest, at least one), labelled by their classes in the full label
space of the dataset (62-way on FEMNIST)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .episode import Episode


class DeviceSplitSource:
    """Episodes of one device: all its images, support/query split anew on each draw.

    ``images`` is ``(n, H, W)``, ``labels`` class ids in ``[0, num_classes)``. Every episode
    of a device has the same shape (``round(support_fraction * n)`` support images), so a
    device's episodes stack into one meta-batch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 support_fraction: float) -> None:
        images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels, np.int64)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise DataError(f"device data: images {images.shape} and labels {labels.shape} "
                            f"must be (n, H, W) and (n,)")
        if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
            raise DataError(f"device data: labels {labels.min()}..{labels.max()} outside "
                            f"the {num_classes} classes")
        self.support = int(round(support_fraction * len(labels)))
        if not 1 <= self.support < len(labels):
            raise DataError(f"cannot split {len(labels)} images into a support set of "
                            f"{support_fraction:g} of them and a query set of the rest, "
                            f"each non-empty")
        self.images, self.labels, self.num_classes = images, labels, int(num_classes)

    def sample(self, rng: np.random.Generator) -> Episode:
        """One support/query split of the device's images, determined by ``rng``."""
        order = rng.permutation(len(self.labels))
        x = torch.from_numpy(self.images[order][:, None])
        y = torch.from_numpy(self.labels[order])
        s = self.support
        return Episode(x[:s], y[:s], x[s:], y[s:], self.num_classes)

"""N-way K-shot classification episodes drawn from labelled image arrays."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .distort import distort
from .episode import Episode


def as_images(images: np.ndarray) -> np.ndarray:
    """``images`` as ``(n, C, H, W)`` (a view where it can be), uint8 kept, else float32."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = images.astype(np.float32, copy=False)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"few-shot data: images {images.shape} must be (n, [C,] H, W)")
    return images


def floats(images: np.ndarray) -> np.ndarray:
    """Model inputs: float32 as is, uint8 scaled to ``[0, 1]``."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255)
    return images


class FewShotTaskSource:
    """Episodes of ``n_way`` classes with ``k_shot`` support and ``q_query`` query images each.

    Every episode draws ``n_way`` distinct classes among those with at least
    ``k_shot + q_query`` images, then that many distinct images of each (no replacement),
    and labels the classes 0..n_way-1 in random order. With ``rotations`` each (class,
    rotation by k x 90 degrees, k in 0..3) is a class of its own, as in MAML's Omniglot.
    With ``augment`` every class is usable: one short of ``k_shot + q_query`` images takes
    all it has and fills the rest with random distortions of them (``distort``), so a
    device holding one Omniglot drawer still forms episodes.
    ``images`` is ``(n, H, W)`` (one channel) or ``(n, C, H, W)``, float or uint8 (kept as
    uint8, scaled to ``[0, 1]`` per episode: a benchmark's pixels take a quarter of the
    memory); episodes hold ``(n, C, H, W)`` float32 and int64 labels.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, n_way: int, k_shot: int,
                 q_query: int, rotations: bool = False, augment: bool = False) -> None:
        for field, value in (("n_way", n_way), ("k_shot", k_shot), ("q_query", q_query)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(field, value, "an integer >= 1")
        images, labels = as_images(images), np.asarray(labels)
        if labels.shape != images.shape[:1]:
            raise DataError(f"few-shot data: images {images.shape} and labels {labels.shape} "
                            f"must be (n, [C,] H, W) and (n,)")
        if rotations and images.shape[2] != images.shape[3]:
            raise DataError(f"few-shot data: rotations need square images, not "
                            f"{images.shape[2]}x{images.shape[3]}")
        self.images, self.rotations, self.augment = images, rotations, augment
        self.n_way, self.k_shot, self.q_query = int(n_way), int(k_shot), int(q_query)
        _, counts = np.unique(labels, return_counts=True)
        per_class = 1 if augment else k_shot + q_query
        usable = int(np.sum(counts >= per_class))
        variants = 4 if rotations else 1
        if usable * variants < n_way:
            sizes = f", {counts.min()} to {counts.max()} images each" if len(counts) else ""
            rotated = f" (x4 with rotations: {usable * 4})" if rotations else ""
            raise DataError(
                f"cannot form {n_way}-way {k_shot}-shot episodes with {q_query} queries: they "
                f"need {n_way} classes with at least "
                f"{'1' if augment else f'k_shot + q_query = {per_class}'} distinct "
                f"images each, but only {usable} of the {len(counts)} classes here "
                f"have that many{rotated} ({len(labels)} images{sizes})")
        rows = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
        self._index = [r for r, n in zip(rows, counts) if n >= per_class]  # per usable class
        self.num_classes = usable * variants

    def sample(self, rng: np.random.Generator) -> Episode:
        """One episode, determined by ``rng``."""
        variants = 4 if self.rotations else 1
        chosen = rng.choice(self.num_classes, self.n_way, replace=False)
        per_class = self.k_shot + self.q_query
        picks = []
        for c in chosen:
            rows = self._index[c // variants]
            real = min(per_class, len(rows))
            block = floats(self.images[rows[rng.choice(len(rows), real, replace=False)]])
            if real < per_class:  # only with augment: distorted copies, in random places
                extra = distort(block[rng.integers(real, size=per_class - real)], rng)
                block = np.concatenate([block, extra])[rng.permutation(per_class)]
            picks.append(np.rot90(block, c % variants, axes=(2, 3)))
        x = np.stack(picks)  # (n_way, k + q, C, H, W), contiguous
        labels = rng.permutation(self.n_way)
        shape = (-1, *x.shape[2:])
        return Episode(
            torch.from_numpy(x[:, :self.k_shot].reshape(shape)),
            torch.from_numpy(np.repeat(labels, self.k_shot)),
            torch.from_numpy(x[:, self.k_shot:].reshape(shape)),
            torch.from_numpy(np.repeat(labels, self.q_query)),
            self.n_way,
        )

"""Lake et al.'s within-alphabet one-shot classification runs on Omniglot.

Lake, Salakhutdinov & Tenenbaum (Science 2015) score one-shot classification on runs of
20 characters of ONE alphabet: a drawer's image of each character is the support set, and
each character's image by ANOTHER drawer is a query to classify among the 20. Characters of
one alphabet look alike, so this is harder than the usual N-way task whose classes come from
every alphabet; results are reported as error rates (people 4.5%, Prototypical Networks
13.7% with the full background set, 30.1% with five background alphabets).

Every run here draws an alphabet (uniformly among those with at least ``n_way``
characters), ``n_way`` of its characters, and two distinct drawers who drew all of them; the
original's 20 fixed runs become as many random runs as asked for. No rotations, no
augmentation: real images only.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .episode import Episode
from .omniglot import OmniglotData


class WithinAlphabetSource:
    """``n_way``-way one-shot runs, all classes from one alphabet, support and query drawn
    by two different people. Episodes hold ``(n_way, 1, H, W)`` float32 support and query
    images (one each per class) and int64 labels in random order."""

    def __init__(self, data: OmniglotData, n_way: int = 20) -> None:
        if isinstance(n_way, bool) or not isinstance(n_way, (int, np.integer)) or n_way < 2:
            raise ConfigError("n_way", n_way, "an integer >= 2")
        self.data, self.n_way = data, int(n_way)
        self._alphabets: list[np.ndarray] = []  # per eligible alphabet: its character ids
        self._lookup: dict[tuple[int, int], int] = {
            (int(c), int(d)): i for i, (c, d) in enumerate(zip(data.character, data.drawer))}
        for name in data.alphabets:
            chars = np.unique(data.character[data.alphabet == name])
            if len(chars) >= n_way:
                self._alphabets.append(chars)
        if not self._alphabets:
            sizes = {a: int(len(np.unique(data.character[data.alphabet == a])))
                     for a in data.alphabets}
            raise DataError(f"within-alphabet {n_way}-way runs need an alphabet with at least "
                            f"{n_way} characters; characters per alphabet here: {sizes}")

    def sample(self, rng: np.random.Generator) -> Episode:
        """One run, determined by ``rng``."""
        chars = self._alphabets[rng.integers(len(self._alphabets))]
        chosen = rng.choice(chars, self.n_way, replace=False)
        drawers = self._shared_drawers(chosen)
        first, second = rng.choice(drawers, 2, replace=False)
        support = [self._lookup[(int(c), int(first))] for c in chosen]
        query = [self._lookup[(int(c), int(second))] for c in chosen]
        labels = torch.from_numpy(rng.permutation(self.n_way))
        images = self.data.images
        return Episode(torch.from_numpy(images[support][:, None].copy()), labels,
                       torch.from_numpy(images[query][:, None].copy()), labels.clone(),
                       self.n_way)

    def _shared_drawers(self, chars: np.ndarray) -> np.ndarray:
        """The drawers who drew every one of ``chars`` (all 20 in Omniglot)."""
        drawers = None
        for c in chars:
            own = set(self.data.drawer[self.data.character == c].tolist())
            drawers = own if drawers is None else drawers & own
        if not drawers or len(drawers) < 2:
            names = [self.data.class_names[int(c)] for c in chars]
            raise DataError(f"within-alphabet run: fewer than two drawers drew all of {names}")
        return np.array(sorted(drawers))

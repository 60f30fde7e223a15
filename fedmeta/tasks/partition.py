"""Omniglot (and, by ``by_class``, any labelled images) split across devices: every device
gets its own private images and task source.

Each partition but ``sampled`` is a list of sorted index arrays into the data, one per device,
disjoint and together covering every image. ``sampled`` gives one device at a time its own
draw of characters, overlapping other devices': for fleets larger than the data can split.

An Omniglot character has one image per drawer, so a device holds at most as many images of
a character as it holds drawers of it: a ``k_shot``-shot episode with ``q_query`` queries
needs devices with ``k_shot + q_query`` drawers' images of at least ``n_way`` characters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

from ..errors import ConfigError, DataError
from .fewshot import FewShotTaskSource
from .omniglot import OmniglotData


def _by_group(groups: np.ndarray, assigned: Sequence[Sequence[object]]) -> list[np.ndarray]:
    """Index arrays of the rows whose group is among each device's assigned groups."""
    return [np.flatnonzero(np.isin(groups, list(own))) for own in assigned]


def _check_devices(num_devices: object, most: int, what: str) -> None:
    if isinstance(num_devices, bool) or not isinstance(num_devices, Integral) \
            or not 1 <= num_devices <= most:
        raise ConfigError("num_devices", num_devices, f"an integer from 1 to {most} ({what})")


def by_drawer(data: OmniglotData, num_devices: int) -> list[np.ndarray]:
    """Drawers split into ``num_devices`` contiguous runs (1-4, 5-8, ... for 5 devices).

    A device then has one image of each character per drawer it owns: with 20 drawers and
    ``num_devices`` devices that is about ``20 / num_devices`` images per character, which
    must reach ``k_shot + q_query`` for its episodes to be formed.
    """
    drawers = np.unique(data.drawer)
    _check_devices(num_devices, len(drawers), f"at least one of the {len(drawers)} drawers "
                                              f"per device")
    return _by_group(data.drawer, np.array_split(drawers, num_devices))


def by_alphabet(data: OmniglotData, num_devices: int) -> list[np.ndarray]:
    """Whole alphabets per device, balancing image counts: largest alphabet first, each to
    the device with the fewest images so far (ties: lowest device)."""
    alphabets, counts = np.unique(data.alphabet, return_counts=True)
    _check_devices(num_devices, len(alphabets), f"at least one of the {len(alphabets)} "
                                                f"alphabets per device")
    owned: list[list[str]] = [[] for _ in range(num_devices)]
    load = np.zeros(num_devices, dtype=np.int64)
    for i in np.argsort(-counts, kind="stable"):
        device = int(np.argmin(load))
        owned[device].append(str(alphabets[i]))
        load[device] += counts[i]
    return _by_group(data.alphabet, owned)


def dirichlet(data: OmniglotData, num_devices: int, alpha: float, seed: int = 0
              ) -> list[np.ndarray]:
    """Label skew: each character's images split across devices in proportions drawn from
    Dirichlet(``alpha``, ..., ``alpha``). Small ``alpha`` gives each character to few devices,
    large ``alpha`` spreads it evenly; a device may get few or no images."""
    _check_devices(num_devices, len(data), "no more devices than images")
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < math.inf:
        raise ConfigError("alpha", alpha, "a finite number > 0")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    _, counts = np.unique(data.character, return_counts=True)
    for rows in np.split(np.argsort(data.character, kind="stable"), np.cumsum(counts)[:-1]):
        rows = rng.permutation(rows)
        shares = rng.dirichlet(np.full(num_devices, float(alpha)))
        cuts = np.round(np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
        for device, chunk in enumerate(np.split(rows, cuts)):
            parts[device].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def sampled(data: OmniglotData, device: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Device ``device``'s rows: ``num_classes`` characters drawn from ``(seed, device)``
    alone, with every image of them. Devices overlap (two may draw the same character), so
    the data is not private to a device; any fleet size works, and a device is built
    without the others (fleet-scale studies on a small dataset)."""
    characters = np.unique(data.character)
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) \
            or not 1 <= num_classes <= len(characters):
        raise ConfigError("task.device_classes", num_classes,
                          f"an integer from 1 to the {len(characters)} characters here")
    own = np.random.default_rng([seed, device]).choice(characters, num_classes, replace=False)
    return np.flatnonzero(np.isin(data.character, own))


def by_class(labels: np.ndarray, num_devices: int, seed: int) -> list[np.ndarray]:
    """Classes shuffled with ``seed`` and dealt into ``num_devices`` near-equal disjoint
    groups (``np.array_split``); a device holds every image of its classes."""
    classes = np.random.default_rng(seed).permutation(np.unique(labels))
    if not 1 <= num_devices <= len(classes):
        raise ConfigError("num_devices", num_devices,
                          f"an integer from 1 to the {len(classes)} classes (one per device)")
    return [np.flatnonzero(np.isin(labels, own))
            for own in np.array_split(classes, num_devices)]


def device_task_sources(data: OmniglotData, parts: Sequence[np.ndarray], n_way: int,
                        k_shot: int, q_query: int, rotations: bool = False,
                        augment: bool = False) -> list[FewShotTaskSource]:
    """One few-shot task source per device over its own images, classes = characters
    (``augment``: fill short classes with distortions, see ``FewShotTaskSource``)."""
    sources = []
    for device, rows in enumerate(parts):
        try:
            sources.append(FewShotTaskSource(data.images[rows], data.character[rows], n_way,
                                             k_shot, q_query, rotations, augment))
        except DataError as exc:
            raise DataError(f"device {device} of {len(parts)}: {exc}. A device has one image "
                            f"of a character per drawer it holds, so it needs "
                            f"{k_shot + q_query} drawers' images of {n_way} characters") \
                from exc
    return sources

"""Next-character prediction on a Hugging Face text dataset split by a natural id, through
flwr-datasets: LEAF Shakespeare (``flwrlabs/shakespeare``) by speaking role.

Each row is a window of text (``task.text_column``, LEAF's ``x``: 80 characters) and the
character after it (``task.label_column``, ``y``); ``task.partition_by`` (``character_id``)
names the device. Loaded by the same ``FederatedDataset`` code as ``hf_images`` with a
``NaturalIdPartitioner``; devices are drawn, and devices with fewer than
``task.min_device_images`` samples left out, by ``hf_images``'s rule (FedMeta protocol:
each device is a task, its samples split ``task.support_fraction`` support / the rest query).
Characters become ids in LEAF's 80-character ``ALL_LETTERS``; a character outside it
becomes the space's id, as LEAF's own preprocessing keeps only these characters. Encoding
is cheap, so the fleet is kept in memory, not cached on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .episode import Episode
from .hf_images import _chosen, federated_dataset, load_split

ALL_LETTERS = ("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]"
               "abcdefghijklmnopqrstuvwxyz}")
WINDOW = 80  # characters in LEAF Shakespeare's x
_IDS = np.full(0x110000, ALL_LETTERS.index(" "), dtype=np.int64)
_IDS[[ord(c) for c in ALL_LETTERS]] = np.arange(len(ALL_LETTERS))


def encode(text: str) -> np.ndarray:
    """``text``'s characters as ids in ``ALL_LETTERS`` (others: the space's id)."""
    return _IDS[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]


@dataclass(frozen=True)
class TextFleet:
    """The encoded samples of a fleet's devices; device ``d`` owns rows
    ``offsets[d]:offsets[d + 1]``."""

    x: np.ndarray  # (n, WINDOW) int64 character ids
    y: np.ndarray  # (n,) int64 next-character ids
    offsets: np.ndarray
    names: list[str]
    eligible: int
    partitions: int

    def device(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(int(self.offsets[d]), int(self.offsets[d + 1]))
        return self.x[rows], self.y[rows]


def check_text_schema(features: Any, task: Any) -> None:
    """``ConfigError`` unless the text, label and natural id columns exist and the text and
    label columns hold strings."""
    from datasets import Value
    columns = sorted(features)
    for field in ("text_column", "label_column", "partition_by"):
        name = getattr(task, field)
        if name not in features:
            raise ConfigError(f"task.{field}", name, f"a column of {task.dataset} ({columns})")
    for field in ("text_column", "label_column"):
        name = getattr(task, field)
        if not (isinstance(features[name], Value) and features[name].dtype in ("string",
                                                                              "large_string")):
            raise ConfigError(f"task.{field}", name,
                              f"a column of strings (datasets.Value('string')), not "
                              f"{features[name]!r}")


def _encode_partition(fds: Any, task: Any, partition: int, name: str
                      ) -> tuple[np.ndarray, np.ndarray]:
    part = fds.load_partition(partition, task.split)
    texts, targets = part[task.text_column], part[task.label_column]
    x = np.empty((len(texts), WINDOW), dtype=np.int64)
    for i, (text, target) in enumerate(zip(texts, targets)):
        bad_text = not isinstance(text, str) or len(text) != WINDOW
        if bad_text or not isinstance(target, str) or len(target) != 1:
            field = "text_column" if bad_text else "label_column"
            raise ConfigError(f"task.{field}", getattr(task, field),
                              f"windows of {WINDOW} characters and one next character, but "
                              f"{task.partition_by} {name} row {i} has "
                              f"x={text!r:.100} y={target!r}")
        x[i] = encode(text)
    y = np.array([encode(t)[0] for t in targets], dtype=np.int64)
    return x, y


def load_text_fleet(task: Any, num_devices: int, seed: int) -> TextFleet:
    """The encoded fleet of ``num_devices`` devices (``hf_images``'s choice of devices)."""
    fds = federated_dataset(task, num_devices, seed)
    split = load_split(fds, task, check_text_schema)
    picked, names, eligible, made = _chosen(fds, split, task, num_devices, seed)
    parts = [_encode_partition(fds, task, p, n) for p, n in zip(picked, names)]
    return TextFleet(np.concatenate([p[0] for p in parts]),
                     np.concatenate([p[1] for p in parts]),
                     np.cumsum([0] + [len(p[1]) for p in parts]).astype(np.int64),
                     names, eligible, made)


class TextSplitSource:
    """FedMeta protocol on one device's text: each episode splits its samples at random
    into ``round(support_fraction * n)`` support samples and the rest as query; labels are
    next-character ids over the whole vocabulary (80-way)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, support_fraction: float) -> None:
        self.x, self.y = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
        self.support = round(support_fraction * len(self.y))
        if not 1 <= self.support < len(self.y):
            raise DataError(f"cannot split {len(self.y)} samples into a support set of "
                            f"{support_fraction:g} of them and a query set of the rest, "
                            f"each non-empty")

    def sample(self, rng: np.random.Generator) -> Episode:
        order = rng.permutation(len(self.y))
        x, y = torch.from_numpy(self.x[order]), torch.from_numpy(self.y[order])
        s = self.support
        return Episode(x[:s], y[:s], x[s:], y[s:], len(ALL_LETTERS))

"""Any Hugging Face image-classification dataset as a fleet, through flwr-datasets.

``FederatedDataset(dataset=task.dataset, partitioners={task.split: ...})`` loads the data
with ``datasets.load_dataset``: a hub name (``flwrlabs/femnist``) downloads it, a local
folder holding the dataset's files (a hub snapshot, or parquet files) reads them, by the
same code. The split is partitioned by flwr-datasets' partitioners:

- ``task.partition_by = "<column>"``: ``NaturalIdPartitioner`` on that column (FEMNIST's
  ``writer_id``), one partition per value. A partition is *eligible* when it can form the
  episodes (``episode_ready``: ``task.n_way`` classes with ``task.k_shot + task.q_query``
  images each; under ``task.protocol = "fedmeta"``, ``task.min_device_images`` images);
  the others are left out. The fleet is ``federation.num_devices`` eligible partitions
  drawn with the seed (a permutation of the eligible ones, in the partitioner's order);
  the last ``federation.num_held_out`` are held out. Fewer eligible than devices:
  ``ConfigError``.
- ``"dirichlet"``: ``DirichletPartitioner`` on the label column, ``task.dirichlet_alpha``,
  one partition per device.
- ``"pathological"``: ``PathologicalPartitioner``, ``task.device_classes`` classes a device
  (classes drawn at random), one partition per device.

Dirichlet and pathological devices are the partitions themselves: one that cannot form
episodes is a ``ConfigError`` (in ``fedmeta.tasks.factory``), nothing is left out. Images
become ``(28, 28)`` float32 grey arrays (``fedmeta.tasks.images.decode``: Lanczos resize,
inverted so dark ink on light paper, as FEMNIST and Omniglot, is 1.0; ``task.invert =
false`` keeps light-on-dark data such as MNIST as is). The fleet is decoded once and
cached as ``.npz`` under ``$FEDMETA_CACHE/hf``, keyed by the split's fingerprint and every
setting that shapes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .images import IMAGE_SIZE, decode
from .omniglot import CACHE_ENV

HF_PARTITIONERS = ("dirichlet", "pathological")  # any other task.partition_by: a column
CACHE_VERSION = 2  # bump when the decoded arrays change, so old caches are not used


@dataclass(frozen=True)
class HFFleet:
    """The decoded images of a fleet's devices, device after device.

    Device ``d`` owns rows ``offsets[d]:offsets[d + 1]``; ``labels`` are the dataset's class
    ids; ``names`` says which partition each device is (natural id or partition number).
    """

    images: np.ndarray  # (n, 28, 28) float32
    labels: np.ndarray  # (n,) int64
    offsets: np.ndarray  # (num_devices + 1,) int64
    names: list[str]
    eligible: int  # partitions that could form episodes (natural ids), else num_devices
    partitions: int  # partitions the partitioner made
    num_classes: int  # the label space: ClassLabel's size, else the largest label + 1

    def device(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of device ``d``."""
        rows = slice(int(self.offsets[d]), int(self.offsets[d + 1]))
        return self.images[rows], self.labels[rows]

    def devices(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of devices ``first`` to ``stop - 1`` together."""
        rows = slice(int(self.offsets[first]), int(self.offsets[stop]))
        return self.images[rows], self.labels[rows]


def cache_dir() -> Path:
    """``$FEDMETA_CACHE/hf``, else ``~/.cache/fedmeta/hf``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "fedmeta") / "hf"


def natural(task: Any) -> bool:
    """Whether ``task.partition_by`` names a natural id column."""
    return task.partition_by not in HF_PARTITIONERS


def _partitioner(task: Any, num_devices: int, seed: int) -> Any:
    from flwr_datasets.partitioner import (DirichletPartitioner, NaturalIdPartitioner,
                                           PathologicalPartitioner)
    if task.partition_by == "dirichlet":
        # min_partition_size 0: a device too small for episodes is reported by check_devices,
        # naming it, rather than retried by the partitioner.
        return DirichletPartitioner(num_devices, task.label_column, task.dirichlet_alpha,
                                    min_partition_size=0, shuffle=False, seed=seed)
    if task.partition_by == "pathological":
        return PathologicalPartitioner(num_devices, task.label_column, task.device_classes,
                                       class_assignment_mode="random", shuffle=False,
                                       seed=seed)
    return NaturalIdPartitioner(partition_by=task.partition_by)


def federated_dataset(task: Any, num_devices: int, seed: int) -> Any:
    """flwr-datasets' ``FederatedDataset`` of ``task`` (rows in file order: episodes draw
    at random anyway)."""
    from flwr_datasets import FederatedDataset
    return FederatedDataset(dataset=task.dataset,
                            partitioners={task.split: _partitioner(task, num_devices, seed)},
                            shuffle=False)


def load_split(fds: Any, task: Any, check: Any = None) -> Any:
    """The split to partition, its schema checked (by ``check``, default ``check_schema``);
    a missing dataset or split is a ``ConfigError`` naming ``task.dataset`` or
    ``task.split``."""
    from datasets.exceptions import DatasetsError
    try:
        split = fds.load_split(task.split)
    except ValueError as exc:
        if "split" in str(exc).lower() and "not present" in str(exc).lower():
            raise ConfigError("task.split", task.split, f"a split of {task.dataset} "
                                                        f"({exc})") from None
        raise ConfigError("task.dataset", task.dataset, f"a Hugging Face dataset name or a "
                                                        f"folder of its files ({exc})") from None
    except DatasetsError as exc:  # files found but unreadable, or with no rows
        raise ConfigError("task.dataset", task.dataset,
                          f"a dataset with readable rows in {task.split} ({exc}: "
                          f"{exc.__cause__ or exc.__context__})") from None
    except (FileNotFoundError, ConnectionError, OSError) as exc:
        raise ConfigError("task.dataset", task.dataset,
                          f"a Hugging Face dataset name (needs the network, or the hub "
                          f"cache) or a local folder of its files ({type(exc).__name__}: "
                          f"{exc})") from None
    (check or check_schema)(split.features, task)
    if len(split) == 0:
        raise ConfigError("task.split", task.split, f"a split with rows; {task.dataset}'s "
                                                    f"{task.split} is empty")
    return split


def check_schema(features: Any, task: Any) -> None:
    """``ConfigError`` unless the image, label and natural id columns exist with fitting
    types: an ``Image`` column, an integer or ``ClassLabel`` label."""
    from datasets import ClassLabel, Image, Value
    columns = sorted(features)
    wanted = [("task.image_column", task.image_column), ("task.label_column", task.label_column)]
    if natural(task):
        wanted.append(("task.partition_by", task.partition_by))
    for field, name in wanted:
        if name not in features:
            extra = f", {' or '.join(HF_PARTITIONERS)}" if field == "task.partition_by" else ""
            raise ConfigError(field, name, f"a column of {task.dataset} ({columns}){extra}")
    if not isinstance(features[task.image_column], Image):
        raise ConfigError("task.image_column", task.image_column,
                          f"a column of images (datasets.Image), not "
                          f"{features[task.image_column]!r}")
    label = features[task.label_column]
    if not (isinstance(label, ClassLabel)
            or isinstance(label, Value) and label.dtype.startswith(("int", "uint"))):
        raise ConfigError("task.label_column", task.label_column,
                          f"a column of class ids (datasets.ClassLabel or an integer "
                          f"Value), not {label!r}")


def episode_ready(labels: np.ndarray, task: Any) -> bool:
    """Whether a device with these labels is kept. ``few-shot``: ``n_way`` classes with
    ``k_shot + q_query`` images each; ``fedmeta``: ``min_device_images`` images that split
    into a non-empty support (``support_fraction``) and query set."""
    if task.protocol == "fedmeta":
        support = int(round(task.support_fraction * len(labels)))
        return len(labels) >= task.min_device_images and 1 <= support < len(labels)
    _, counts = np.unique(labels, return_counts=True)
    return int(np.sum(counts >= task.k_shot + task.q_query)) >= task.n_way


def keep_rule(task: Any) -> str:
    """``episode_ready``'s rule in words."""
    if task.protocol == "fedmeta":
        return (f"hold task.min_device_images = {task.min_device_images} images that split "
                f"{task.support_fraction:g} support / the rest query, both non-empty")
    return (f"hold {task.n_way} classes with k_shot + q_query = "
            f"{task.k_shot + task.q_query} images each")


def num_classes(split: Any, task: Any) -> int:
    """The label space: the ``ClassLabel``'s size, else the largest label + 1."""
    from datasets import ClassLabel
    feature = split.features[task.label_column]
    if isinstance(feature, ClassLabel):
        return int(feature.num_classes)
    labels = np.asarray(split.select_columns([task.label_column])[task.label_column])
    if labels.min() < 0:
        raise ConfigError("task.label_column", task.label_column,
                          f"class ids >= 0, not {labels.min()}")
    return int(labels.max()) + 1


def _chosen(fds: Any, split: Any, task: Any, num_devices: int, seed: int
            ) -> tuple[list[int], list[str], int, int]:
    """The partition ids that are the devices, their names, how many partitions were
    eligible and how many were made."""
    partitioner = fds.partitioners[task.split]
    if not natural(task):
        return list(range(num_devices)), [f"partition {p}" for p in range(num_devices)], \
            num_devices, num_devices
    frame = split.select_columns([task.partition_by, task.label_column]).to_pandas()
    ready = {str(key) for key, rows in frame.groupby(task.partition_by, sort=False)
             if episode_ready(rows[task.label_column].to_numpy(), task)}
    fds.load_partition(0, task.split)  # the partitioner numbers its ids on first use
    ids = partitioner.partition_id_to_natural_id
    eligible = [p for p in sorted(ids) if str(ids[p]) in ready]
    if len(eligible) < num_devices:
        raise ConfigError("federation.num_devices", num_devices,
                          f"at most the {len(eligible)} of {len(ids)} partitions by "
                          f"{task.partition_by} that {keep_rule(task)} (the others are "
                          f"left out)")
    picked = np.random.default_rng(seed).permutation(eligible)[:num_devices].tolist()
    return picked, [str(ids[p]) for p in picked], len(eligible), len(ids)


def _decode(fds: Any, task: Any, partition: int) -> tuple[np.ndarray, np.ndarray]:
    """A partition's images as model inputs, from their encoded bytes in one batch."""
    from datasets import Image
    part = fds.load_partition(partition, task.split)
    labels = np.asarray(part[task.label_column], dtype=np.int64)
    encoded = part.select_columns([task.image_column]).cast_column(
        task.image_column, Image(decode=False))[task.image_column]
    images = np.empty((len(part), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, item in enumerate(encoded):
        name = f"{task.dataset}: partition {partition} row {i} ({task.image_column})"
        if item is None or item.get("bytes") is None and not item.get("path"):
            raise DataError(f"{name}: no image")
        data = item["bytes"] if item.get("bytes") is not None else _read(item["path"], name)
        images[i] = decode(data, name)
    return images if task.invert else 1.0 - images, labels


def _read(path: str, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: {path} cannot be read ({exc.strerror or exc})") from exc


def _cache_key(task: Any, fingerprint: str, num_devices: int, seed: int) -> str:
    shape = {"version": CACHE_VERSION, "size": IMAGE_SIZE, "fingerprint": fingerprint,
             "devices": num_devices, "seed": seed,
             **{f: getattr(task, f) for f in ("dataset", "split", "image_column",
                                                "label_column", "partition_by", "invert",
                                                "n_way", "k_shot", "q_query", "protocol",
                                                "support_fraction", "min_device_images")}}
    if task.partition_by == "dirichlet":
        shape["alpha"] = task.dirichlet_alpha
    if task.partition_by == "pathological":
        shape["classes"] = task.device_classes
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:20]


def load_fleet(task: Any, num_devices: int, seed: int) -> HFFleet:
    """The decoded fleet of ``num_devices`` devices, from the cache when it holds it."""
    fds = federated_dataset(task, num_devices, seed)
    split = load_split(fds, task)
    path = cache_dir() / f"fleet-{_cache_key(task, split._fingerprint, num_devices, seed)}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as saved:
                return HFFleet(saved["images"], saved["labels"], saved["offsets"],
                               saved["names"].tolist(), int(saved["eligible"]),
                               int(saved["partitions"]), int(saved["num_classes"]))
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache file: decode again and replace it
    picked, names, eligible, made = _chosen(fds, split, task, num_devices, seed)
    parts = [_decode(fds, task, p) for p in picked]
    fleet = HFFleet(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    np.cumsum([0] + [len(p[1]) for p in parts]).astype(np.int64), names,
                    eligible, made, num_classes(split, task))
    _write(path, fleet)
    return fleet


def _write(path: Path, fleet: HFFleet) -> None:
    """Write atomically (temp file, then rename); a cache that cannot be written warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
            np.savez(f, images=fleet.images, labels=fleet.labels, offsets=fleet.offsets,
                     names=np.array(fleet.names, dtype=str), eligible=fleet.eligible,
                     partitions=fleet.partitions, num_classes=fleet.num_classes)
        os.replace(f.name, path)
    except OSError as exc:
        warnings.warn(f"could not write the decoded fleet cache {path}: {exc}", stacklevel=2)

"""From a task config to the task sources a job trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .benchmarks import IMAGE_SIZE, BenchmarkSplit, load_split
from .episode import TaskSource
from .device_split import DeviceSplitSource
from .fewshot import FewShotTaskSource
from .hf_images import HFFleet, load_fleet
from .hf_text import TextFleet, TextSplitSource, load_text_fleet
from .omniglot import OmniglotData, load_omniglot, resolve_zips, split_by_alphabet
from .partition import (by_alphabet, by_class, by_drawer, device_task_sources, dirichlet,
                        sampled)
from .sinusoid import SinusoidTasks
from .sinusoid_fleet import device_sinusoid
from .varying import VaryingTaskSource


@dataclass(frozen=True)
class Tasks:
    """Meta-train and held-out task sources, the model that fits them, and a description."""

    train: TaskSource
    test: TaskSource
    model: str
    model_kwargs: dict[str, Any]
    info: dict[str, Any]


def _sinusoid(task: Any) -> SinusoidTasks:
    return SinusoidTasks(task.k_shot, task.q_query, tuple(task.amplitude), tuple(task.phase),
                         tuple(task.x_range))


def build_tasks(task: Any, seed: int = 0, fleet: tuple[int, int] | None = None) -> Tasks:
    """The ``Tasks`` of a ``config.TaskConfig`` for central training.

    ``task.kind == "hf"`` needs ``fleet``, ``(num_devices, num_held_out)``: the data is a
    fleet's; ``train`` pools the training devices' images, ``test`` the held-out ones'.
    """
    if task.kind == "hf":
        return _hf_tasks(task, seed, fleet)
    if task.kind == "hf-text":
        return _text_tasks(task, seed, fleet)
    if task.kind == "fewshot":
        return _fewshot_tasks(task)
    if task.kind == "sinusoid":
        source = _sinusoid(task)
        info = {"kind": "sinusoid", "k_shot": task.k_shot, "q_query": task.q_query,
                "amplitude": list(task.amplitude), "phase": list(task.phase)}
        return Tasks(source, source, "mlp", {}, info)
    train, test = omniglot_split(task, seed)
    info = {"kind": "omniglot", "n_way": task.n_way, "k_shot": task.k_shot,
            "q_query": task.q_query, "rotations": task.rotations,
            "train_alphabets": train.alphabets, "test_alphabets": test.alphabets}
    return Tasks(FewShotTaskSource(train.images, train.character, task.n_way, task.k_shot,
                                   task.q_query, task.rotations),
                 FewShotTaskSource(test.images, test.character, task.n_way, task.k_shot,
                                   task.q_query),
                 "conv4", {"n_way": task.n_way}, info)


def omniglot_split(task: Any, seed: int) -> tuple[OmniglotData, OmniglotData]:
    """Meta-train and held-out alphabets of the Omniglot zips in ``task.data_dir`` (kept
    in memory for the next device built in this process while the zips are unchanged)."""
    zips = tuple((str(z), z.stat().st_size, z.stat().st_mtime_ns)
                 for z in resolve_zips(task.data_dir or None))
    return _split(zips, task.test_alphabets, seed, _names(task.test_alphabet_names),
                  _names(task.exclude_alphabets))


def _names(value: str) -> tuple[str, ...]:
    """The names of a comma-separated config field, blanks dropped."""
    return tuple(name.strip() for name in value.split(",") if name.strip())


@lru_cache(maxsize=2)
def _split(zips: tuple, test_alphabets: int, seed: int, test_names: tuple[str, ...] = (),
           excluded: tuple[str, ...] = ()) -> tuple[OmniglotData, OmniglotData]:
    """Training and held-out alphabets: ``test_names`` if given, else ``test_alphabets``
    drawn with ``seed`` among those not ``excluded``; training is the rest."""
    data = load_omniglot([path for path, _, _ in zips])
    files = ", ".join(path for path, _, _ in zips)
    unknown = sorted(set(test_names + excluded) - set(data.alphabets))
    if unknown:
        field = "task.test_alphabet_names" if set(unknown) & set(test_names) \
            else "task.exclude_alphabets"
        raise ConfigError(field, ",".join(unknown), f"alphabets among {data.alphabets} "
                                                    f"in {files}")
    if excluded:
        data = data.by_alphabets(set(data.alphabets) - set(excluded)) \
            if set(data.alphabets) - set(excluded) else data.subset(np.zeros(0, dtype=np.int64))
    try:
        return split_by_alphabet(data, list(test_names) or test_alphabets, seed=seed)
    except ConfigError as exc:  # name the config field and the files, not the argument
        field = "task.test_alphabet_names" if test_names else "task.test_alphabets"
        value = ",".join(test_names) if test_names else test_alphabets
        raise ConfigError(field, value,
                          f"{exc.allowed} in {', '.join(path for path, _, _ in zips)}"
                          ) from None


def build_device_tasks(task: Any, device: int, num_devices: int, num_held_out: int,
                       seed: int = 0) -> TaskSource:
    """Device ``device``'s private task source in a fleet of ``num_devices`` whose last
    ``num_held_out`` devices are held out.

    Sinusoid: its own amplitude and phase sub-ranges (``task.device_width`` of the whole).
    Omniglot: training devices share the meta-train alphabets, held-out devices the
    held-out ones, each group split by ``task.partition`` (``fedmeta.tasks.partition``).
    """
    if task.kind == "sinusoid":
        return device_sinusoid(_sinusoid(task), device, seed, task.device_width)
    if task.kind == "hf":
        return _hf_source(task, _hf_fleet(task, num_devices, seed), device,
                          device >= num_devices - num_held_out)
    if task.kind == "hf-text":
        return _text_source(task, _text_fleet(task, num_devices, seed), device)
    held_out = device >= num_devices - num_held_out
    if task.kind == "fewshot":
        group, size = (device - (num_devices - num_held_out), num_held_out) if held_out \
            else (device, num_devices - num_held_out)
        return _fewshot_group(task, seed, held_out, size, only=group)[0]
    group, size = (device - (num_devices - num_held_out), num_held_out) if held_out \
        else (device, num_devices - num_held_out)
    return _omniglot_group(task, seed, held_out, size, only=group)[0]


def check_fleet_tasks(task: Any, num_devices: int, num_held_out: int, seed: int = 0) -> None:
    """Raise the ``DataError`` or ``ConfigError`` a device of this fleet would meet building
    its task source (too few drawers, classes or images), before any device runs."""
    if task.kind == "hf":
        fleet = _hf_fleet(task, num_devices, seed)
        empty = np.flatnonzero(np.diff(fleet.offsets) == 0)
        if len(empty):
            raise ConfigError("task.partition_by", task.partition_by,
                              f"a partition with no empty device, but {len(empty)} of "
                              f"{num_devices} devices have 0 images (device {empty[0]}: "
                              f"{fleet.names[empty[0]]}); lower federation.num_devices or "
                              f"raise task.dirichlet_alpha / task.device_classes")
        for device in range(num_devices):
            _hf_source(task, fleet, device, device >= num_devices - num_held_out)
        return
    if task.kind == "hf-text":
        fleet = _text_fleet(task, num_devices, seed)
        for device in range(num_devices):
            _text_source(task, fleet, device)
        return
    if task.kind == "fewshot":  # one device at a time: a source holds a copy of its images
        for held_out, size in ((False, num_devices - num_held_out), (True, num_held_out)):
            for device in range(size):
                _fewshot_group(task, seed, held_out, size, only=device)
        return
    if task.kind != "sinusoid":  # sampled: every device draws alike, so one shows for all
        one = 0 if task.partition == "sampled" else None
        _omniglot_group(task, seed, False, num_devices - num_held_out, only=one)
        _omniglot_group(task, seed, True, num_held_out, only=one)


def _omniglot_group(task: Any, seed: int, held_out: bool, size: int, only: int | None = None
                    ) -> list[FewShotTaskSource]:
    """The task sources of the training (or held-out) devices, split by ``task.partition``
    (``only``: just that device's, so building one device costs one device's images)."""
    data = omniglot_split(task, seed)[1 if held_out else 0]
    what = "held-out" if held_out else "training"
    try:
        if task.partition == "drawer":
            parts = by_drawer(data, size)
        elif task.partition == "alphabet":
            parts = by_alphabet(data, size)
        elif task.partition == "sampled":
            devices = range(size) if only is None else [only]
            parts = [sampled(data, d, task.device_classes, seed=seed + held_out)
                     for d in devices]
        else:
            parts = dirichlet(data, size, task.dirichlet_alpha, seed=seed + held_out)
    except ConfigError as exc:
        if exc.field.startswith("task."):
            raise
        raise ConfigError("federation.num_devices", size,
                          f"{what} devices that {task.partition} partition can give "
                          f"({exc.allowed})") from None
    try:
        parts = parts if only is None or task.partition == "sampled" else [parts[only]]
        return device_task_sources(data, parts, task.n_way, task.k_shot, task.q_query,
                                   rotations=task.rotations and not held_out,
                                   augment=task.augment and not held_out)
    except DataError as exc:
        hint = "" if task.augment or held_out else "; task.augment=true fills them with " \
                                                   "distorted copies"
        raise DataError(f"{what} devices: {exc}{hint}") from None


def _hf_key(task: Any) -> tuple:
    return tuple(getattr(task, f) for f in ("dataset", "split", "image_column", "label_column",
                                              "partition_by", "invert", "n_way", "k_shot",
                                              "q_query", "dirichlet_alpha", "device_classes",
                                              "protocol", "support_fraction",
                                              "min_device_images"))


_HF_FLEETS: dict[tuple, HFFleet] = {}  # the last fleets built in this process


def _hf_fleet(task: Any, num_devices: int, seed: int) -> HFFleet:
    """``hf_images.load_fleet``, kept in memory for the next device of this process."""
    key = (_hf_key(task), num_devices, seed)
    if key not in _HF_FLEETS:
        if len(_HF_FLEETS) >= 2:
            _HF_FLEETS.pop(next(iter(_HF_FLEETS)))
        _HF_FLEETS[key] = load_fleet(task, num_devices, seed)
    return _HF_FLEETS[key]


def _hf_source(task: Any, fleet: HFFleet, device: int, held_out: bool
               ) -> FewShotTaskSource | DeviceSplitSource:
    """Device ``device``'s source over its own images: N-way K-shot episodes (rotations and
    augment for training devices only, as with Omniglot) or, with ``task.protocol =
    "fedmeta"``, its own support/query split; one that cannot form them names itself."""
    images, labels = fleet.device(device)
    what = f"device {device} ({task.partition_by} {fleet.names[device]})"
    try:
        if task.protocol == "fedmeta":
            if len(labels) < task.min_device_images:
                raise DataError(f"fewer than task.min_device_images = "
                                f"{task.min_device_images}")
            return DeviceSplitSource(images, labels, fleet.num_classes, task.support_fraction)
        return FewShotTaskSource(images, labels, task.n_way, task.k_shot, task.q_query,
                                 task.rotations and not held_out, task.augment and not held_out)
    except DataError as exc:
        raise ConfigError("task.partition_by", task.partition_by,
                          f"a partition whose every device forms episodes, but {what} has "
                          f"{len(labels)} images: {exc}; lower federation.num_devices, "
                          f"task.n_way or task.k_shot/q_query, or raise "
                          f"task.dirichlet_alpha / task.device_classes") from None


def _hf_tasks(task: Any, seed: int, fleet: tuple[int, int] | None) -> Tasks:
    """Few-shot: the training devices' images pooled, the held-out devices' pooled.
    FedMeta protocol (federated only): the first training and first held-out device."""
    if fleet is None:
        raise ConfigError("task.kind", task.kind, "a kind whose data needs no fleet here "
                          "(hf data is split by devices: pass num_devices, num_held_out)")
    num_devices, num_held_out = fleet
    data = _hf_fleet(task, num_devices, seed)
    train = num_devices - num_held_out
    info = {"kind": "hf", "dataset": task.dataset, "split": task.split,
            "partition_by": task.partition_by, "protocol": task.protocol,
            "n_way": task.n_way, "k_shot": task.k_shot, "q_query": task.q_query,
            "num_classes": data.num_classes, "devices": num_devices,
            "eligible_partitions": data.eligible, "partitions": data.partitions,
            "held_out": data.names[train:]}
    if task.protocol == "fedmeta":
        info["support_fraction"] = task.support_fraction
        return Tasks(_hf_source(task, data, 0, False), _hf_source(task, data, train, True),
                     "femnist-cnn", {"num_classes": data.num_classes}, info)
    return Tasks(_hf_pooled(task, *data.devices(0, train), False, "the training devices"),
                 _hf_pooled(task, *data.devices(train, num_devices), True,
                            "the held-out devices"),
                 "conv4", {"n_way": task.n_way}, info)


def _hf_pooled(task: Any, images: np.ndarray, labels: np.ndarray, held_out: bool,
               what: str) -> FewShotTaskSource:
    try:
        return FewShotTaskSource(images, labels, task.n_way, task.k_shot, task.q_query,
                                 task.rotations and not held_out, task.augment and not held_out)
    except DataError as exc:
        raise ConfigError("task.partition_by", task.partition_by,
                          f"devices that form episodes, but {what} cannot: {exc}") from None


_TEXT_FLEETS: dict[tuple, TextFleet] = {}  # the last text fleets built in this process


def _text_fleet(task: Any, num_devices: int, seed: int) -> TextFleet:
    """``hf_text.load_text_fleet``, kept in memory for the next device of this process."""
    key = (tuple(getattr(task, f) for f in ("dataset", "split", "text_column", "label_column",
                                              "partition_by", "support_fraction",
                                              "min_device_images")), num_devices, seed)
    if key not in _TEXT_FLEETS:
        if len(_TEXT_FLEETS) >= 2:
            _TEXT_FLEETS.pop(next(iter(_TEXT_FLEETS)))
        _TEXT_FLEETS[key] = load_text_fleet(task, num_devices, seed)
    return _TEXT_FLEETS[key]


def _text_source(task: Any, fleet: TextFleet, device: int) -> TextSplitSource:
    """Device ``device``'s FedMeta-protocol source over its own text samples."""
    x, y = fleet.device(device)
    try:
        return TextSplitSource(x, y, task.support_fraction)
    except DataError as exc:
        raise ConfigError("task.support_fraction", task.support_fraction,
                          f"a share that splits every device, but device {device} "
                          f"({task.partition_by} {fleet.names[device]}) has {len(y)} "
                          f"samples: {exc}") from None


def _text_tasks(task: Any, seed: int, fleet: tuple[int, int] | None) -> Tasks:
    """The first training and first held-out device's sources, the character LSTM."""
    if fleet is None:
        raise ConfigError("task.kind", task.kind, "a kind whose data needs no fleet here "
                          "(hf-text data is split by devices: pass num_devices, num_held_out)")
    num_devices, num_held_out = fleet
    data = _text_fleet(task, num_devices, seed)
    train = num_devices - num_held_out
    info = {"kind": "hf-text", "dataset": task.dataset, "split": task.split,
            "partition_by": task.partition_by, "protocol": "fedmeta",
            "support_fraction": task.support_fraction, "num_classes": 80,
            "devices": num_devices, "eligible_partitions": data.eligible,
            "partitions": data.partitions, "held_out": data.names[train:]}
    return Tasks(_text_source(task, data, 0), _text_source(task, data, train), "lstm", {}, info)


@lru_cache(maxsize=3)
def _benchmark(dataset: str, data_dir: str, split: str, stamp: tuple) -> BenchmarkSplit:
    """``benchmarks.load_split``, kept in memory while the folder's files are unchanged."""
    data = load_split(dataset, data_dir, split)
    data.images.flags.writeable = False  # shared by every source built from it
    return data


def _fewshot_split(task: Any, split: str) -> BenchmarkSplit:
    folder = Path(task.data_dir).expanduser()
    files = [*folder.glob("*"), *folder.glob("cifar-100-python/*")] if folder.is_dir() else []
    stamp = tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                         for p in files if p.is_file()))
    return _benchmark(task.dataset, str(folder), split, stamp)


def _fewshot_source(task: Any, images: np.ndarray, labels: np.ndarray, held_out: bool,
                    class_names: list[str] | None = None
                    ) -> FewShotTaskSource | VaryingTaskSource:
    """Fixed N-way K-shot episodes or Meta-Dataset's varying ones over these images
    (``task.n_way`` the most classes, ``task.k_shot`` the shot cap of the support-size
    formula, ``task.q_query`` the most queries per class)."""
    if task.episodes == "meta-dataset":
        return VaryingTaskSource(images, labels, task.min_way, task.n_way, task.k_shot,
                                 task.q_query, task.max_support, class_names)
    return FewShotTaskSource(images, labels, task.n_way, task.k_shot, task.q_query,
                             task.rotations and not held_out, task.augment and not held_out)


def _fewshot_pooled(task: Any, data: BenchmarkSplit, held_out: bool
                    ) -> FewShotTaskSource | VaryingTaskSource:
    """The source over a whole split; every class of it must form episodes."""
    counts = np.bincount(data.labels, minlength=len(data.class_names))
    if task.episodes == "meta-dataset":
        need, why = 2, "a support and a query image"
    else:  # with augment a class needs one image, which every class here has
        need = 1 if task.augment and not held_out else task.k_shot + task.q_query
        why = "k_shot + q_query"
    if (counts < need).any():
        c = int(np.argmax(counts < need))
        raise DataError(f"{data.source}: class {data.class_names[c]!r} of the {data.split} "
                        f"split has {counts[c]} images, fewer than the {need} its episodes "
                        f"need ({why})")
    try:
        return _fewshot_source(task, data.images, data.labels, held_out, data.class_names)
    except DataError as exc:
        raise DataError(f"{data.source} ({data.split} split): {exc}") from None


def _fewshot_tasks(task: Any) -> Tasks:
    """Meta-train on the train split's classes, score on ``task.eval_split``'s."""
    train, test = _fewshot_split(task, "train"), _fewshot_split(task, task.eval_split)
    info = {"kind": "fewshot", "dataset": task.dataset, "eval_split": task.eval_split,
            "episodes": task.episodes, "n_way": task.n_way, "k_shot": task.k_shot,
            "q_query": task.q_query, "train_classes": len(train.class_names),
            "eval_classes": len(test.class_names), "train_images": len(train),
            "eval_images": len(test)}
    if task.episodes == "meta-dataset":
        info |= {"min_way": task.min_way, "max_support": task.max_support}
    return Tasks(_fewshot_pooled(task, train, False), _fewshot_pooled(task, test, True),
                 "conv4", {"n_way": task.n_way, "in_channels": 3,
                           "image_size": IMAGE_SIZE[task.dataset]}, info)


@dataclass(frozen=True)
class _Labels:
    """The labels of a split, as ``partition.dirichlet`` and ``sampled`` read them."""

    character: np.ndarray

    def __len__(self) -> int:
        return len(self.character)


def _fewshot_group(task: Any, seed: int, held_out: bool, size: int, only: int | None = None
                   ) -> list[FewShotTaskSource | VaryingTaskSource]:
    """The sources of the training devices (train split) or the held-out ones
    (``task.eval_split``), split by ``task.partition`` (``only``: just that device's)."""
    data = _fewshot_split(task, task.eval_split if held_out else "train")
    what = "held-out" if held_out else "training"
    devices = range(size) if only is None else [only]
    try:
        if task.partition == "class":
            parts = by_class(data.labels, size, seed + held_out)
        elif task.partition == "dirichlet":
            parts = dirichlet(_Labels(data.labels), size, task.dirichlet_alpha,
                              seed=seed + held_out)
        else:
            parts = {d: sampled(_Labels(data.labels), d, task.device_classes,
                                seed=seed + held_out) for d in devices}
    except ConfigError as exc:
        if exc.field.startswith("task."):
            raise
        raise ConfigError("federation.num_devices", size,
                          f"{what} devices that the {task.partition} partition of "
                          f"{task.dataset}'s {data.split} split can give ({exc.allowed})"
                          ) from None
    sources = []
    for d in devices:
        rows = parts[d]
        try:
            sources.append(_fewshot_source(task, data.images[rows], data.labels[rows],
                                           held_out, data.class_names))
        except DataError as exc:
            raise ConfigError("task.partition", task.partition,
                              f"a partition whose every device forms episodes, but {what} "
                              f"device {d} ({len(rows)} images of {data.split}) cannot: "
                              f"{exc}; lower federation.num_devices or task.n_way, or raise "
                              f"task.dirichlet_alpha / task.device_classes") from None
    return sources

"""Few-shot episodes stored as image files, in a folder or a zip, in one of two layouts.

``generic``: ``<episode>/support/<class>/<image>`` and ``<episode>/query/<class>/<image>``;
labels follow the sorted class folder names of the support set.

``omniglot-runs``: Lake et al.'s one-shot classification runs (``all_runs``):
``runNN/training/classNN.png`` is the support set (one image per class, labelled in sorted
name order), ``runNN/test/itemNN.png`` the queries, and ``runNN/class_labels.txt`` has one
line ``test-image class-image`` per query, paths with or without the ``runNN/`` prefix.

Either layout may sit inside one extra top folder. Every image goes through ``images.decode``:
grey 28x28 by default, or the channels and size of the model that will score it (RGB 84x84
or 32x32 for a few-shot benchmark's Conv4).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..errors import DataError
from .episode import Episode
from .images import IMAGE_SIZE, decode

LAYOUTS = {
    "generic": "<episode>/support/<class>/<image> with <episode>/query/<class>/<image>",
    "omniglot-runs": "<run>/training/<class image>, <run>/test/<item image> and "
                     "<run>/class_labels.txt",
}
LABELS_FILE = "class_labels.txt"


@dataclass(frozen=True)
class ImageEpisodes:
    """Episodes by name, in name order, and the layout they were read from."""

    layout: str
    episodes: dict[str, Episode]

    def __len__(self) -> int:
        return len(self.episodes)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _leaf(path: str) -> str:
    return path.rpartition("/")[2]


class _Tree:
    """The files and folders of a folder or zip by ``/``-separated path, and their bytes."""

    def __init__(self, origin: str, files: Iterable[str], folders: Iterable[str],
                 read: Callable[[str], bytes]) -> None:
        self.origin, self._read = origin, read
        self.channels, self.size = 1, IMAGE_SIZE  # what ``image`` decodes to
        self.files = {f for f in files if not _ignored(f)}
        self._subfolders: dict[str, set[str]] = defaultdict(set)
        self._files_in: dict[str, set[str]] = defaultdict(set)
        for f in self.files:
            self._files_in[_parent(f)].add(f)
        for folder in [*folders, *(_parent(f) for f in self.files)]:
            while folder and not _ignored(folder):  # add every ancestor: zips may omit them
                self._subfolders[_parent(folder)].add(folder)
                folder = _parent(folder)

    def name(self, path: str) -> str:
        """``path`` as the user should see it in a message."""
        return _join(self.origin, path)

    def is_folder(self, path: str) -> bool:
        return path in self._subfolders[_parent(path)]

    def subfolders(self, folder: str) -> list[str]:
        return sorted(self._subfolders[folder])

    def files_in(self, folder: str) -> list[str]:
        return sorted(self._files_in[folder])

    def image(self, path: str) -> np.ndarray:
        return decode(self._read(path), self.name(path), self.size, self.channels)

    def text(self, path: str) -> str:
        try:
            return self._read(path).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.name(path)}: not UTF-8 text ({exc})") from exc


def _ignored(path: str) -> bool:
    """Hidden files and macOS zip debris (``__MACOSX``, ``.DS_Store``) are not data."""
    return any(p.startswith(".") or p == "__MACOSX" for p in path.split("/"))


def read_image_episodes(path: str | Path, channels: int = 1,
                        size: int = IMAGE_SIZE) -> ImageEpisodes:
    """Read every episode under a folder or in a ``.zip``, detecting its layout; images
    become ``(channels, size, size)`` (1: grey and inverted, 3: RGB)."""
    path = Path(path)
    if path.is_dir():
        return _parse(_sized(_folder_tree(path), channels, size))
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        with zipfile.ZipFile(path) as archive:
            return _parse(_sized(_zip_tree(path, archive), channels, size))
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a folder or a readable zip archive ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _sized(tree: _Tree, channels: int, size: int) -> _Tree:
    tree.channels, tree.size = channels, size
    return tree


def _folder_tree(root: Path) -> _Tree:
    files, folders = [], []
    for here, dirs, names in os.walk(root):
        rel = Path(here).relative_to(root).as_posix() if Path(here) != root else ""
        folders += [_join(rel, d) for d in dirs]
        files += [_join(rel, n) for n in names]

    def read(rel: str) -> bytes:
        try:
            return (root / rel).read_bytes()
        except OSError as exc:
            raise DataError(f"{root / rel}: cannot be read ({exc.strerror})") from exc

    return _Tree(str(root), files, folders, read)


def _zip_tree(path: Path, archive: zipfile.ZipFile) -> _Tree:
    names = archive.namelist()

    def read(member: str) -> bytes:
        try:
            return archive.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                RuntimeError) as exc:  # corrupt data, unknown compression, encryption
            raise DataError(f"{path}/{member}: cannot be read from the zip ({exc})") from exc

    return _Tree(str(path), [n for n in names if not n.endswith("/")],
                 [n.rstrip("/") for n in names if n.endswith("/")], read)


def _parse(tree: _Tree) -> ImageEpisodes:
    top = tree.subfolders("")
    for base in [""] + (top if len(top) == 1 else []):  # maybe inside one extra top folder
        folders = tree.subfolders(base)
        runs = [f for f in folders if _join(f, LABELS_FILE) in tree.files]
        generic = [f for f in folders
                   if tree.is_folder(_join(f, "support")) or tree.is_folder(_join(f, "query"))]
        if runs and generic:
            raise DataError(f"{tree.name(base)}: mixes layouts ({tree.name(runs[0])} is an "
                            f"omniglot run, {tree.name(generic[0])} a generic episode)")
        if runs or generic:
            layout, read = ("omniglot-runs", _read_run) if runs else ("generic", _read_episode)
            return ImageEpisodes(layout, {_leaf(f): read(tree, f) for f in folders})
    expected = "; ".join(f"{name}: {shape}" for name, shape in LAYOUTS.items())
    raise DataError(f"{tree.origin}: no episodes found; expected one of these layouts "
                    f"(optionally inside one top folder): {expected}")


def _images(tree: _Tree, folder: str) -> np.ndarray:
    """The decoded images of one class folder, in file name order."""
    files = tree.files_in(folder)
    if not files:
        raise DataError(f"{tree.name(folder)}: class folder has no images")
    return np.stack([tree.image(f) for f in files])


def _tensors(images: list[np.ndarray], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.concatenate(images))
    x = x.unsqueeze(1) if x.dim() == 3 else x  # grey images get their one channel
    return x, torch.tensor(labels, dtype=torch.int64)


def _class_folders(tree: _Tree, episode: str, split: str) -> dict[str, str]:
    """Class name -> folder of one split of a generic episode."""
    folder = _join(episode, split)
    if not tree.is_folder(folder):
        raise DataError(f"{tree.name(episode)}: episode has no {split}/ folder; expected "
                        f"layout {LAYOUTS['generic']}")
    if tree.files_in(folder):
        raise DataError(f"{tree.name(tree.files_in(folder)[0])}: image is not inside a class "
                        f"folder of {split}/")
    classes = {_leaf(f): f for f in tree.subfolders(folder)}
    if not classes:
        raise DataError(f"{tree.name(folder)}: no class folders")
    return classes


def _read_episode(tree: _Tree, episode: str) -> Episode:
    """A generic episode: labels by sorted support class name."""
    support = _class_folders(tree, episode, "support")
    query = _class_folders(tree, episode, "query")
    unknown = sorted(set(query) - set(support))
    if unknown:
        raise DataError(f"{tree.name(_join(episode, 'query', unknown[0]))}: query class "
                        f"{unknown[0]!r} is not among the support classes {sorted(support)}")
    label = {name: i for i, name in enumerate(sorted(support))}
    tensors = []
    for classes in (support, query):
        names = sorted(classes)
        images = [_images(tree, classes[name]) for name in names]
        tensors += _tensors(images, [label[n] for n, im in zip(names, images) for _ in im])
    return Episode(*tensors, n_way=len(support))


def _read_run(tree: _Tree, run: str) -> Episode:
    """An omniglot run: one support image per class; queries labelled by class_labels.txt."""
    classes = tree.files_in(_join(run, "training"))
    if not classes:
        raise DataError(f"{tree.name(_join(run, 'training'))}: no class images")
    label = {c: i for i, c in enumerate(classes)}
    labels_file = _join(run, LABELS_FILE)
    if labels_file not in tree.files:
        raise DataError(f"{tree.name(run)}: run has no {LABELS_FILE}; expected layout "
                        f"{LAYOUTS['omniglot-runs']}")
    items, item_labels = [], []
    for number, line in enumerate(tree.text(labels_file).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{tree.name(labels_file)} line {number}"
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{where}: expected 'test-image class-image', got {line.strip()!r}")
        item, image = (_in_run(tree, run, f, where) for f in fields)
        if image not in label:
            raise DataError(f"{where}: {fields[1]} is not a class image in "
                            f"{tree.name(_join(run, 'training'))}")
        items.append(tree.image(item))
        item_labels.append(label[image])
    if not items:
        raise DataError(f"{tree.name(labels_file)}: no test items listed")
    support = np.stack([tree.image(c) for c in classes])
    return Episode(*_tensors([support], list(range(len(classes)))),
                   *_tensors([np.stack(items)], item_labels), n_way=len(classes))


def _in_run(tree: _Tree, run: str, listed: str, where: str) -> str:
    """The file a class_labels.txt path means, relative to the run, ``runNN/`` prefix or not."""
    rel = listed.replace("\\", "/").removeprefix("./")
    rel = rel.removeprefix(_leaf(run) + "/")
    if _join(run, rel) not in tree.files:
        raise DataError(f"{where}: {listed} points at {tree.name(_join(run, rel))}, "
                        f"which does not exist")
    return _join(run, rel)

"""miniImageNet, CIFAR-FS and FC100 read from the files their users have, one split at a time.

miniImageNet (84x84 RGB), either common distribution, in ``task.data_dir``:

- the pickled caches ``mini-imagenet-cache-{train,val,test}.pkl`` (learn2learn's): a dict
  ``{'image_data': uint8 (N, 84, 84, 3), 'class_dict': {wnid: [row, ...]}}``; used when
  the split's file is there;
- otherwise Ravi & Larochelle's split CSVs ``{train,val,test}.csv`` (header
  ``filename,label``) beside an ``images/`` folder holding the JPEGs they name, decoded once
  (RGB, Lanczos to 84x84) and cached as ``$FEDMETA_CACHE/fewshot/<key>.npz``.

CIFAR-FS and FC100 (32x32 RGB): CIFAR-100's python pickles ``cifar-100-python/{train,test,
meta}`` (in ``task.data_dir``, or ``task.data_dir`` is that folder); the images of both
files, split by fine class (CIFAR-FS) or superclass (FC100) as ``benchmark_splits`` lists.

A split's classes must be exactly the published split's; images stay uint8 ``(n, 3, S, S)``
(scaled to ``[0, 1]`` per episode). Pickles are read by an unpickler that admits numpy
arrays and builtins only, so a hostile file cannot run code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .. import safe_pickle
from ..errors import ConfigError, DataError
from .benchmark_splits import CIFAR_FS, FC100, MINIIMAGENET, SPLITS
from .images import to_rgb
from .omniglot import CACHE_ENV

DATASETS = ("miniimagenet", "cifar-fs", "fc100")
IMAGE_SIZE = {"miniimagenet": 84, "cifar-fs": 32, "fc100": 32}
FC100_CLASSES_PER_SUPERCLASS = 5  # CIFAR-100: 20 superclasses of 5 fine classes
CACHE_VERSION = 1  # bump when the decoded arrays change
MINI_SOURCES = ("the split CSVs of Ravi & Larochelle (github.com/twitter/meta-learning-lstm, "
                "data/miniImagenet) with the ImageNet JPEGs they name in images/, or "
                "learn2learn's mini-imagenet-cache-<split>.pkl (learn2learn.vision.datasets."
                "MiniImagenet(download=True))")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR_SOURCE = f"CIFAR-100's python version, {CIFAR_URL} ('fedmeta data download --dataset " \
               f"cifar-100'), unpacked"
@dataclass(frozen=True)
class BenchmarkSplit:
    """One split of a benchmark: ``labels`` index ``class_names`` (sorted)."""

    dataset: str
    split: str
    images: np.ndarray  # (n, 3, S, S) uint8
    labels: np.ndarray  # (n,) int64
    class_names: list[str]
    source: str  # the files read, for messages

    def __len__(self) -> int:
        return len(self.labels)


def _unpickle(path: Path, what: str) -> object:
    """The object pickled in ``path`` (``what`` says what it should hold)."""
    try:
        with path.open("rb") as f:
            return safe_pickle.load(f, safe_pickle.NUMPY_ARRAYS, encoding="latin1")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except Exception as exc:  # any unpickling failure: the file is not what it should be
        raise DataError(f"{path}: not a readable pickle of {what} ({exc})") from exc


def _keyed(obj: object, path: Path, keys: Sequence[str], what: str) -> dict[str, object]:
    """``obj`` as a dict with ``keys`` (bytes keys decoded), or a ``DataError``."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, expected {what}")
    found = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    missing = [k for k in keys if k not in found]
    if missing:
        raise DataError(f"{path}: has no {', '.join(map(repr, missing))} (keys: "
                        f"{sorted(map(str, found))}); expected {what}")
    return found


def load_split(dataset: str, data_dir: str | Path, split: str,
               cache: str | Path | None = None) -> BenchmarkSplit:
    """The images and labels of ``split`` (train, val or test) of ``dataset``."""
    if dataset not in DATASETS:
        raise DataError(f"{dataset!r}: not a benchmark; expected one of {list(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"{split!r}: not a split; expected one of {list(SPLITS)}")
    root = Path(data_dir)
    if dataset == "miniimagenet":
        return _miniimagenet(root, split, cache)
    return _cifar(dataset, root, split)


def _checked(dataset: str, split: str, names: Sequence[str], source: str,
             wanted: Sequence[str]) -> None:
    """The classes found must be exactly the published split's."""
    missing, extra = sorted(set(wanted) - set(names)), sorted(set(names) - set(wanted))
    if missing or extra:
        raise DataError(
            f"{source}: its classes are not the {len(wanted)} of {dataset}'s standard "
            f"{split} split ({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} not "
            f"in it, e.g. {extra[:3]}); is it another split's file?")


# -- miniImageNet ------------------------------------------------------------------------------

def _miniimagenet(root: Path, split: str, cache: str | Path | None) -> BenchmarkSplit:
    pkl, table = root / f"mini-imagenet-cache-{split}.pkl", root / f"{split}.csv"
    if pkl.is_file():
        images, labels, names = _mini_pickle(pkl)
        source = str(pkl)
    elif table.is_file():
        images, labels, names = _mini_csv(table, root / "images", cache)
        source = str(table)
    else:
        raise ConfigError("task.data_dir", str(root),
                          f"a folder holding miniImageNet's {split} split: {pkl} or {table} "
                          f"with an images/ folder beside it ({MINI_SOURCES})")
    _checked("miniimagenet", split, names, source, MINIIMAGENET[split])
    return BenchmarkSplit("miniimagenet", split, images, labels, names, source)


def _mini_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    what = "{'image_data': uint8 (N, 84, 84, 3), 'class_dict': {wnid: [row, ...]}}"
    data = _keyed(_unpickle(path, what), path, ("image_data", "class_dict"), what)
    images, classes = data["image_data"], data["class_dict"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 \
            or images.ndim != 4 or images.shape[1:] != (84, 84, 3):
        shape = getattr(images, "shape", type(images).__name__)
        raise DataError(f"{path}: image_data is {getattr(images, 'dtype', '')} {shape}, "
                        f"expected uint8 (N, 84, 84, 3)")
    if not isinstance(classes, dict) or not classes:
        raise DataError(f"{path}: class_dict is not a non-empty dict {{wnid: [row, ...]}}")
    names = sorted(str(k) for k in classes)
    rows, labels = [], []
    for label, name in enumerate(names):
        index = np.asarray(classes[name])
        if index.ndim != 1 or index.dtype.kind not in "iu" \
                or ((index < 0) | (index >= len(images))).any():
            raise DataError(f"{path}: class_dict[{name!r}] is not a list of rows of "
                            f"image_data (0 to {len(images) - 1})")
        rows.append(index)
        labels.append(np.full(len(index), label, dtype=np.int64))
    order = np.concatenate(rows)
    return (np.ascontiguousarray(images[order].transpose(0, 3, 1, 2)), np.concatenate(labels),
            names)


def _read_csv(path: Path) -> list[tuple[str, str]]:
    """The ``(filename, label)`` rows of a Ravi split CSV."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as text ({exc})") from exc
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or [c.strip() for c in lines[0]] != ["filename", "label"]:
        raise DataError(f"{path}: first line is {lines[0] if lines else 'missing'}, "
                        f"expected the header filename,label")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        if not line:
            continue
        if len(line) != 2 or not line[0].strip() or not line[1].strip():
            raise DataError(f"{path} line {number}: expected filename,label, got "
                            f"{','.join(line)!r}")
        rows.append((line[0].strip(), line[1].strip()))
    if not rows:
        raise DataError(f"{path}: no images listed")
    return rows


def _cache_file(table: Path, folder: Path, rows: list[tuple[str, str]],
                cache: str | Path | None) -> Path:
    """Keyed by the CSV's content and each listed image's size and modification time."""
    key = hashlib.sha256(f"v{CACHE_VERSION} 84 ".encode() + table.read_bytes())
    for name, _ in rows:
        try:
            stat = (folder / name).stat()
        except OSError:
            raise DataError(f"{folder / name}: listed in {table} but missing ({MINI_SOURCES})"
                            ) from None
        key.update(f"{name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    root = Path(cache) if cache is not None else (
        Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV)
        else Path.home() / ".cache" / "fedmeta")
    return root / "fewshot" / f"miniimagenet-{table.stem}-{key.hexdigest()[:20]}.npz"


def _mini_csv(table: Path, folder: Path, cache: str | Path | None
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rows = _read_csv(table)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; {table.name} names JPEGs in it "
                        f"({MINI_SOURCES})")
    path = _cache_file(table, folder, rows, cache)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as saved:
                return saved["images"], saved["labels"], saved["class_names"].tolist()
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache: decode again
    names = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(names)}
    images = np.empty((len(rows), 3, 84, 84), np.uint8)
    for i, (name, _) in enumerate(tqdm(rows, desc=f"decoding {table.name}", unit="image",
                                       disable=None)):
        images[i] = _decode_rgb(folder / name, 84)
    labels = np.array([index[label] for _, label in rows], dtype=np.int64)
    _write_cache(path, images, labels, names)
    return images, labels, names


def _decode_rgb(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 ``(3, size, size)`` RGB (Lanczos resize)."""
    try:
        with Image.open(path) as image:
            return to_rgb(image, size)
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from exc
    except OSError as exc:
        raise DataError(f"{path}: not a readable image ({exc.strerror or exc})") from exc


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray,
                 names: list[str]) -> None:
    """Write atomically; a cache that cannot be written only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False) as tmp:
            try:
                np.savez(tmp, images=images, labels=labels, class_names=np.array(names))
            except BaseException:
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, path)
    except OSError as exc:
        warnings.warn(f"{path}: cannot write the miniImageNet cache ({exc.strerror or exc}); "
                      f"set {CACHE_ENV} to a writable folder", stacklevel=3)


# -- CIFAR-FS and FC100 ------------------------------------------------------------------------

def _cifar_folder(root: Path) -> Path:
    for folder in (root / "cifar-100-python", root):
        if all((folder / f).is_file() for f in ("train", "test", "meta")):
            return folder
    raise ConfigError("task.data_dir", str(root),
                      f"a folder holding CIFAR-100's python files {root}/cifar-100-python/"
                      f"{{train,test,meta}} ({CIFAR_SOURCE})")


def _cifar_part(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    what = "CIFAR-100's {'data': uint8 (N, 3072), 'fine_labels': [...], 'coarse_labels': [...]}"
    part = _keyed(_unpickle(path, what), path, ("data", "fine_labels", "coarse_labels"), what)
    data = part["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: data is {getattr(data, 'dtype', '')} {shape}, expected "
                        f"uint8 (N, 3072)")
    labels = []
    for key in ("fine_labels", "coarse_labels"):
        values = np.asarray(part[key])
        if values.shape != (len(data),) or values.dtype.kind not in "iu":
            raise DataError(f"{path}: {key} is not {len(data)} integers, one per image")
        labels.append(values.astype(np.int64))
    return data.reshape(-1, 3, 32, 32), labels[0], labels[1]


def _names(meta: dict[str, object], key: str, path: Path, size: int) -> list[str]:
    names = meta[key]
    if not isinstance(names, list) or len(names) != size:
        raise DataError(f"{path}: {key} is not a list of {size} names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _cifar(dataset: str, root: Path, split: str) -> BenchmarkSplit:
    folder = _cifar_folder(root)
    what = "CIFAR-100's {'fine_label_names': [100 names], 'coarse_label_names': [20 names]}"
    meta = _keyed(_unpickle(folder / "meta", what), folder / "meta",
                  ("fine_label_names", "coarse_label_names"), what)
    fine_names = _names(meta, "fine_label_names", folder / "meta", 100)
    coarse_names = _names(meta, "coarse_label_names", folder / "meta", 20)
    parts = [_cifar_part(folder / f) for f in ("train", "test")]
    images = np.concatenate([p[0] for p in parts])
    fine, coarse = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
    for labels, names, key in ((fine, fine_names, "fine"), (coarse, coarse_names, "coarse")):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(f"{folder}: {key} labels outside 0..{len(names) - 1}")
    source = f"{folder} ({dataset})"
    if dataset == "cifar-fs":
        wanted = CIFAR_FS[split]
        absent = sorted(set(wanted) - set(fine_names))
        if absent:
            raise DataError(f"{folder / 'meta'}: fine_label_names lacks CIFAR-FS's {absent[:3]}"
                            f"; not CIFAR-100's meta file?")
        keep = np.isin(fine, [fine_names.index(n) for n in wanted])
    else:
        wanted_coarse = FC100[split]
        absent = sorted(set(wanted_coarse) - set(coarse_names))
        if absent:
            raise DataError(f"{folder / 'meta'}: coarse_label_names lacks FC100's "
                            f"{absent[:3]}; not CIFAR-100's meta file?")
        keep = np.isin(coarse, [coarse_names.index(n) for n in wanted_coarse])
        mixed = [fine_names[f] for f in np.unique(fine[keep]) if ((fine == f) & ~keep).any()]
        if mixed:
            raise DataError(f"{folder}: fine class {mixed[0]!r} has images in several "
                            f"superclasses; CIFAR-100's fine classes each belong to one")
        wanted = sorted({fine_names[f] for f in fine[keep]})
        if len(wanted) != FC100_CLASSES_PER_SUPERCLASS * len(wanted_coarse):
            raise DataError(f"{source}: FC100's {split} superclasses {list(wanted_coarse)} "
                            f"hold {len(wanted)} fine classes, expected "
                            f"{FC100_CLASSES_PER_SUPERCLASS} each "
                            f"({FC100_CLASSES_PER_SUPERCLASS * len(wanted_coarse)})")
    present = sorted({fine_names[f] for f in np.unique(fine[keep])})
    _checked(dataset, split, present, source, wanted)
    index = {name: i for i, name in enumerate(present)}
    labels = np.array([index[fine_names[f]] for f in fine[keep]], dtype=np.int64)
    return BenchmarkSplit(dataset, split, np.ascontiguousarray(images[keep]), labels, present,
                          source)

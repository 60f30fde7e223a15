"""Tiny miniImageNet, CIFAR-FS and FC100 files written in exactly their standard formats.

Every class of the published splits is there, with a few synthetic images each: a class's
images share a colour (so episodes are learnable) plus noise. Nothing here is real data.

- miniImageNet: Ravi & Larochelle's ``{split}.csv`` (``filename,label``, file names
  ``<wnid><8 digits>.jpg``) beside ``images/`` of 84x84 JPEGs; or learn2learn's
  ``mini-imagenet-cache-{split}.pkl`` (``{'image_data': uint8 (N, 84, 84, 3),
  'class_dict': {wnid: [row, ...]}}``).
- CIFAR-100 python: ``cifar-100-python/{train,test}`` (dicts with ``data`` uint8
  ``(N, 3072)`` in R, G, B planes, ``fine_labels``, ``coarse_labels``, ``filenames``,
  ``batch_label``) and ``meta`` (``fine_label_names``, ``coarse_label_names``), pickled
  with protocol 2 by Python 3 (``write_cifar100``) or byte for byte as the release's
  Python 2 cPickle wrote them (``write_cifar100_py2``).
"""

from __future__ import annotations

import csv
import struct
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from fedmeta.tasks.benchmark_splits import MINIIMAGENET, SPLITS

# CIFAR-100's superclasses and their fine classes (Krizhevsky 2009, the release's meta file).
CIFAR100 = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant",
                                       "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
FINE = sorted(f for fines in CIFAR100.values() for f in fines)  # the meta file's order
COARSE = sorted(CIFAR100)
COARSE_OF = {f: c for c, fines in CIFAR100.items() for f in fines}


def class_images(rng: np.random.Generator, label: int, count: int, size: int) -> np.ndarray:
    """``count`` uint8 ``(size, size, 3)`` images of one class: its colour plus noise."""
    colour = np.random.default_rng(label).integers(30, 226, 3)
    noise = rng.integers(-25, 26, (count, size, size, 3))
    return np.clip(colour + noise, 0, 255).astype(np.uint8)


def mini_split(split: str, per_class: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """image_data and class_dict of a miniImageNet split, classes in the split's order."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    wnids = MINIIMAGENET[split]
    images = np.concatenate([class_images(rng, int(w[1:]), per_class, 84)
                             for w in wnids])
    return images, {w: list(range(i * per_class, (i + 1) * per_class))
                    for i, w in enumerate(wnids)}


def write_mini_csv(root: Path, per_class: int = 3, splits: tuple[str, ...] = SPLITS) -> Path:
    """Ravi split CSVs and images/ JPEGs; returns ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split in splits:
        images, classes = mini_split(split, per_class)
        with (root / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            for wnid, rows in classes.items():
                for n, row in enumerate(rows):
                    name = f"{wnid}{n + 1:08d}.jpg"
                    Image.fromarray(images[row]).save(root / "images" / name, quality=95)
                    writer.writerow([name, wnid])
    return root


def write_mini_pickle(root: Path, per_class: int = 3, splits: tuple[str, ...] = SPLITS,
                      protocol: int = 4) -> Path:
    """learn2learn's mini-imagenet-cache-<split>.pkl files; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        images, classes = mini_split(split, per_class)
        with (root / f"mini-imagenet-cache-{split}.pkl").open("wb") as f:
            pickle.dump({"image_data": images, "class_dict": classes}, f, protocol=protocol)
    return root


def cifar_parts(train_per_class: int = 3, test_per_class: int = 1, seed: int = 0
                ) -> dict[str, dict]:
    """The three CIFAR-100 pickles' contents: every fine class, a few images each."""
    rng = np.random.default_rng(seed)
    parts = {}
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), per_class)
        order = rng.permutation(len(fine))  # the release is not sorted by class
        fine = fine[order]
        hwc = np.concatenate([class_images(rng, int(f), 1, 32) for f in fine])
        parts[name] = {
            "filenames": [f"{FINE[f]}_s_{i:06d}.png" for i, f in enumerate(fine)],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": fine.tolist(),
            "coarse_labels": [COARSE.index(COARSE_OF[FINE[f]]) for f in fine],
            "data": hwc.transpose(0, 3, 1, 2).reshape(len(fine), 3072),  # R, G, B planes
        }
    parts["meta"] = {"fine_label_names": FINE, "coarse_label_names": COARSE}
    return parts


def write_cifar100(root: Path, parts: dict[str, dict] | None = None) -> Path:
    """``root/cifar-100-python/{train,test,meta}``; returns ``root``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (parts or cifar_parts()).items():
        with (folder / name).open("wb") as f:
            pickle.dump(content, f, protocol=2)
    return root


def py2_pickle(obj: object) -> bytes:
    """``obj`` pickled as Python 2's cPickle (protocol 2) writes it, the CIFAR-100 release's
    format: strings are byte strings (``U``/``T`` opcodes, read back by Python 3 only with
    ``encoding="latin1"``) and arrays reference ``numpy.core.multiarray._reconstruct`` with
    their data as one byte string. Dicts, lists, str, int and 1/2-D uint8 arrays only."""
    out = bytearray(b"\x80\x02")

    def string(text: str | bytes) -> None:
        raw = text.encode("latin1") if isinstance(text, str) else text
        out.extend(b"U" + bytes([len(raw)]) + raw if len(raw) < 256
                   else b"T" + struct.pack("<I", len(raw)) + raw)

    def integer(value: int) -> None:
        out.extend(b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value))

    def save(value: object) -> None:
        if isinstance(value, dict):
            out.extend(b"}(")
            for k, v in value.items():
                save(k)
                save(v)
            out.extend(b"u")
        elif isinstance(value, list):
            out.extend(b"](")
            for v in value:
                save(v)
            out.extend(b"e")
        elif isinstance(value, str):
            string(value)
        elif isinstance(value, (int, np.integer)):
            integer(int(value))
        elif isinstance(value, np.ndarray) and value.dtype == np.uint8:
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            out.extend(b"K\x00\x85")
            string("b")
            out.extend(b"\x87R(K\x01(")
            for n in value.shape:
                integer(n)
            out.extend(b"tcnumpy\ndtype\n")
            string("u1")
            out.extend(b"K\x00K\x01\x87R(K\x03")
            string("|")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(np.ascontiguousarray(value).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"py2_pickle: no {type(value).__name__}")

    save(obj)
    return bytes(out + b".")


def write_cifar100_py2(root: Path, parts: dict[str, dict] | None = None) -> Path:
    """``write_cifar100`` with the files byte-for-byte in Python 2's pickle format."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (parts or cifar_parts()).items():
        (folder / name).write_bytes(py2_pickle(content))
    return root

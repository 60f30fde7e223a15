"""Small synthetic datasets in the exact schema of Flower's hub datasets, written as the hub
lays them out (``data/train-00000-of-00001.parquet``), so ``datasets.load_dataset`` reads
them through the same code as a downloaded copy.

``flwrlabs/femnist``: one ``train`` split, ``image`` (28x28 ``Image``), ``writer_id``
(string), ``hsf_id`` (int 0-7), ``character`` (``ClassLabel``, 62 classes: digits, upper
then lower case letters). The images are learnable on purpose: each class is a fixed set of
random strokes, drawn shifted, in a writer's own stroke width, with pixel noise.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

FEMNIST_CLASSES = list(string.digits + string.ascii_uppercase + string.ascii_lowercase)
SPLIT_FILE = Path("data") / "train-00000-of-00001.parquet"


def femnist_features():
    from datasets import ClassLabel, Features, Image as HFImage, Value
    return Features({"image": HFImage(), "writer_id": Value("string"),
                     "hsf_id": Value("int64"), "character": ClassLabel(names=FEMNIST_CLASSES)})


def class_strokes(seed: int = 0) -> np.ndarray:
    """Three random strokes per class, ``(62, 3, 4)`` pixel end points in [4, 23]."""
    return np.random.default_rng([seed, 62]).integers(4, 24, size=(62, 3, 4))


def draw(strokes: np.ndarray, width: int, rng: np.random.Generator, noise: float = 0.15
         ) -> Image.Image:
    """One 28x28 grey image of a class: its strokes dark on light paper, shifted by up to
    2 pixels, then pixel noise."""
    image = Image.new("L", (28, 28), 255)
    pen = ImageDraw.Draw(image)
    dx, dy = rng.integers(-2, 3, size=2)
    for x0, y0, x1, y1 in strokes:
        pen.line([(x0 + dx, y0 + dy), (x1 + dx, y1 + dy)], fill=0, width=int(width))
    pixels = np.asarray(image, dtype=np.float64) / 255 + rng.normal(0, noise, (28, 28))
    return Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8))


def femnist_rows(writers: Sequence[tuple[str, Sequence[int], int]], seed: int = 0
                 ) -> dict[str, list]:
    """Rows for writers ``(writer_id, classes, images per class)``, in a shuffled order."""
    rng = np.random.default_rng(seed)
    strokes = class_strokes(seed)
    rows: dict[str, list] = {"image": [], "writer_id": [], "hsf_id": [], "character": []}
    for number, (writer, classes, per_class) in enumerate(writers):
        width = 1 + number % 3
        for c in classes:
            for _ in range(per_class):
                rows["image"].append(draw(strokes[c], width, rng))
                rows["writer_id"].append(writer)
                rows["hsf_id"].append(number % 8)
                rows["character"].append(int(c))
    order = rng.permutation(len(rows["image"]))
    return {k: [v[i] for i in order] for k, v in rows.items()}


def write_dataset(folder: Path, rows: dict[str, list], features=None) -> Path:
    """``rows`` as the hub's one-split parquet layout under ``folder``; returns ``folder``."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    os.makedirs(folder / SPLIT_FILE.parent, exist_ok=True)
    # the table with its features in the schema metadata, as Dataset.to_parquet writes it
    # (which cannot write zero rows)
    pq.write_table(Dataset.from_dict(rows, features=features).data.table,
                   str(folder / SPLIT_FILE))
    return folder


def femnist_writers(count: int, classes: int, per_class: int, seed: int = 0
                    ) -> list[tuple[str, list[int], int]]:
    """``count`` writers ``f0000_00``..., each with ``classes`` of the 62 drawn at random."""
    rng = np.random.default_rng([seed, count])
    return [(f"f{w:04d}_{w % 100:02d}", sorted(rng.choice(62, classes, replace=False).tolist()),
             per_class) for w in range(count)]


def write_femnist(folder: Path, writers: Sequence[tuple[str, Sequence[int], int]],
                  seed: int = 0) -> Path:
    """A FEMNIST-shaped dataset of ``writers`` under ``folder``."""
    return write_dataset(folder, femnist_rows(writers, seed), femnist_features())


# ``flwrlabs/shakespeare`` (LEAF Shakespeare by role): ``character_id`` (string, the role),
# ``x`` (string, an 80-character window of its lines), ``y`` (string, the next character).
SHAKESPEARE_LINES = ("To be, or not to be: that is the question. ",
                     "Now is the winter of our discontent made glorious summer. ",
                     "All the world's a stage, and all the men and women merely players. ",
                     "If music be the food of love, play on; give me excess of it. ")


def shakespeare_features():
    from datasets import Features, Value
    return Features({"character_id": Value("string"), "x": Value("string"),
                     "y": Value("string")})


def shakespeare_rows(roles: Sequence[tuple[str, int]], seed: int = 0) -> dict[str, list]:
    """Rows for roles ``(character_id, samples)``: windows of a role's line repeated (one of
    ``SHAKESPEARE_LINES``, by role number) from random offsets, so the next character is
    learnable; shuffled."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"character_id": [], "x": [], "y": []}
    for number, (role, samples) in enumerate(roles):
        line = SHAKESPEARE_LINES[number % len(SHAKESPEARE_LINES)]
        text = line * (200 // len(line) + 2)
        for start in rng.integers(0, len(line), size=samples):
            rows["character_id"].append(role)
            rows["x"].append(text[start:start + 80])
            rows["y"].append(text[start + 80])
    order = rng.permutation(len(rows["x"]))
    return {k: [v[i] for i in order] for k, v in rows.items()}


def write_shakespeare(folder: Path, roles: Sequence[tuple[str, int]], seed: int = 0) -> Path:
    """A Shakespeare-shaped dataset of ``roles`` under ``folder``."""
    return write_dataset(folder, shakespeare_rows(roles, seed), shakespeare_features())


@contextmanager
def isolated_hf_cache(folder: Path) -> Iterator[Path]:
    """``datasets``' own cache in ``folder``, and no fleet kept from other tests (in memory)
    before or after."""
    import datasets

    from fedmeta.tasks import factory
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", folder)
        patch.setenv("HF_DATASETS_CACHE", str(folder))
        factory._HF_FLEETS.clear()
        factory._TEXT_FLEETS.clear()
        yield folder
        factory._HF_FLEETS.clear()
        factory._TEXT_FLEETS.clear()

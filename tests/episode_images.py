"""Small image-episode fixtures in both layouts, written with PIL, for the evaluate tests."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from fedmeta.checkpoint import Checkpoint
from fedmeta.meta import build_learner
from fedmeta.models import Conv4
from fedmeta.tasks.episode import Episode
from fedmeta.tasks.images import to_array

SIZES = ((105, 105), (50, 40), (33, 61))
MODES = ("L", "1")


def shape(cls: int, size: tuple[int, int] = (105, 105), mode: str = "L",
          shift: int = 0) -> Image.Image:
    """Black ink on white: a filled square in cell ``cls`` of a 3x3 grid (so up to 9
    trivially separable classes), moved right by ``shift`` pixels."""
    w, h = size
    image = Image.new("L", size, 255)
    col, row = cls % 3, cls // 3
    ImageDraw.Draw(image).rectangle(
        [col * w // 3 + shift, row * h // 3, (col + 1) * w // 3 - 1, (row + 1) * h // 3 - 1],
        fill=0)
    return image.convert(mode)


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_generic(root: Path, episodes: int = 2, classes: tuple[str, ...] = ("b", "c", "a"),
                 shots: int = 2, queries: int = 2) -> dict[str, Episode]:
    """Write ``<episode>/{support,query}/<class>/NN.png`` and return the episodes the reader
    should produce (labels by sorted class name), built from the PIL images directly."""
    expected = {}
    for e in range(episodes):
        name = f"ep{e:02d}"
        tensors = []
        for split, count in (("support", shots), ("query", queries)):
            xs, ys = [], []
            for label, cls in enumerate(sorted(classes)):
                for i in range(count):
                    image = shape(label + e, SIZES[(i + label) % 3], MODES[i % 2],
                                  shift=i if split == "query" else 0)
                    save(image, root / name / split / cls / f"{i:02d}.png")
                    xs.append(torch.from_numpy(to_array(image)))
                    ys.append(label)
            tensors += [torch.stack(xs).unsqueeze(1), torch.tensor(ys)]
        expected[name] = Episode(*tensors, n_way=len(classes))
    return expected


def make_runs(root: Path, runs: int = 2, ways: int = 4, prefixed: bool = True
              ) -> dict[str, list[int]]:
    """Write omniglot-style runs whose test items are exact copies of the class images (of
    various sizes and modes), listed in ``class_labels.txt`` in a shuffled order; return each
    run's item labels as that file says (index of the class image in sorted order)."""
    labels = {}
    g = torch.Generator().manual_seed(1)
    for r in range(1, runs + 1):
        run = f"run{r:02d}"
        for c in range(ways):
            save(shape(c + r, SIZES[c % 3], MODES[c % 2]), root / run / "training" /
                 f"class{c + 1:02d}.png")
        order = torch.randperm(ways, generator=g).tolist()
        lines = []
        for i, c in enumerate(order):
            save(shape(c + r, SIZES[c % 3], MODES[c % 2]),
                 root / run / "test" / f"item{i + 1:02d}.png")
            pre = f"{run}/" if prefixed else ""
            lines.append(f"{pre}test/item{i + 1:02d}.png {pre}training/class{c + 1:02d}.png")
        (root / run / "class_labels.txt").write_text("\n".join(lines) + "\n")
        labels[run] = order
    return labels


def zip_folder(folder: Path, archive: Path, top: str = "") -> Path:
    """Zip every file and folder under ``folder``, inside the folder ``top`` if given."""
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            name = "/".join(p for p in (top, path.relative_to(folder).as_posix()) if p)
            if path.is_dir():
                z.writestr(name + "/", b"")
            else:
                z.write(path, name)
    return archive


def save_checkpoint(path: Path, algorithm: str = "maml", n_way: int = 3, **learner_kwargs
                    ) -> Path:
    """An untrained, narrow Conv4 learner saved as a checkpoint."""
    torch.manual_seed(0)
    model_kwargs = {"n_way": n_way, "channels": 8}
    learner = build_learner(algorithm, Conv4(**model_kwargs), **learner_kwargs)
    return Checkpoint(algorithm, "conv4", model_kwargs, learner_kwargs, learner.init_params(),
                      {"kind": "omniglot", "n_way": n_way, "k_shot": 1}).save(path)


def _stored_zip_with_bad_member(tmp: Path) -> tuple[Path, str]:
    """A zip (stored, uncompressed) whose first image's bytes are flipped: a CRC error."""
    make_generic(tmp / "src", episodes=1)
    archive = tmp / "bad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(p for p in (tmp / "src").rglob("*") if p.is_file()):
            z.write(path, path.relative_to(tmp / "src").as_posix())
        info = z.infolist()[0]
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode())
    data[start + 40] ^= 0xFF
    archive.write_bytes(bytes(data))
    return archive, f"bad.zip/{info.filename}"


def _generic(tmp: Path) -> Path:
    make_generic(tmp / "eps", episodes=2)
    return tmp / "eps"


def _runs(tmp: Path) -> Path:
    make_runs(tmp / "runs", runs=2)
    return tmp / "runs"


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def _missing(tmp: Path) -> tuple[Path, str]:
    return tmp / "nope", "nope: no such file or folder"


def _not_a_zip(tmp: Path) -> tuple[Path, str]:
    (tmp / "episodes.zip").write_text("just text")
    return tmp / "episodes.zip", "episodes.zip: not a folder or a readable zip archive"


def _truncated_zip(tmp: Path) -> tuple[Path, str]:
    archive = zip_folder(_generic(tmp), tmp / "cut.zip")
    archive.write_bytes(archive.read_bytes()[:300])
    return archive, "cut.zip: not a folder or a readable zip archive"


def _neither_layout(tmp: Path) -> tuple[Path, str]:
    save(shape(0), tmp / "stuff" / "a" / "x.png")
    save(shape(0), tmp / "stuff" / "b" / "y.png")
    return tmp / "stuff", "no episodes found; expected one of these layouts"


def _query_class_not_in_support(tmp: Path) -> tuple[Path, str]:
    root = _generic(tmp)
    (root / "ep01" / "query" / "c").rename(root / "ep01" / "query" / "zebra")
    return root, "ep01/query/zebra: query class 'zebra' is not among the support classes"


def _empty_class_folder(tmp: Path) -> tuple[Path, str]:
    root = _generic(tmp)
    for f in (root / "ep00" / "support" / "b").iterdir():
        f.unlink()
    return root, "ep00/support/b: class folder has no images"


def _empty_class_folder_in_zip(tmp: Path) -> tuple[Path, str]:
    root, _ = _empty_class_folder(tmp)
    return zip_folder(root, tmp / "eps.zip", top="top"), "eps.zip/top/ep00/support/b: class " \
                                                         "folder has no images"


def _unreadable_image(tmp: Path) -> tuple[Path, str]:
    root = _generic(tmp)
    (root / "ep01" / "query" / "a" / "01.png").write_bytes(b"not a png")
    return root, "ep01/query/a/01.png: not a readable image"


def _no_query_folder(tmp: Path) -> tuple[Path, str]:
    root = _generic(tmp)
    (root / "ep01" / "query").rename(tmp / "elsewhere")
    return root, "ep01: episode has no query/ folder"


def _image_outside_class_folder(tmp: Path) -> tuple[Path, str]:
    root = _generic(tmp)
    save(shape(0), root / "ep00" / "support" / "loose.png")
    return root, "ep00/support/loose.png: image is not inside a class folder"


def _labels_point_at_missing_file(tmp: Path) -> tuple[Path, str]:
    root = _runs(tmp)
    _edit(root / "run02" / "class_labels.txt", "class03.png", "class33.png")
    return root, "run02/training/class33.png, which does not exist"


def _labels_line_malformed(tmp: Path) -> tuple[Path, str]:
    root = _runs(tmp)
    _edit(root / "run01" / "class_labels.txt", "test/item02.png", "test/item02.png extra")
    return root, "run01/class_labels.txt line 2: expected 'test-image class-image'"


def _labels_point_at_no_class_image(tmp: Path) -> tuple[Path, str]:
    root = _runs(tmp)
    _edit(root / "run01" / "class_labels.txt", "training/class02.png", "test/item01.png")
    return root, "run01/test/item01.png is not a class image in"


def _run_without_labels(tmp: Path) -> tuple[Path, str]:
    root = _runs(tmp)
    (root / "run02" / "class_labels.txt").unlink()
    return root, "run02: run has no class_labels.txt"


BROKEN = {f.__name__.lstrip("_"): f for f in (
    _missing, _not_a_zip, _truncated_zip, _stored_zip_with_bad_member, _neither_layout,
    _query_class_not_in_support, _empty_class_folder, _empty_class_folder_in_zip,
    _unreadable_image, _no_query_folder, _image_outside_class_folder,
    _labels_point_at_missing_file, _labels_line_malformed, _labels_point_at_no_class_image,
    _run_without_labels)}
"""Bad episode inputs: name -> builder(tmp_path) -> (path, text the error must contain)."""

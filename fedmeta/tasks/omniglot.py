"""Omniglot from the official zips, decoded once to 28x28 arrays and cached as ``.npz``.

Reads any zip in the official layout, ``[<top>/]<Alphabet>/characterNN/<IIII>_<DD>.png``
(``DD``, 01..20, is the drawer): ``images_background.zip``, ``images_evaluation.zip`` and the
reduced ``images_background_small1/2.zip``, one or several at once. Several zips are merged;
an image found in more than one (same alphabet, character and file name) is kept once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError
from .images import IMAGE_SIZE, decode

CACHE_ENV = "FEDMETA_CACHE"
DIR_ENV = "FEDMETA_OMNIGLOT_DIR"
ZIP_PATTERNS = ("images_background*.zip", "images_evaluation*.zip")
LAYOUT = "[<top>/]<Alphabet>/characterNN/<IIII>_<DD>.png with DD a drawer 01..20"
CACHE_VERSION = 1  # bump when the decoded arrays change, so old caches are not used
_MEMBER = re.compile(r"(?:[^/]+/)?(?P<alphabet>[^/]+)/(?P<character>character\d+)/"
                     r"(?P<file>\d+_(?P<drawer>0[1-9]|1\d|20)\.png)")


@dataclass(frozen=True)
class OmniglotData:
    """Images and their labels, one row per image, sorted by alphabet, character and file.

    ``character`` indexes ``class_names`` (``"Alphabet/characterNN"``). A subset keeps the
    class ids and names of the data it came from, so ids mean the same in every subset.
    """

    images: np.ndarray  # (n, 28, 28) float32, ink 1.0
    alphabet: np.ndarray  # (n,) str
    character: np.ndarray  # (n,) int64
    drawer: np.ndarray  # (n,) int64, 1..20
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def alphabets(self) -> list[str]:
        """The alphabets present, sorted."""
        return sorted(set(self.alphabet.tolist()))

    @property
    def num_classes(self) -> int:
        """How many characters have at least one image here."""
        return len(np.unique(self.character))

    def subset(self, index: np.ndarray) -> OmniglotData:
        """The rows at ``index`` (integer indices or a boolean mask)."""
        return OmniglotData(self.images[index], self.alphabet[index], self.character[index],
                            self.drawer[index], self.class_names)

    def by_alphabets(self, alphabets: Iterable[str]) -> OmniglotData:
        """The images of the given alphabets."""
        wanted = set(alphabets)
        unknown = sorted(wanted - set(self.alphabets))
        if unknown:
            raise ConfigError("alphabets", unknown, f"names among {self.alphabets}")
        return self.subset(np.isin(self.alphabet, sorted(wanted)))

    def by_drawers(self, drawers: Iterable[int]) -> OmniglotData:
        """The images drawn by the given drawers (1..20)."""
        wanted = set(drawers)
        present = sorted(set(self.drawer.tolist()))
        unknown = sorted(wanted - set(present))
        if unknown:
            raise ConfigError("drawers", unknown, f"drawers among {present}")
        return self.subset(np.isin(self.drawer, sorted(wanted)))


def split_by_alphabet(data: OmniglotData, test: Sequence[str] | int | float, seed: int = 0,
                      train: Sequence[str] | None = None) -> tuple[OmniglotData, OmniglotData]:
    """Meta-train and meta-test data on disjoint alphabets.

    ``test`` is a list of alphabet names, a number of alphabets or a fraction in (0, 1) of
    them (rounded, at least one), the latter two drawn with ``seed``. ``train`` defaults to
    every other alphabet; given, it must not share an alphabet with ``test``.
    """
    alphabets = data.alphabets
    if isinstance(test, (str, bool)):
        raise ConfigError("test", test, "a list of alphabet names, a count or a fraction")
    if isinstance(test, Real):
        count = int(test) if isinstance(test, Integral) else max(1, round(test * len(alphabets)))
        if not isinstance(test, Integral) and not 0 < test < 1 or not 1 <= count < len(alphabets):
            raise ConfigError("test", test, f"a count from 1 to {len(alphabets) - 1} or a "
                                            f"fraction in (0, 1) of the {len(alphabets)} "
                                            f"alphabets, leaving at least one for training")
        test = np.random.default_rng(seed).permutation(alphabets)[:count].tolist()
    test_set = set(test)
    train_set = set(alphabets) - test_set if train is None else set(train)
    if not test_set:
        raise ConfigError("test", test, "at least one alphabet")
    if not train_set or train_set & test_set:
        raise ConfigError("train", sorted(train_set), f"at least one alphabet, none of them "
                                                      f"among the test ones {sorted(test_set)}")
    return data.by_alphabets(train_set), data.by_alphabets(test_set)


def cache_dir(explicit: str | Path | None = None) -> Path:
    """Where decoded arrays and downloads go: ``explicit``, else ``$FEDMETA_CACHE/omniglot``,
    else ``~/.cache/fedmeta/omniglot``."""
    if explicit is not None:
        return Path(explicit)
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "fedmeta") / "omniglot"


def data_dir(explicit: str | Path | None = None) -> Path:
    """The folder holding the Omniglot zips: ``explicit``, else ``$FEDMETA_OMNIGLOT_DIR``,
    else the cache folder, where ``fedmeta data download`` puts them."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(DIR_ENV)
    return Path(env) if env else cache_dir()


def find_zips(folder: str | Path) -> list[Path]:
    """The official Omniglot zips in ``folder`` (``images_background*.zip``,
    ``images_evaluation*.zip``), sorted by name."""
    folder = Path(folder)
    hint = f"get them with 'fedmeta data download' or point {DIR_ENV} at them"
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder for the Omniglot zips ({hint})")
    zips = sorted({p for pattern in ZIP_PATTERNS for p in folder.glob(pattern)})
    if not zips:
        raise DataError(f"{folder}: no Omniglot zips, expected {' or '.join(ZIP_PATTERNS)} "
                        f"({hint})")
    return zips


def resolve_zips(source: str | Path | Sequence[str | Path] | None = None) -> list[Path]:
    """The zips named, or found in the folders named; nothing named: those in ``data_dir()``."""
    if source is None:
        return find_zips(data_dir())
    paths = [source] if isinstance(source, (str, Path)) else source
    zips: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            zips += find_zips(path)
        elif path.exists():
            zips.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return zips


def _digest(path: Path) -> str:
    """Size and sha256 of a file's content."""
    sha = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return f"{path.stat().st_size}:{sha.hexdigest()}"


def cache_path(zips: Sequence[Path], cache: str | Path | None = None) -> Path:
    """The ``.npz`` that holds the decoded content of ``zips``, whatever their order or name."""
    key = hashlib.sha256(f"v{CACHE_VERSION} size{IMAGE_SIZE} ".encode())
    for digest in sorted({_digest(z) for z in zips}):
        key.update(digest.encode())
    return cache_dir(cache) / f"omniglot-{key.hexdigest()[:20]}.npz"


def load_omniglot(source: str | Path | Sequence[str | Path] | None = None,
                  cache: str | Path | None = None) -> OmniglotData:
    """Omniglot from zips or folders of zips (default: ``data_dir()``), through the cache.

    The first load of a set of zips decodes every image and writes ``cache_path(zips)``;
    later loads read it back. A zip whose content changed has another cache file.
    """
    zips = resolve_zips(source)
    path = cache_path(zips, cache)
    if path.exists():
        try:
            return _read_cache(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache file: decode again and replace it
    data = _decode_zips(zips)
    _write_cache(path, data)
    return data


def _read_cache(path: Path) -> OmniglotData:
    with np.load(path, allow_pickle=False) as saved:
        return OmniglotData(saved["images"], saved["alphabet"], saved["character"],
                            saved["drawer"], saved["class_names"].tolist())


def _write_cache(path: Path, data: OmniglotData) -> None:
    """Write atomically (temp file, then rename); a cache that cannot be written only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False) as tmp:
            try:
                np.savez(tmp, images=data.images, alphabet=data.alphabet,
                         character=data.character, drawer=data.drawer,
                         class_names=np.array(data.class_names))
            except BaseException:
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, path)
    except OSError as exc:
        warnings.warn(f"{path}: cannot write the Omniglot cache ({exc.strerror or exc}); "
                      f"set {CACHE_ENV} to a writable folder to avoid decoding every time",
                      stacklevel=3)


def _members(zips: Sequence[Path]) -> dict[tuple[str, str, str], tuple[Path, str, int]]:
    """(alphabet, character, file) -> (zip, member, crc) of every image, checking layout and
    that an image in several zips is the same in each."""
    found: dict[tuple[str, str, str], tuple[Path, str, int]] = {}
    for path in zips:
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
        except zipfile.BadZipFile as exc:
            raise DataError(f"{path}: not a readable zip archive ({exc})") from exc
        except OSError as exc:
            raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        count = 0
        for info in infos:
            parts = info.filename.split("/")
            if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            match = _MEMBER.fullmatch(info.filename)
            if match is None:
                if info.filename.lower().endswith(".png"):
                    raise DataError(f"{path}/{info.filename}: image outside the Omniglot "
                                    f"layout {LAYOUT}")
                continue
            count += 1
            key = (match["alphabet"], match["character"], match["file"])
            if key in found and found[key][2] != info.CRC:
                raise DataError(f"{path}/{info.filename} differs from {found[key][0]}/"
                                f"{found[key][1]}: two zips hold different images by one name")
            found.setdefault(key, (path, info.filename, info.CRC))
        if not count:
            raise DataError(f"{path}: no Omniglot images; expected {LAYOUT}")
    return found


def _decode_zips(zips: Sequence[Path]) -> OmniglotData:
    """Decode every distinct image of ``zips`` with ``images.decode``."""
    members = _members(zips)
    keys = sorted(members)
    images = np.empty((len(keys), IMAGE_SIZE, IMAGE_SIZE), np.float32)
    with ExitStack() as stack:
        archives = {path: stack.enter_context(zipfile.ZipFile(path))
                    for path in {path for path, _, _ in members.values()}}
        for i, key in enumerate(tqdm(keys, desc="decoding Omniglot", unit="image",
                                     disable=None)):
            path, member, _ = members[key]
            try:
                raw = archives[path].read(member)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                    RuntimeError) as exc:  # corrupt data, unknown compression, encryption
                raise DataError(f"{path}/{member}: cannot be read from the zip ({exc})") \
                    from exc
            images[i] = decode(raw, f"{path}/{member}")
    class_names = sorted({f"{a}/{c}" for a, c, _ in keys})
    class_id = {name: i for i, name in enumerate(class_names)}
    return OmniglotData(
        images,
        np.array([a for a, _, _ in keys]),
        np.array([class_id[f"{a}/{c}"] for a, c, _ in keys], dtype=np.int64),
        np.array([int(f[-6:-4]) for _, _, f in keys], dtype=np.int64),
        class_names,
    )

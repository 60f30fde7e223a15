"""Downloads checked against published MD5 sums: the official Omniglot release (Lake et al.)
and CIFAR-100's python version (Krizhevsky 2009), which CIFAR-FS and FC100 are split from.
miniImageNet has no official download (its images are ImageNet's): docs/data.md."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from .omniglot import cache_dir

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
# File name -> MD5, as published with the release (torchvision checks the same sums).
RELEASE = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # as published (torchvision checks it too)
CIFAR100_FILES = ("train", "test", "meta")
CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    """The MD5 hex digest of a file."""
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            md5.update(chunk)
    return md5.hexdigest()


def fetch(url: str, path: Path, md5: str, timeout: float = 60.0) -> bool:
    """Download ``url`` to ``path`` unless a file with sum ``md5`` is there already.

    Streams to a temporary file beside ``path`` and renames it once its sum is right, so
    ``path`` is never partial. Returns whether it downloaded.
    """
    if path.is_file() and md5sum(path) == md5:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                          suffix=".part", delete=False)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the download ({exc.strerror or exc})") from exc
    try:
        with tmp, urllib.request.urlopen(url, timeout=timeout) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=size, unit="B", unit_scale=True, desc=path.name,
                      disable=None) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    tmp.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if size is not None and received != size:
                raise DataError(f"{url}: download cut off after {received} of {size} bytes")
        got = md5sum(Path(tmp.name))
        if got != md5:
            raise DataError(f"{url}: downloaded file has MD5 {got}, expected {md5}; "
                            f"deleted it")
        os.replace(tmp.name, path)
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from exc
    except urllib.error.URLError as exc:
        raise DataError(f"{url}: download failed ({exc.reason})") from exc
    except (OSError, http.client.HTTPException) as exc:  # cut or timed out mid-way, disk full
        raise DataError(f"{url}: download to {path} failed "
                        f"({getattr(exc, 'strerror', None) or exc!r})") from exc
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    return True


def download_omniglot(dest: str | Path | None = None, base_url: str = BASE_URL,
                      files: Mapping[str, str] = RELEASE, timeout: float = 60.0
                      ) -> dict[Path, bool]:
    """Fetch each of ``files`` (name -> MD5) from ``base_url`` into ``dest`` (default:
    ``omniglot.cache_dir()``); returns each path and whether it was downloaded now."""
    folder = cache_dir(dest)
    return {folder / name: fetch(f"{base_url.rstrip('/')}/{name}", folder / name, md5, timeout)
            for name, md5 in files.items()}


def download_cifar100(dest: str | Path | None = None, url: str = CIFAR100_URL,
                      md5: str = CIFAR100_MD5, timeout: float = 60.0) -> Path:
    """Fetch CIFAR-100's python archive into ``dest`` (default: ``$FEDMETA_CACHE/cifar-100``)
    and unpack it there (members outside ``dest``, links and devices refused: tarfile's
    ``data`` filter); returns ``dest``, the ``task.data_dir`` of CIFAR-FS and FC100."""
    folder = Path(dest) if dest is not None else cache_dir().parent / "cifar-100"
    archive = folder / url.rstrip("/").rpartition("/")[2]
    fetch(url, archive, md5, timeout)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive}: cannot be unpacked into {folder} ({exc})") from exc
    missing = [f for f in CIFAR100_FILES if not (folder / "cifar-100-python" / f).is_file()]
    if missing:
        raise DataError(f"{archive}: holds no cifar-100-python/{missing[0]}; not CIFAR-100's "
                        f"python archive")
    return folder
